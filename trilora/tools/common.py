"""What the four tools (resize, merge, extract, convert) share: where they may write, the header
record of what they did, and the report of what a rank cut kept."""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from trilora import __version__
from trilora.adapters.lowrank import Kept
from trilora.base.detect import read_json, shipped_configs
from trilora.errors import UserError
from trilora.files import hash_file
from trilora.formats.adapter import Adapter, write_diffusers, write_kohya
from trilora.formats.diffusers_lora import WEIGHT_NAME
from trilora.outputs import check_name, refuse_foreign_files, refuse_other_runs, refuse_overlaps
from trilora.run_folder import check_folder_path

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TOOL_KEY = (
    "trilora_tool"  # the header entry (JSON) that says which tool wrote a file, from what, keeping what
)
PARTS_SHOWN = {"unet": "UNet", "text_encoder": "text encoder", "text_encoder_2": "text encoder 2"}


def sgm_config(family) -> dict | None:
    """SDXL's UNet config, which its kohya (SGM) names are read and written with; None for other families."""
    if family is None or not family.kohya_sgm:
        return None
    return read_json(shipped_configs(family) / "unet" / "config.json")


def adapter_outputs(output: str) -> tuple[Path, Path]:
    """(OUTPUT.safetensors in the kohya layout, OUTPUT-diffusers/ beside it), as training exports them."""
    path = Path(output)
    if path.suffix != ".safetensors":
        raise UserError(f"--output {output}: an adapter is written as a .safetensors file (and its diffusers "
                        "folder beside it); give a name ending in .safetensors")  # fmt: skip
    return path, path.with_name(path.stem + "-diffusers")


def adapter_output_flags(output: str) -> dict[str, Path]:
    """The two outputs of an adapter, by what names them."""
    kohya_file, diffusers_dir = adapter_outputs(output)
    return {"--output": kohya_file, "--output's diffusers folder": diffusers_dir}


def check_outputs(outputs: dict[str, Path], inputs: dict[str, str | Path | None], overwrite: bool) -> None:
    """The run-folder rules (trilora/outputs.py), then: a file that exists is replaced only with
    --overwrite, and only if one of our tools or exports wrote it."""
    for flag, path in outputs.items():
        check_name(path.name, flag)  # a file name the file system takes, with room for what trilora adds
        check_folder_path(path.parent, flag)  # under a file, or not writable: said now, nothing written
    refuse_overlaps(outputs, inputs)
    refuse_other_runs(outputs)
    files = [path / WEIGHT_NAME if path.suffix != ".safetensors" else path for path in outputs.values()]
    existing = [path for path in files if path.exists() or path.is_symlink()]
    if existing and not overwrite:
        raise UserError(
            f"--output: {existing[0]} exists; add --overwrite to replace it, or choose another --output"
        )
    refuse_foreign_files(existing, written_by_trilora, "--output")
    for path in outputs.values():
        if path.exists() and not path.is_dir() and path.suffix != ".safetensors":
            raise UserError(f"--output: {path} exists and is not a folder; choose another --output")


def written_by_trilora(path: Path) -> bool:
    try:
        with safe_open(str(path), "pt") as opened:
            metadata = opened.metadata() or {}
    except (OSError, SafetensorError):
        return False
    return TOOL_KEY in metadata or "trilora_version" in metadata


def tool_record(command: str, sources: list[Path], **facts) -> dict[str, str]:
    """The header entry of a tool's output: the command, each source's name and sha256, and `facts`."""
    record = {"command": command, "trilora_version": __version__,
              "sources": [{"file": path.name, "sha256": hash_file(path).hexdigest()} for path in sources], **facts}  # fmt: skip
    return {TOOL_KEY: json.dumps(record, sort_keys=True)}


def with_ranks(metadata: dict[str, str], adapter: Adapter) -> dict[str, str]:
    """kohya's rank and alpha entries for the pairs now in `adapter` ("Dynamic" when they vary, as
    kohya's resize_lora.py writes them)."""
    ranks = {down.shape[0] for down, _ in adapter.pairs.values()}
    alphas = set(adapter.alphas.values())
    return metadata | {"ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
                       "ss_network_alpha": f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic"}  # fmt: skip


def write_both(adapter: Adapter, output: str, dtype: torch.dtype) -> list[Path]:
    kohya_file, diffusers_dir = adapter_outputs(output)
    kohya_file.parent.mkdir(parents=True, exist_ok=True)
    return [write_kohya(kohya_file, adapter, dtype, sgm_config(adapter.family)),
            write_diffusers(diffusers_dir, adapter, dtype)]  # fmt: skip


def kept_report(kept: dict[str, Kept]) -> dict[str, dict]:
    """Per part: modules, ranks before and after, the Frobenius energy kept of the whole part (Σ of
    kept s² over Σ of all s², so large updates weigh more) and the largest relative error, with its module."""
    report = {}
    for part in PARTS_SHOWN:
        mine = {key: k for key, k in kept.items() if key.split(".", 1)[0] == part}
        if not mine:
            continue
        worst = max(mine, key=lambda key: mine[key].error)
        total = sum(k.total for k in mine.values())
        report[part] = {"modules": len(mine),
                        "ranks_before": sorted({k.rank_before for k in mine.values()}),
                        "ranks": [min(k.rank for k in mine.values()), max(k.rank for k in mine.values())],
                        "energy": sum(k.energy * k.total for k in mine.values()) / total if total else 1.0,
                        "largest_error": mine[worst].error, "largest_error_module": worst}  # fmt: skip
    return report


def report_lines(report: dict[str, dict]) -> list[str]:
    lines = []
    for part, r in report.items():
        low, high = r["ranks"]
        ranks = f"rank {low}" if low == high else f"ranks {low}..{high}"
        before = ",".join(map(str, r["ranks_before"]))
        lines.append(f"{PARTS_SHOWN[part]}: {r['modules']} modules, rank {before} -> {ranks}, "
                     f"{100 * r['energy']:.4g} % of the Frobenius energy kept, largest relative error "
                     f"{r['largest_error']:.3g} ({r['largest_error_module']})")  # fmt: skip
    return lines
