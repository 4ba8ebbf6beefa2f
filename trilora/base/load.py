"""Load the base model: a diffusers folder, or one checkpoint file in the original LDM layout, of any
family in trilora/families/.

The family is detected (a folder's model_index.json and text-encoder config, a file's tensor names)
or named (`--family`); a named family that does not fit is a one-line error naming both. Single files
carry weights only; their configuration comes from a diffusers-layout folder: the family's shipped
configs unless `base_config` names another. Before diffusers sees a file, its tensor names and shapes
are checked against that configuration, so that a wrong file is a one-line error instead of a
half-loaded model. The prediction type (ε or v) comes from --prediction-type, the configs, or a
`v_pred` marker tensor (as ComfyUI reads it), and the log says which. Nothing here reaches the network.
"""

import json
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from trilora.errors import UserError
from trilora.families.family import Family
from trilora.families.registry import FAMILIES, family_of_file, family_of_folder, named

log = logging.getLogger("trilora")
V_MARKER, ZTSNR_MARKER = "v_pred", "ztsnr"  # empty tensors some v-prediction checkpoints carry
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
CONFIG_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer",
    "scheduler/scheduler_config.json",
)
# What diffusers and transformers raise for missing, unreadable or inconsistent files and configs.
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError)


@dataclass
class Base:
    """A loaded base model: its pipeline, family and prediction type."""

    pipe: StableDiffusionPipeline
    family: Family
    prediction_type: str


def load_pipeline(
    path: str | Path,
    base_config: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    family: str = "auto",
    prediction_type: str | None = None,
    zero_terminal_snr: bool = False,
) -> StableDiffusionPipeline:
    """The pipeline (no safety checker) of `load_base`."""
    return load_base(path, base_config, dtype, family, prediction_type, zero_terminal_snr).pipe


def load_model(model, dtype: torch.dtype = torch.float32) -> Base:
    """`load_base` of a `ModelConfig` (--base, --base-config, --family, --prediction-type, --zero-terminal-snr)."""
    return load_base(model.base, model.base_config, dtype, model.family, model.prediction_type,
                     model.zero_terminal_snr)  # fmt: skip


def load_base(
    path: str | Path,
    base_config: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    family: str = "auto",
    prediction_type: str | None = None,
    zero_terminal_snr: bool = False,
) -> Base:
    """A base model from a diffusers folder or a single-file checkpoint.

    `base_config` is a diffusers-layout folder with the configs of a single-file checkpoint
    (default: the family's shipped ones); it does not apply to diffusers folders, which carry their own.
    `family`: "auto" (detected) or a family's name. `prediction_type`: None (from the configs or a
    marker) or "epsilon"/"v_prediction". `zero_terminal_snr`: rescale the noise schedule so that its
    last step is pure noise (Lin et al. 2024), as v-prediction models trained so need.
    """
    path = Path(path)
    found, where = detect_family(path, base_config, family)
    config_dir = path if path.is_dir() else Path(base_config) if base_config else found.configs
    # before any weights are read: an SD 2.x file without --prediction-type stops in a second
    prediction_type, source = resolve_prediction(path, config_dir, found, base_config, prediction_type, where)
    zero_terminal_snr = zero_terminal_snr or where.get(ZTSNR_MARKER, False)
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise UserError("--zero-terminal-snr needs v prediction (ε at the last step is undefined): add "
                        "--prediction-type v_prediction or drop --zero-terminal-snr")  # fmt: skip
    if path.is_dir():
        pipe = load_diffusers_folder(path, found, dtype)
    else:
        pipe = load_single_file(path, config_dir, found, dtype, where["shapes"])
    if prediction_type != pipe.scheduler.config.prediction_type or zero_terminal_snr:
        pipe.scheduler = scheduler_for(pipe.scheduler, prediction_type, zero_terminal_snr)
    log.info("base model: %s, predicting %s (%s)%s", found, prediction_type, source,
             ", zero terminal SNR" if zero_terminal_snr else "")  # fmt: skip
    return Base(pipe, found, prediction_type)


