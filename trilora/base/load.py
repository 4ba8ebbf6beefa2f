"""Load the base model: a diffusers folder, or one SD 1.x checkpoint file in the original LDM layout.

Single files carry weights only; their configuration comes from a diffusers-layout folder: the
shipped SD 1.5 configs (`trilora/base/sd15/`) unless `base_config` names another. Before diffusers
sees a file, its tensor names and shapes are checked against that configuration, so that a wrong
file is a one-line error instead of a half-loaded model. Nothing here reaches the network.
"""

import pickle
import zipfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from trilora.errors import UserError
from trilora.formats.ldm import TEXT_ENCODER_PREFIX, UNET_PREFIX, VAE_PREFIX, ldm_state_dict

SD15_DIR = Path(__file__).parent / "sd15"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
CONFIG_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer",
    "scheduler/scheduler_config.json",
)
LDM_PARTS = (("UNet", UNET_PREFIX), ("VAE", VAE_PREFIX), ("CLIP text encoder", TEXT_ENCODER_PREFIX))
# What diffusers and transformers raise for missing, unreadable or inconsistent files and configs.
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError)


def load_pipeline(
    path: str | Path, base_config: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline (no safety checker) from a diffusers folder or a single-file checkpoint.

    `base_config` is a diffusers-layout folder with the configs of a single-file checkpoint
    (default: SD 1.5); it does not apply to diffusers folders, which carry their own.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"base model {path} does not exist: give a diffusers folder or a .safetensors/.ckpt file"
        )
    if path.is_dir():
        if base_config is not None:
            raise UserError(
                f"{path} is a diffusers folder with its own configs; --base-config only applies to single-file checkpoints: drop it"
            )
        return load_diffusers_folder(path, dtype)
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise UserError(
            f"base model {path} has an unsupported extension {path.suffix!r}: give a diffusers folder or a {'/'.join(SINGLE_FILE_SUFFIXES)} file"
        )
    return load_single_file(path, Path(base_config) if base_config is not None else SD15_DIR, dtype)


def load_diffusers_folder(path: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    if not (path / "model_index.json").is_file():
        raise UserError(
            f"{path} is a folder without model_index.json: give a diffusers model folder or a single .safetensors/.ckpt file"
        )
    try:
        return StableDiffusionPipeline.from_pretrained(
            path, dtype=dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
    except LOAD_ERRORS as error:
        raise UserError(f"cannot load the diffusers folder {path}: {first_line(error)}") from error


def load_single_file(path: Path, config_dir: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    check_config_dir(path, config_dir)
    check_fits(path, read_tensor_shapes(path), expected_ldm_shapes(path, config_dir), config_dir)
    try:
        # diffusers reads .ckpt/.pt with torch.load(weights_only=True), as read_tensor_shapes does.
        return StableDiffusionPipeline.from_single_file(
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


def expected_ldm_shapes(path: Path, config_dir: Path) -> dict[str, tuple[int, ...]]:
    """LDM name -> shape of every weight the configuration in `config_dir` needs (built on the meta device)."""
    try:
        unet_config = UNet2DConditionModel.load_config(config_dir / "unet")
        vae_config = AutoencoderKL.load_config(config_dir / "vae")
        text_config = CLIPTextConfig.from_pretrained(config_dir / "text_encoder")
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config)
            vae = AutoencoderKL.from_config(vae_config)
            text_encoder = CLIPTextModel(text_config)
        state_dict = ldm_state_dict(unet, vae, text_encoder)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UserError(
            f"cannot load {path}: the base configuration {config_dir} does not describe an SD 1.x model: {first_line(error)}"
        ) from error
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}


def check_fits(
    path: Path, shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], config_dir: Path
) -> None:
    """Raise a UserError unless the file's tensors are the SD 1.x weights the configuration expects."""
    for part, prefix in LDM_PARTS:
        if not any(name.startswith(prefix) for name in shapes):
            raise UserError(
                f"{path} is not an SD 1.x checkpoint in the LDM layout: it has no {part} weights ({prefix}*)"
            )
    wrong = [
        name for name in expected if name in shapes and not same_weight_shape(shapes[name], expected[name])
    ]
    if wrong:
        name = wrong[0]
        raise UserError(
            f"{path} does not fit the configuration in {config_dir}: {name} has shape {shapes[name]}, expected "
            f"{expected[name]} ({len(wrong)} tensors differ); for a differently sized SD 1.x model pass --base-config DIR with its diffusers configs"
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
