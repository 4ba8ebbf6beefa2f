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

import logging
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import SafetensorError
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from trilora.base.detect import (
    ZTSNR_MARKER,
    Base,
    config_folder,
    detect_family,
    first_line,
    resolve_prediction,
)
from trilora.errors import UserError
from trilora.families.family import Family

log = logging.getLogger("trilora")
TEXT_ENCODER_CLASSES = {model.__name__: model for model in (CLIPTextModel, CLIPTextModelWithProjection)}
# What diffusers and transformers raise for missing, unreadable or inconsistent files and configs.
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError)


def load_pipeline(path: str | Path, *args, **options) -> StableDiffusionPipeline:
    """The pipeline (no safety checker) of `load_base` (same arguments)."""
    return load_base(path, *args, **options).pipe


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
    config_dir = config_folder(path, base_config, found)
    # before any weights are read: an SD 2.x file without --prediction-type stops in a second
    prediction_type, source = resolve_prediction(path, config_dir, found, base_config, prediction_type, where)
    zero_terminal_snr = zero_terminal_snr or where.get(ZTSNR_MARKER, False)
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise UserError("--zero-terminal-snr needs v prediction (ε at the last step is undefined): add "
                        "--prediction-type v_prediction or drop --zero-terminal-snr")  # fmt: skip
    if path.is_dir():
        pipe = load_diffusers_folder(path, found, dtype)
    else:
        pipe = load_single_file(path, config_dir, found, where.get("dtype") or dtype, where["shapes"])
        pipe.to(dtype=dtype)  # exact: from a file's own half precision, or nothing to do
    if prediction_type != pipe.scheduler.config.prediction_type or zero_terminal_snr:
        pipe.scheduler = scheduler_for(pipe.scheduler, prediction_type, zero_terminal_snr)
    log.info("base model: %s, predicting %s (%s)%s", found, prediction_type, source,
             ", zero terminal SNR" if zero_terminal_snr else "")  # fmt: skip
    return Base(pipe, found, prediction_type)


def scheduler_for(scheduler, prediction_type: str, zero_terminal_snr: bool):
    """The pipeline's scheduler predicting `prediction_type`; with zero terminal SNR, DDIM with trailing
    timesteps on the rescaled schedule (the sampler the paper pairs it with)."""
    if zero_terminal_snr:
        return diffusers.DDIMScheduler.from_config(scheduler.config, prediction_type=prediction_type,
                                                   rescale_betas_zero_snr=True, timestep_spacing="trailing")  # fmt: skip
    return type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)


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
    check_config_dir(path, config_dir, family)
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


def config_files(family: Family) -> list[str]:
    """What a diffusers-layout folder of configs for a `family` single file must hold."""
    texts = family.text_encoders
    return ["model_index.json", "unet/config.json", "vae/config.json", *(f"{t}/config.json" for t in texts),
            *(t.replace("text_encoder", "tokenizer") for t in texts), "scheduler/scheduler_config.json"]  # fmt: skip


def check_config_dir(path: Path, config_dir: Path, family: Family) -> None:
    layout = "a diffusers-layout folder with " + ", ".join(config_files(family))
    if not config_dir.is_dir():
        raise UserError(
            f"cannot load {path}: the base configuration {config_dir} is not a folder; give {layout}"
        )
    missing = [name for name in config_files(family) if not (config_dir / name).exists()]
    if missing:
        raise UserError(
            f"cannot load {path}: the base configuration {config_dir} lacks {', '.join(missing)}; give {layout}"
        )


def expected_ldm_shapes(path: Path, config_dir: Path, family: Family) -> dict[str, tuple[int, ...]]:
    """LDM name -> shape of every weight the configuration in `config_dir` needs (built on the meta device)."""
    try:
        models = models_on_meta(config_dir, family)
        state_dict = family.ldm_state_dict(*models.values())
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UserError(
            f"cannot load {path}: the base configuration {config_dir} does not describe {family.title} model: {first_line(error)}"
        ) from error
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}


def models_on_meta(config_dir: Path, family: Family, device: str = "meta") -> dict[str, torch.nn.Module]:
    """{"unet", "vae", then each text encoder: the model} built from the configs in `config_dir` on
    the meta device (no memory, no weights; or `device`, randomly initialised);
    OSError/ValueError/TypeError/KeyError for bad configs."""
    unet_config = UNet2DConditionModel.load_config(config_dir / "unet")
    vae_config = AutoencoderKL.load_config(config_dir / "vae")
    text_configs = {part: CLIPTextConfig.from_pretrained(config_dir / part) for part in family.text_encoders}
    with torch.device(device):
        models = {
            "unet": UNet2DConditionModel.from_config(unet_config),
            "vae": AutoencoderKL.from_config(vae_config),
        }
        for part, config in text_configs.items():
            architecture = (config.architectures or ["CLIPTextModel"])[0]
            models[part] = TEXT_ENCODER_CLASSES.get(architecture, CLIPTextModel)(config)
    return models


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
