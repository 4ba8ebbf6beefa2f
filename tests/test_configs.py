"""The example configs in configs/ load, hold only known keys, and describe a run that validates."""

from pathlib import Path

import pytest

from trilora.config import from_dict, load_toml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_there_is_an_example_per_family_and_goal():
    """Style and subject (prior preservation) for SD 1.5, SD 2.1 and SDXL: the UI's presets too."""
    assert [p.name for p in CONFIGS] == [
        "sd15-dreambooth-prior.toml",
        "sd15-style-lora.toml",
        "sd15-style-trilora.toml",
        "sd21-768v-style-trilora.toml",
        "sd21-768v-subject-prior.toml",
        "sdxl-style-trilora.toml",
        "sdxl-subject-prior.toml",
    ]
    for path in CONFIGS:
        subject = "prior" in path.name
        assert ("class_data" in path.read_text()) == subject, path.name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_loads_and_validates(path, tiny_model_dir, tmp_path):
    data = load_toml(path)
    config = from_dict(data, source=str(path))  # unknown keys or wrong types would raise here
    assert config.model.base.endswith(
        ("v1-5-pruned-emaonly.safetensors", "v2-1_768-ema-pruned.safetensors", "sd_xl_base_1.0.safetensors")
    )
    # with the placeholder paths pointed at real ones, the run is valid as written
    data["model"]["base"] = str(tiny_model_dir)
    data["data"]["data"] = str(tmp_path)
    data["output"] = str(tmp_path / "run")
    if "class_data" in data["data"]:
        data["data"]["class_data"] = str(tmp_path / "class")
    from_dict(data, source=str(path)).validate()
