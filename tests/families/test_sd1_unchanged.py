"""SD 1.x behind the family seam trains and exports exactly what it did before the seam existed.

The digests below were taken from the code before `trilora/families/` (commit 6e12131) with the
run this test makes: a fixed-seed tiny TriLoRA run, text encoder and LoCon convs included. Every
tensor of both exports (name, dtype, shape, bytes) and every header entry must be as they were;
only what differs between any two runs is left out (the date, the installed version) and, from
the recorded run config, options added since (they are recorded, so they cannot be equal).
"""

import hashlib
import json

import torch
from safetensors import safe_open

from trilora.base.tiny import make_shapes_dataset
from trilora.config import from_dict
from trilora.training.loop import train

# sha256 of `export_digest` of each file, from the code before the family seam
BEFORE = {
    "kohya": "ab3af1a318a1dc704c1524da27814b55aa0e0c920c0993a4ed361a801b8655b4",
    "diffusers": "81666f1bfc512865971d1c57c31da02e45a05022cc01748929327e42f561286e",
}
MODEL_KEYS_BEFORE = {"base", "base_config"}
# options added since, per section: SDXL's second text encoder's learning rate, the kept adapters
KEYS_ADDED = {"train": {"lr_text_encoder_2"}, "checkpoint": {"keep_adapters"}, "validation": {"stop_window"}}
CHANGES_EVERY_RUN = {"modelspec.date", "trilora_version"}


def export_digest(path, folders: dict[str, str]) -> str:
    """A digest of a safetensors file's tensors and header; `folders` {path: placeholder} are
    replaced in the header (the test's temporary folders differ between runs)."""
    digest = hashlib.sha256()
    with safe_open(str(path), "pt") as file:
        metadata = dict(file.metadata() or {})
        for name in sorted(file.keys()):
            tensor = file.get_tensor(name).contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    config = json.loads(metadata["trilora_config"])
    config["model"] = {k: v for k, v in config["model"].items() if k in MODEL_KEYS_BEFORE}
    for section, added in KEYS_ADDED.items():
        config[section] = {k: v for k, v in config[section].items() if k not in added}
    metadata["trilora_config"] = json.dumps(config, sort_keys=True)
    for key in sorted(set(metadata) - CHANGES_EVERY_RUN):
        value = metadata[key]
        for folder, placeholder in folders.items():
            value = value.replace(folder, placeholder)
        digest.update(f"{key}={value}\n".encode())
    return digest.hexdigest()


def test_a_fixed_seed_sd1_run_exports_the_same_files_as_before_the_seam(tmp_path, tiny_model_dir, one_thread):
    data = make_shapes_dataset(tmp_path / "data", count=8)
    config = from_dict({
        "output": str(tmp_path / "run"),
        "model": {"base": str(tiny_model_dir)},
        "data": {"data": str(data), "resolution": 32, "val_fraction": 0.25},
        "adapter": {"method": "trilora", "rank": 4, "alpha": 2, "train_text_encoder": True, "conv_rank": 2},
        "train": {"lr": 2e-3, "batch_size": 2, "steps": 4, "seed": 3},
        "validation": {"validate_every": 2, "patience": 0, "val_timesteps": 2, "stop_on": "val_loss"},
        "export": {"name": "pinned"},
    })  # fmt: skip
    summary = train(config)
    folders = {str(tmp_path): "<tmp>", str(tiny_model_dir): "<tiny>"}
    got = {kind: export_digest(path, folders) for kind, path in summary["exported"].items()}
    assert got == BEFORE
