"""Images from a base model and adapters, through diffusers' own pipeline and LoRA loader.

What we generate is what users of other diffusers-based tools get from the same files.
"""

import logging
import math
import tempfile
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import safe_open

from trilora.base.detect import detect_family
from trilora.config import SCHEDULERS, SETTINGS_FILE, SamplingConfig, settings_toml
from trilora.data.folder import NOT_CAPTIONS
from trilora.device import resolve_device
from trilora.errors import UserError
from trilora.families.registry import adapter_family
from trilora.files import check_regular_file, save_image, write_text
from trilora.formats.diffusers_lora import WEIGHT_NAME, save_diffusers
from trilora.formats.inspect import adapter_metadata, adapter_shapes
from trilora.formats.keys import module_of
from trilora.formats.native import is_native, native_pairs
from trilora.inference.grid import MAX_CELLS, cell_name, columns, is_grid, sheet
from trilora.outputs import refuse_foreign_files
from trilora.run_folder import check_folder_path, prepare_folder
from trilora.sampling import sample_images

log = logging.getLogger("trilora")
MAX_STRENGTH = 10.0  # A1111's and ComfyUI's sliders stop well before; beyond it images only burn
MAX_ALPHA = 1e6  # the config's bound on --alpha
MAX_ADAPTER_BYTES = 16 << 30
GENERATE_BATCH = 8  # images per denoising batch: image k still starts from seed + k
GRID_FILE = "grid.png"


def scheduler_from(name: str, config):
    # here, not at the top: diffusers (~3 s), which importing this module does not need
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def parse_lora(spec: str) -> tuple[Path, float]:
    """`FILE` or `FILE:STRENGTH` (strength defaults to 1)."""
    path, strength = spec, 1.0
    head, separator, tail = spec.rpartition(":")
    if separator and head and not Path(spec).exists():
        try:
            path, strength = head, float(tail)
        except ValueError:
            pass  # the ':' belongs to the path
    if not math.isfinite(strength) or abs(strength) > MAX_STRENGTH:
        raise UserError(f"--lora {spec}: the strength must be a number in -{MAX_STRENGTH:g}..{MAX_STRENGTH:g}, "
                        f"got {tail}")  # fmt: skip
    if not Path(path).exists():
        raise UserError(f"adapter file not found: {path}")
    if Path(path).is_file():
        check_regular_file(path, "adapter file", MAX_ADAPTER_BYTES)
    return Path(path), strength


def check_adapter_values(source: Path, path: Path) -> None:
    """Refuse an adapter whose weights or alphas are not finite, or whose alphas are absurd: it
    would make black images without a word."""

    file = source / "pytorch_lora_weights.safetensors" if source.is_dir() else source
    check_regular_file(file, "adapter file")
    try:
        with safe_open(str(file), "pt") as f:
            keys = list(f.keys())
            if not keys:
                raise UserError(f"cannot load adapter {path}: the file holds no tensors")
            for key in keys:
                tensor = f.get_tensor(key)
                if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
                    raise UserError(f"cannot load adapter {path}: {key} holds non-finite values (NaN or "
                                    "inf), as a diverged training writes them: use an earlier checkpoint")  # fmt: skip
                if key.endswith(".alpha") and tensor.abs().max() > MAX_ALPHA:
                    raise UserError(f"cannot load adapter {path}: {key} is {tensor.max().item():g}, beyond any "
                                    f"usable alpha (at most {MAX_ALPHA:g}); the file is damaged")  # fmt: skip
    except (OSError, SafetensorError) as error:
        raise UserError(f"cannot read adapter {path} as a safetensors file: {error}") from None


def check_adapter_family(path: Path, family) -> None:
    """Refuse, in one line naming both, an adapter whose header says it was trained for another family
    than the base model's (`family`, a `Family`); an adapter that does not say is checked by shape."""

    made_for = adapter_family(metadata := adapter_metadata(path))
    if made_for is not None and made_for is not family:
        raise UserError(f"adapter {path} was trained for {made_for} (ss_base_model_version "
                        f"{metadata['ss_base_model_version']}) but the base model is {family}: use a "
                        f"{made_for.title} base model, or an adapter trained for {family.title}")  # fmt: skip


