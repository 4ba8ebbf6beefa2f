"""`trilora extract --base BASE --tuned TUNED --rank R | --energy E | --max-error E --output OUT.safetensors`:
a LoRA of the difference between a fine-tuned model and its base, on the modules trilora trains
(the UNet's transformer-block Linear and 1×1 layers; each text encoder's attention and MLP layers
where that encoder differs at all).

Module by module: ΔW = W_tuned − W_base in fp32 on --device, its SVD (exact, so the error of the rank
kept is the tail of the singular values), the truncation split as up = U·√S, down = √S·Vᵀ with
alpha = rank (scale 1). Both models stay at their files' precision (fp16: 2 × 2 GB for SD 1.5,
2 × 7 GB for SDXL); only one module's ΔW and SVD exist at a time in fp32. A module that did not
change is left out.
"""

import logging
from pathlib import Path

import torch

from trilora.adapters.inject import text_encoder_targets, unet_targets
from trilora.adapters.lowrank import choose_rank, kept, matrix_svd, split
from trilora.adapters.math import flat
from trilora.base.detect import stored_dtype
from trilora.base.load import load_base
from trilora.device import resolve_device
from trilora.errors import UserError
from trilora.formats.adapter import Adapter
from trilora.formats.keys import our_key
from trilora.formats.metadata import kohya_metadata
from trilora.tools.common import (
    DTYPES,
    adapter_output_flags,
    check_outputs,
    kept_report,
    report_lines,
    tool_record,
    with_ranks,
    write_both,
)

log = logging.getLogger("trilora")


def extract_command(tree) -> list[Path]:
    tools, model = tree.tools, tree.model
    choice = tools.rank_choice()
    tools.require_output()
    if not model.base or not tools.tuned:
        raise UserError("extract needs two models of one family: --base BASE and --tuned TUNED")
    for flag, path in (("--base", model.base), ("--tuned", tools.tuned)):
        if not Path(path).exists():
            raise UserError(f"{flag} {path}: no such file or folder")
    if Path(model.base).resolve() == Path(tools.tuned).resolve():
        raise UserError(f"--base and --tuned are both {model.base}: give the fine-tuned model as --tuned")
    inputs = {"--base": model.base, "--tuned": tools.tuned, "--base-config": model.base_config}
    check_outputs(adapter_output_flags(tools.output), inputs, tools.overwrite)
    device = resolve_device(tools.device)
    # each at its own precision: a cast would change ΔW; fp16 files stay fp16 (SDXL: 2 x 7 GB)
    load = dict(base_config=model.base_config, family=model.family, prediction_type=model.prediction_type)
    base = load_base(model.base, dtype=stored_dtype(Path(model.base)), **load)
    tuned = load_base(tools.tuned, dtype=stored_dtype(Path(tools.tuned)), **load)
    if tuned.family is not base.family:
        raise UserError(f"--tuned {tools.tuned} is {tuned.family} but --base {model.base} is {base.family}: "
                        "extract from two models of one family")  # fmt: skip
    pairs, kept_by_key = {}, {}
    for part in base.family.parts:
        source, target = getattr(base.pipe, part), getattr(tuned.pipe, part)
        names = unet_targets(source) if part == "unet" else text_encoder_targets(source)
        for name, (down, up, kept_) in extract_modules(source, target, names, device, **choice).items():
            key = our_key(part, name) if part != "unet" else f"unet.{name}"
            pairs[key], kept_by_key[key] = (down, up), kept_
    if not pairs:
        raise UserError(f"--tuned {tools.tuned} has the same weights as --base {model.base} in every module "
                        "trilora trains: there is nothing to extract")  # fmt: skip
    alphas = {key: float(down.shape[0]) for key, (down, _) in pairs.items()}
    report = kept_report(kept_by_key)
    rank = max(down.shape[0] for down, _ in pairs.values())
    info = {"method": "lora", "rank": rank, "alpha": rank, "name": Path(tools.output).stem,
            "base_model": Path(model.base).name}  # fmt: skip
    adapter = Adapter(pairs, alphas, {}, "kohya", base.family, Path(tools.tuned))
    sources = [Path(p) for p in (model.base, tools.tuned) if Path(p).is_file()]
    adapter.metadata = with_ranks(kohya_metadata(info, base.family.header(base.prediction_type)), adapter) | tool_record(
        "extract", sources, base=Path(model.base).name, tuned=Path(tools.tuned).name, choice=choice, kept=report)  # fmt: skip
    files = write_both(adapter, tools.output, DTYPES[tools.save_dtype or "fp16"])
    for line in report_lines(report):
        print(line)
    return files


def extract_modules(source, target, names: list[str], device: torch.device, **choice) -> dict:
    """{name: (down, up, Kept)} of each module whose weight differs between `source` and `target`."""
    found = {}
    for name in names:
        try:
            before, after = source.get_submodule(name).weight, target.get_submodule(name).weight
        except AttributeError:
            raise UserError(
                f"--tuned has no {name}, which --base has: the two models are not the same architecture"
            ) from None
        if before.shape != after.shape:
            raise UserError(f"{name} is {tuple(before.shape)} in --base but {tuple(after.shape)} in --tuned: "
                            "the two models are not the same architecture")  # fmt: skip
        delta = flat(after.detach().to(device, torch.float32) - before.detach().to(device, torch.float32))
        if not bool(delta.any()):
            continue
        u, s, vh = matrix_svd(delta)
        k = choose_rank(s, **choice)
        down, up = split(u, s, vh, k)
        found[name] = (down.cpu().reshape(k, *before.shape[1:]), up.cpu().reshape(before.shape[0], k, *([1] * (before.ndim - 2))),
                       kept(s, k, min(delta.shape)))  # fmt: skip
    return found