def detect_family(path: Path, base_config, family: str = "auto") -> tuple[Family, dict]:
    """(the family of the base model at `path`, what else was found: the file's markers), without
    loading it. A named family must be the one found."""
    check_base_path(path, base_config)
    if path.is_dir():
        index, text = read_json(path / "model_index.json"), read_json(path / "text_encoder" / "config.json")
        if family != "auto":
            chosen, actual = named(family), [f for f in FAMILIES.values() if f.is_folder(index, text)]
            if not chosen.is_folder(index, text):
                refuse_named_family(path, chosen, actual[0] if actual else None)
            return chosen, {}
        return family_of_folder(index, text, str(path)), {}
    shapes = read_tensor_shapes(path)
    markers = {marker: marker in shapes for marker in (V_MARKER, ZTSNR_MARKER)}
    if family == "auto":
        return family_of_file(shapes, str(path)), markers | {"shapes": shapes}
    chosen, actual = named(family), [f for f in FAMILIES.values() if f.is_file(shapes)]
    if actual and actual[0] is not chosen:
        refuse_named_family(path, chosen, actual[0])
    return chosen, markers | {"shapes": shapes}


def refuse_named_family(path: Path, chosen: Family, actual: Family | None) -> None:
    what = f"is {actual} (its text encoder says so)" if actual else "is no model family trilora trains"
    raise UserError(f"--family {chosen.name}: {path} {what}, not {chosen}; drop --family, or give a "
                    f"{chosen.title} model")  # fmt: skip


def resolve_prediction(
    path: Path, config_dir: Path, family: Family, base_config, asked: str | None, where: dict
):
    """(prediction type, where it came from): asked, a marker tensor, or the configs where they know."""
    if asked:
        return asked, "--prediction-type"
    if where.get(V_MARKER):
        return "v_prediction", f"the file's {V_MARKER} marker"
    scheduler = read_json(config_dir / "scheduler" / "scheduler_config.json")
    configured = scheduler.get("prediction_type", "epsilon")
    if path.is_dir() or base_config:
        return configured, "the scheduler config"
    if family.prediction_known:
        return configured, f"{family.name}'s shipped config"
    raise UserError(f"{path} is {family}, which comes as ε-prediction (512 px base models) or v-prediction (768 px "
                    "models) with the same tensors: say which with --prediction-type epsilon or --prediction-type "
                    "v_prediction")  # fmt: skip


def scheduler_for(scheduler, prediction_type: str, zero_terminal_snr: bool):
    """The pipeline's scheduler predicting `prediction_type`; with zero terminal SNR, DDIM with trailing
    timesteps on the rescaled schedule (the sampler the paper pairs it with)."""
    if zero_terminal_snr:
        return diffusers.DDIMScheduler.from_config(scheduler.config, prediction_type=prediction_type,
                                                   rescale_betas_zero_snr=True, timestep_spacing="trailing")  # fmt: skip
    return type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {first_line(error)}") from error
    return value if isinstance(value, dict) else {}


def check_base_path(path: Path, base_config) -> None:
    if not path.exists():
        raise UserError(
            f"base model {path} does not exist: give a diffusers folder or a .safetensors/.ckpt file"
        )
    if path.is_dir():
        if base_config is not None:
            raise UserError(
                f"{path} is a diffusers folder with its own configs; --base-config only applies to single-file checkpoints: drop it"
            )
        if not (path / "model_index.json").is_file():
            raise UserError(f"{path} is a folder without model_index.json: give a diffusers model folder or a "
                            "single .safetensors/.ckpt file")  # fmt: skip
        return
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise UserError(
            f"base model {path} has an unsupported extension {path.suffix!r}: give a diffusers folder or a {'/'.join(SINGLE_FILE_SUFFIXES)} file"
        )


