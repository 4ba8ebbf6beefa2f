"""What a base model is (`Base`: a loaded one), read without loading it: its family, the prediction type and where that
comes from, the markers a single file carries. Cheap (a folder's JSON configs, a safetensors header),
so a run checks it before anything slow; `load.py` then loads what it found."""

import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from trilora.errors import UserError
from trilora.families.family import Family
from trilora.families.registry import FAMILIES, family_of_file, family_of_folder, named

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
CONFIGS_VARIABLE = "TRILORA_CONFIGS"  # a folder of per-family configs used instead of the shipped ones
V_MARKER, ZTSNR_MARKER = "v_pred", "ztsnr"  # empty tensors some v-prediction checkpoints carry


@dataclass
class Base:
    """A loaded base model: its pipeline, family and prediction type."""

    pipe: object  # the diffusers pipeline
    family: Family
    prediction_type: str


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
    found = {marker: marker in shapes for marker in (V_MARKER, ZTSNR_MARKER)}
    found |= {"shapes": shapes, "dtype": half_dtype(path)}
    if family == "auto":
        return family_of_file(shapes, str(path)), found
    chosen, actual = named(family), [f for f in FAMILIES.values() if f.is_file(shapes)]
    if actual and actual[0] is not chosen:
        refuse_named_family(path, chosen, actual[0])
    return chosen, found


HALF_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16}


def half_dtype(path: Path) -> torch.dtype | None:
    """fp16 or bf16 when every floating-point tensor of a .safetensors file is of that one dtype (as
    released checkpoints are), else None: such a file loads at its own precision and is then cast,
    which is exact and needs half the memory of converting it to fp32 on the way."""
    if path.suffix != ".safetensors":
        return None
    with safe_open(path, framework="pt") as file:
        dtypes = {file.get_slice(name).get_dtype() for name in file.keys()}
    floating = {dtype for dtype in dtypes if dtype.startswith(("F", "BF"))}
    return HALF_DTYPES.get(floating.pop()) if len(floating) == 1 else None


def stored_dtype(path: Path) -> torch.dtype:
    """The precision a model is stored in: fp16 or bf16 where every floating-point weight of its single
    file (or its diffusers folder's UNet file) is of that one dtype, else fp32."""
    file = path / "unet" / "diffusion_pytorch_model.safetensors" if path.is_dir() else path
    return (half_dtype(file) if file.is_file() else None) or torch.float32


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


def config_folder(path: Path, base_config, family: Family) -> Path:
    """The diffusers-layout configs the base model at `path` loads with: a folder's own, --base-config,
    else the family's shipped ones, or $TRILORA_CONFIGS/<family name> where that folder exists (a
    build's own configs; the tests point it at tiny models, as a person's A1111 file uses the shipped)."""
    if path.is_dir():
        return path
    if base_config:
        return Path(base_config)
    return shipped_configs(family)


def shipped_configs(family: Family) -> Path:
    """The family's shipped configs, or $TRILORA_CONFIGS/<family name> where that folder exists."""
    own = os.environ.get(CONFIGS_VARIABLE)
    if own and (Path(own) / family.name).is_dir():
        return Path(own) / family.name
    return family.configs


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def default_resolution(model) -> int:
    """The training resolution of a `ModelConfig`'s base model when --resolution is not given: its
    family's for its prediction type (SD 2.x v models 768, else 512)."""
    path = Path(model.base)
    family, found = detect_family(path, model.base_config, model.family)
    config_dir = config_folder(path, model.base_config, family)
    prediction, _ = resolve_prediction(
        path, config_dir, family, model.base_config, model.prediction_type, found
    )
    return family.default_resolution(prediction)
