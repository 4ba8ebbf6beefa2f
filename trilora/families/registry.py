"""Every family by name, and how a base model or an adapter file is matched to one."""

from trilora.errors import UserError
from trilora.families import FAMILY_CHOICES, sd1, sd2, sdxl
from trilora.families.family import Family

FAMILIES: dict[str, Family] = {family.name: family for family in (sd1.FAMILY, sd2.FAMILY, sdxl.FAMILY)}


def named(name: str) -> Family:
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r}: choose one of {', '.join(FAMILY_CHOICES)}")
    return FAMILIES[name]


def family_of_folder(model_index: dict, text_config: dict, where: str) -> Family:
    """The family of a diffusers folder, from its model_index.json and text_encoder/config.json."""
    found = [family for family in FAMILIES.values() if family.is_folder(model_index, text_config)]
    if len(found) != 1:
        pipeline = model_index.get("_class_name", "nothing")
        encoder = text_config.get("hidden_act", "no text_encoder/config.json")
        raise UserError(f"{where} fits no model family trilora trains (model_index.json names {pipeline}; text encoder: "
                        f"{encoder}); trilora trains {', '.join(map(str, FAMILIES.values()))} diffusers folders")  # fmt: skip
    return found[0]


def family_of_file(shapes: dict[str, tuple], where: str) -> Family:
    """The family of a single-file checkpoint, from its tensor names."""
    found = [family for family in FAMILIES.values() if family.is_file(shapes)]
    if shapes and all("lora_" in name or name.endswith(".alpha") for name in shapes):
        raise UserError(f"{where} is a LoRA adapter, not a base model: give a Stable Diffusion checkpoint as --base "
                        "and the adapter as --lora (generate, evaluate)")  # fmt: skip
    if len(found) != 1:
        prefixes = sorted({name.split(".")[0] for name in shapes})[:4]
        expected = "; ".join(f"{family.name}: {family.file_parts[-1][1]}*" for family in FAMILIES.values())
        raise UserError(f"{where} holds no text encoder of a model family trilora trains (its tensors start with "
                        f"{', '.join(prefixes) or 'nothing'}; expected {expected}): is it a Stable Diffusion checkpoint?")  # fmt: skip
    return found[0]


def adapter_family(metadata: dict[str, str]) -> Family | None:
    """The family an adapter file was trained for, by its kohya `ss_base_model_version`; None if unsaid."""
    version = metadata.get("ss_base_model_version", "")
    return next((family for family in FAMILIES.values() if version in family.base_versions), None)
