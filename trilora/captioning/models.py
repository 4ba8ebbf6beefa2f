"""Which captioner a `--model` path is, told from its files; nothing is ever downloaded."""

import json
from pathlib import Path

from trilora.captioning.tagger import Tagger
from trilora.config import CaptionConfig
from trilora.errors import UserError

WHERE = (
    "give a folder downloaded by hand: BLIP (e.g. `hf download Salesforce/blip-image-captioning-large "
    "--local-dir blip-large`) or a WD14 tagger (e.g. `hf download SmilingWolf/wd-vit-tagger-v3 "
    "--local-dir wd-vit-tagger-v3`: model.onnx + selected_tags.csv), or `--model toy`"
)
BLIP_ARCHITECTURES = ("BlipForConditionalGeneration",)


def model_kind(model: str) -> str:
    """ "toy", "blip" or "tagger"; a path that is none of them is a one-line error saying what is expected."""
    if model == "toy":
        return "toy"
    path = Path(model)
    if not path.is_dir():
        raise UserError(f"captioning model not found: {model}; {WHERE}")
    if (path / "model.onnx").is_file() or (path / "selected_tags.csv").is_file():
        for name in ("model.onnx", "selected_tags.csv"):
            if not (path / name).is_file():
                raise UserError(f"{path} looks like a WD14 tagger but has no {name}; a tagger folder holds "
                                "model.onnx and selected_tags.csv")  # fmt: skip
        return "tagger"
    config = path / "config.json"
    if (path / "model_index.json").is_file():
        raise UserError(f"{path} is a diffusers pipeline (a base model), not a captioning model; {WHERE}")
    if not config.is_file():
        raise UserError(f"{path} is not a captioning model folder (no config.json or model.onnx); {WHERE}")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        architectures = data.get("architectures") or [data.get("_class_name") or "no known architecture"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise UserError(f"{config} is not a readable transformers config") from None
    if not any(a in BLIP_ARCHITECTURES for a in architectures):
        found = ", ".join(map(str, architectures))
        raise UserError(f"{path} holds {found}, not a captioning model trilora runs "
                        f"({', '.join(BLIP_ARCHITECTURES)} or a WD14 tagger); {WHERE}")  # fmt: skip
    return "blip"


def load_captioner(settings: CaptionConfig, device):
    """The captioner of settings.model, loaded on `device`."""
    kind = model_kind(settings.model)
    if kind == "toy":
        # here, not at the top: torch (~1.5 s), which importing this module does not need
        from trilora.captioning.toy import ToyCaptioner

        return ToyCaptioner()
    if kind == "tagger":
        return Tagger(Path(settings.model), settings, device)
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.captioning.blip import BlipCaptioner

    return BlipCaptioner(Path(settings.model), settings, device)