def check_fits(pipe, path: Path, shown: Path | None = None) -> None:
    """Refuse, naming the module and both shapes, an adapter made for another base model."""

    shapes, metadata = adapter_shapes(path, pipe.unet.config)
    path = shown or path
    if not shapes:
        raise UserError(f"cannot load adapter {path}: it holds no LoRA pairs (lora_down/lora_up or "
                        "lora_A/lora_B) that this base model has")  # fmt: skip
    made_for = metadata.get("ss_sd_model_name") or metadata.get("ss_base_model_version")
    made_for = f"; its metadata says it was made for {made_for}" if made_for else ""
    for key, (down, up) in shapes.items():
        module = module_of(pipe, key)
        if module is None:
            raise UserError(f"cannot load adapter {path}: it adapts {key}, which this base model does not have"
                            f"{made_for}; use the base model it was trained for")  # fmt: skip
        if len(down) < 2 or len(up) < 2 or down[0] != up[1]:
            raise UserError(f"cannot load adapter {path}: {key}'s down {down} and up {up} do not pair (their "
                            "ranks differ); the file is damaged")  # fmt: skip
        weight = module.weight.shape  # (out, in[, kh, kw])
        if down[1] != weight[1] or up[0] != weight[0]:
            raise UserError(f"cannot load adapter {path}: {key} is {weight[1]} -> {weight[0]} in this base model "
                            f"but {down[1]} -> {up[0]} in the file{made_for}; use the base model it was "
                            "trained for")  # fmt: skip


def load_adapters(pipe, loras: list[tuple[Path, float]]) -> list[str]:
    """Load each adapter with diffusers' loader and set its strength; their names in the pipeline. Our
    own adapter files (a run's best/ and last/) are loaded as the export would write them, through a
    temporary folder."""

    names = []
    for i, (path, _) in enumerate(loras):
        name = f"adapter{i}"
        with tempfile.TemporaryDirectory(prefix="trilora-adapter-") as temporary:
            source = path
            if path.is_file() and is_native(path):
                pairs, alphas = native_pairs(path)
                source = save_diffusers(temporary, pairs, None, alphas, torch.float32) / WEIGHT_NAME
            check_adapter_values(source, path)
            check_fits(pipe, source, path)
            folder, weight_name = (source, None) if source.is_dir() else (source.parent, source.name)
            try:
                pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=name)
            except (ValueError, KeyError, OSError, RuntimeError) as error:
                raise UserError(
                    f"cannot load adapter {path} into this base model: {str(error).splitlines()[0]}"
                ) from None
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[strength for _, strength in loras])
    return names


def generate(pipe, prompt: str, negative_prompt: str | None, sampling: SamplingConfig):
    """PIL images; image k starts from the latent of seed + k, as in `trilora evaluate`, so any of
    its images is made again here with the same prompt, seed + k and --num-images 1."""
    count = sampling.num_images
    return sample_images(pipe, [prompt] * count, [sampling.seed + k for k in range(count)], sampling.steps,
                         sampling.guidance, sampling.height, sampling.width, negative_prompt,
                         batch_size=GENERATE_BATCH, progress=True)  # fmt: skip


def written_by_generate(path: Path) -> bool:
    """A PNG that holds generate's settings chunk, or the settings.toml generate writes beside them."""
    if path.suffix.lower() == ".png":
        try:
            with Image.open(path) as image:
                return "trilora" in getattr(image, "text", {})
        except (OSError, ValueError, Image.DecompressionBombError):
            return False
    try:
        with open(path, encoding="utf-8") as file:
            return "`trilora generate`" in file.readline()
    except (OSError, UnicodeDecodeError):
        return False


def is_black(image) -> bool:
    """Every pixel 0: what NaN latents decode to (numpy casts NaN to 0), never a real sample."""
    return all(high == 0 for _, high in image.getextrema())