def load_diffusers_folder(path: Path, family: Family, dtype: torch.dtype) -> StableDiffusionPipeline:
    try:
        return family.pipeline_class().from_pretrained(
            path, dtype=dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
    except LOAD_ERRORS as error:
        raise UserError(f"cannot load the diffusers folder {path}: {first_line(error)}") from error


def load_single_file(
    path: Path, config_dir: Path, family: Family, dtype: torch.dtype, shapes: dict[str, tuple[int, ...]]
) -> StableDiffusionPipeline:
    check_config_dir(path, config_dir)
    check_fits(path, shapes, expected_ldm_shapes(path, config_dir, family), config_dir, family)
    try:
        # diffusers reads .ckpt/.pt with torch.load(weights_only=True), as read_tensor_shapes does.
        return family.pipeline_class().from_single_file(
            str(path),
            config=str(config_dir),
            local_files_only=True,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except LOAD_ERRORS as error:
        raise UserError(
            f"cannot load {path} with the configuration in {config_dir}: {first_line(error)}"
        ) from error


def check_config_dir(path: Path, config_dir: Path) -> None:
    layout = "a diffusers-layout folder with " + ", ".join(CONFIG_FILES)
    if not config_dir.is_dir():
        raise UserError(
            f"cannot load {path}: the base configuration {config_dir} is not a folder; give {layout}"
        )
    missing = [name for name in CONFIG_FILES if not (config_dir / name).exists()]
    if missing:
        raise UserError(
            f"cannot load {path}: the base configuration {config_dir} lacks {', '.join(missing)}; give {layout}"
        )


def read_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a checkpoint file, without loading .safetensors data."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as file:
                return {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}
        # Never a full unpickle: weights_only refuses anything but tensors and plain containers.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        raise UserError(
            f"cannot read {path}: it is corrupt or holds pickled Python objects besides tensors, which trilora does not unpickle; use a .safetensors file"
        ) from error
    except EOFError as error:
        raise UserError(f"cannot read {path}: the file ends early; is it complete?") from error
    except (OSError, RuntimeError, SafetensorError) as error:
        raise UserError(f"cannot read {path}: {first_line(error)}; is the file complete?") from error
    # Lightning checkpoints nest the weights under "state_dict".
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise UserError(f"cannot read {path}: it holds a {type(checkpoint).__name__}, not a dict of tensors")
    return {
        name: tuple(tensor.shape) for name, tensor in checkpoint.items() if isinstance(tensor, torch.Tensor)
    }


def expected_ldm_shapes(path: Path, config_dir: Path, family: Family) -> dict[str, tuple[int, ...]]:
    """LDM name -> shape of every weight the configuration in `config_dir` needs (built on the meta device)."""
    try:
        unet_config = UNet2DConditionModel.load_config(config_dir / "unet")
        vae_config = AutoencoderKL.load_config(config_dir / "vae")
        text_config = CLIPTextConfig.from_pretrained(config_dir / "text_encoder")
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config)
            vae = AutoencoderKL.from_config(vae_config)
            text_encoder = CLIPTextModel(text_config)
        state_dict = family.ldm_state_dict(unet, vae, text_encoder)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UserError(
            f"cannot load {path}: the base configuration {config_dir} does not describe {family.title} model: {first_line(error)}"
        ) from error
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}


def check_fits(
    path: Path,
    shapes: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    config_dir: Path,
    family: Family,
) -> None:
    """Raise a UserError unless the file's tensors are the weights of the family the configuration expects."""
    for part, prefix in family.file_parts:
        if not any(name.startswith(prefix) for name in shapes):
            raise UserError(
                f"{path} is not a {family.title} checkpoint in the LDM layout: it has no {part} weights ({prefix}*)"
            )
    wrong = [
        name for name in expected if name in shapes and not same_weight_shape(shapes[name], expected[name])
    ]
    if wrong:
        name = wrong[0]
        raise UserError(
            f"{path} does not fit the configuration in {config_dir}: {name} has shape {shapes[name]}, expected "
            f"{expected[name]} ({len(wrong)} tensors differ); for a differently sized {family.title} model pass --base-config DIR with its diffusers configs"
        )
    missing = [name for name in expected if name not in shapes]
    if missing:
        raise UserError(
            f"{path} lacks {len(missing)} of the {len(expected)} weights the configuration in {config_dir} needs, "
            f"e.g. {missing[0]}; give a complete checkpoint, or pass --base-config DIR with its diffusers configs"
        )


def same_weight_shape(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Equal up to trailing 1s: a 1x1 conv (out, in, 1, 1) holds the same weights as a Linear (out, in)."""
    while a and a[-1] == 1:
        a = a[:-1]
    while b and b[-1] == 1:
        b = b[:-1]
    return a == b


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