def generate_command(tree) -> list[Path]:
    """`trilora generate`: the images of each `--prompt` in each column of the grid (`--strengths`,
    `--adapters`), from one model load, saved as `--output` says, each PNG holding the settings that
    made it (text chunk "trilora", TOML); a folder also holds settings.toml, and a grid grid.png."""

    model, sampling, settings = tree.model, tree.sampling, tree.generate
    sampling.validate()
    settings.validate()
    loras = [parse_lora(spec) for spec in settings.lora]
    grid = columns([path.stem for path, _ in loras], [s for _, s in loras], settings.strengths,
                   settings.adapters == "apart")  # fmt: skip
    prompts = settings.prompt
    if too_strong := [c.label for c in grid if any(abs(w) > MAX_STRENGTH for w in c.weights)]:
        raise UserError(f"--strengths: the column(s) {', '.join(too_strong)} set an adapter beyond "
                        f"-{MAX_STRENGTH:g}..{MAX_STRENGTH:g}: choose smaller multipliers")  # fmt: skip
    if len(prompts) * len(grid) * sampling.num_images > MAX_CELLS:
        raise UserError(f"{len(prompts)} prompts x {len(grid)} columns x {sampling.num_images} images is more than "
                        f"{MAX_CELLS} images: generate fewer at a time")  # fmt: skip
    if not Path(model.base).exists():
        raise UserError(
            f"base model not found: {model.base}" if model.base else "no base model: pass --base PATH"
        )
    output = Path(settings.output)
    single = output.suffix.lower() == ".png"
    if output.suffix.lower() in NOT_CAPTIONS and not single:
        raise UserError(f"--output {output}: generate writes PNG images; give a .png file or a folder")
    if single and (sampling.num_images > 1 or is_grid(prompts, grid)):
        made = f"{len(prompts) * len(grid) * sampling.num_images} images"
        raise UserError(f"these settings make {made}: give a folder as --output, not the file {output}")
    check_folder_path(output.parent if single else output, "--output")
    names = output_names(prompts, grid, sampling.num_images)
    targets = [output] if single else [output / name for name in names]
    refuse_foreign_files(
        targets + ([] if single else [output / SETTINGS_FILE, output / GRID_FILE]),
        written_by_generate,
        "--output",
    )
    device = resolve_device(settings.device)

    # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
    from trilora.base.load import load_model

    family, _ = detect_family(Path(model.base), model.base_config, model.family)
    for path, _ in loras:
        check_adapter_family(path, family)
    pipe = load_model(model, dtype=torch.float16 if device.type == "cuda" else torch.float32).pipe
    if sampling.scheduler:
        pipe.scheduler = scheduler_from(sampling.scheduler, pipe.scheduler.config)
    adapter_names = load_adapters(pipe, loras)
    pipe.to(device)
    cells = [[[] for _ in grid] for _ in prompts]
    for c, column in enumerate(grid):
        if adapter_names:
            pipe.set_adapters(adapter_names, adapter_weights=list(column.weights))
        for r, prompt in enumerate(prompts):
            cells[r][c] = generate(pipe, prompt, settings.negative_prompt, sampling)
    images = [image for row in cells for cell in row for image in cell]
    black = [name for name, image in zip(names, images, strict=True) if is_black(image)]
    if black:
        raise UserError(f"image(s) {', '.join(black)} came out black (NaN or overflow while "
                        "denoising: an adapter strength or weights too large, or an fp16 VAE): nothing was "
                        "saved; lower the strengths or check the adapter")  # fmt: skip
    settings_text = settings_toml(tree, "generate")
    if single:
        save_image(images[0], output, text={"trilora": settings_text})
        return [output]
    prepare_folder(output)
    paths = [output / name for name in names]
    for image, path in zip(images, paths, strict=True):
        save_image(image, path, text={"trilora": settings_text})
    write_text(output / SETTINGS_FILE, settings_text)
    if is_grid(prompts, grid):
        save_image(sheet(cells, prompts, grid), output / GRID_FILE, text={"trilora": settings_text})
        paths.append(output / GRID_FILE)
    return paths


def output_names(prompts: list[str], grid: list, count: int) -> list[str]:
    """The images' file names, in the order generate makes them (row by row, column by column)."""
    if not is_grid(prompts, grid):
        return [f"{k:02d}.png" for k in range(count)]
    return [cell_name(r, c, k) for r in range(len(prompts)) for c in range(len(grid)) for k in range(count)]
