"""`trilora merge`: adapters folded into a base model and written as one single-file checkpoint in the
family's original layout (`--base`), or merged into one adapter (no `--base`).

Into a checkpoint: W ← W + strength·(alpha/r)·B·A for every pair of every adapter, computed in fp32
(on --device) and stored at --save-dtype (fp16 by default, as checkpoints are shared); the file has
the family's original names (what A1111, ComfyUI and diffusers' from_single_file read) and the
`v_pred`/`ztsnr` markers of a v-prediction base.

Into one adapter: Σ_i strength_i·(alpha_i/r_i)·B_i·A_i per module. Without --rank (or with a rank at
least the ranks' sum) the pairs are stacked, [A_1; A_2] and [s_1·B_1, s_2·B_2]: exact, rank Σ r_i,
alpha = rank. With a lower --rank, the best approximation of that rank (the SVD of the stacked
pair), with the energy kept reported.
"""

import logging
from pathlib import Path

import torch

from trilora.adapters.lowrank import Kept, concatenate, truncate
from trilora.adapters.math import flat
from trilora.base.detect import V_MARKER, ZTSNR_MARKER
from trilora.base.load import load_base
from trilora.device import resolve_device
from trilora.errors import UserError
from trilora.files import save_safetensors
from trilora.formats.adapter import Adapter, read_adapter
from trilora.formats.keys import module_of
from trilora.formats.ldm import text_encoders
from trilora.formats.metadata import NETWORK_MODULE
from trilora.inference.generate import parse_lora
from trilora.tools.common import (
    DTYPES,
    adapter_output_flags,
    check_outputs,
    kept_report,
    report_lines,
    sgm_config,
    tool_record,
    with_ranks,
    write_both,
)

log = logging.getLogger("trilora")
FAMILY_ENTRIES = ("ss_base_model_version", "ss_v2", "modelspec.architecture", "modelspec.implementation",
                  "modelspec.prediction_type", "modelspec.sai_model_spec", "ss_network_module")  # fmt: skip


def merge_command(tree) -> list[Path]:
    tools, model = tree.tools, tree.model
    if not tools.lora:
        raise UserError("nothing to merge: pass --lora FILE[:STRENGTH] (repeatable)")
    tools.require_output()
    if model.base and tools.rank is not None:
        raise UserError(
            "--rank applies to merging adapters into one adapter, not into --base: drop one of them"
        )
    loras = [parse_lora(spec) for spec in tools.lora]
    inputs = {f"--lora {path}": path for path, _ in loras} | {
        "--base": model.base,
        "--base-config": model.base_config,
    }
    if model.base:
        if Path(tools.output).suffix != ".safetensors":
            raise UserError(f"--output {tools.output}: a merged checkpoint is one .safetensors file; give a name "
                            "ending in .safetensors")  # fmt: skip
        check_outputs({"--output": Path(tools.output)}, inputs, tools.overwrite)
        return [merge_into_base(model, loras, tools)]
    check_outputs(adapter_output_flags(tools.output), inputs, tools.overwrite)
    adapters = [(read_adapter(path, sgm_config), strength) for path, strength in loras]
    merged, kept = merge_adapters(adapters, tools.rank)
    report = kept_report(kept)
    title = {"ss_output_name": Path(tools.output).stem, "modelspec.title": Path(tools.output).stem}
    merged.metadata = with_ranks(merged.metadata | title, merged) | tool_record(
        "merge", [a.file for a, _ in adapters], strengths=[s for _, s in loras], rank=tools.rank, kept=report
    )
    files = write_both(
        merged, tools.output, DTYPES[tools.save_dtype] if tools.save_dtype else adapters[0][0].dtype
    )
    for line in report_lines(report):
        print(line)
    return files


def one_family(adapters: list[Adapter]):
    """The family the adapters were made for (None if none says); two different ones are refused."""
    families = {a.family for a in adapters if a.family is not None}
    if len(families) > 1:
        names = ", ".join(f"{a.file.name}: {a.family}" for a in adapters if a.family is not None)
        raise UserError(
            f"the adapters were made for different model families ({names}): merge adapters of one family"
        )
    return families.pop() if families else None


def merge_adapters(
    adapters: list[tuple[Adapter, float]], rank: int | None
) -> tuple[Adapter, dict[str, Kept]]:
    """One adapter of Σ strength·(alpha/r)·B·A per module (exact stack, or the best of rank `rank`)."""
    family = one_family([a for a, _ in adapters])
    keys = sorted({key for a, _ in adapters for key in a.pairs})
    pairs, alphas, kept = {}, {}, {}
    for key in keys:
        parts = [(a.pairs[key][0], a.pairs[key][1], s * a.alphas[key] / a.pairs[key][0].shape[0])
                 for a, s in adapters if key in a.pairs]  # fmt: skip
        shapes = {(tuple(d.shape[1:]), u.shape[0]) for d, u, _ in parts}
        if len(shapes) > 1:
            raise UserError(f"the adapters' {key} differ in shape ({sorted(shapes)}): they were made for different "
                            "base models; merge adapters of one base model")  # fmt: skip
        down, up = concatenate(parts)
        total = down.shape[0]
        if rank is None or rank >= total:
            kept[key] = Kept(total, total, 1.0, 0.0, 0.0)
        else:
            down, up, kept[key] = truncate(down, up, 1.0, 1.0, rank=rank)
        k, (down0, up0, _) = down.shape[0], parts[0]  # shaped as the sources' factors (convolutions 4-D)
        pairs[key] = (
            down.float().reshape(k, *down0.shape[1:]),
            up.float().reshape(up0.shape[0], k, *up0.shape[2:]),
        )
        alphas[key] = float(k)
    # what the first source says of the family (A1111 hides an adapter whose base version does not match)
    first = adapters[0][0]
    metadata = {k: v for k, v in first.metadata.items() if k in FAMILY_ENTRIES} if family is not None else {}
    metadata["ss_network_module"] = NETWORK_MODULE
    return Adapter(pairs, alphas, metadata, "kohya", family, first.file), kept


def merge_into_base(model, loras: list[tuple[Path, float]], tools) -> Path:
    dtype = DTYPES[tools.save_dtype or "fp16"]
    device = resolve_device(tools.device)
    base = load_base(
        model.base, model.base_config, dtype, model.family, model.prediction_type, model.zero_terminal_snr
    )
    adapters = [(read_adapter(path, lambda f: dict(base.pipe.unet.config) if f.kohya_sgm else None), s)
                for path, s in loras]  # fmt: skip
    for adapter, _ in adapters:
        if adapter.family is not None and adapter.family is not base.family:
            raise UserError(f"adapter {adapter.file} was made for {adapter.family} but --base {model.base} is "
                            f"{base.family}: merge adapters made for this base model's family")  # fmt: skip
        modules_of(base.pipe, adapter)  # every module there, of the right shape, before anything changes
    for adapter, strength in adapters:
        for key, module in modules_of(base.pipe, adapter).items():
            down, up = adapter.pairs[key]
            scale = strength * adapter.alphas[key] / down.shape[0]
            delta = scale * (flat(up).to(device, torch.float32) @ flat(down).to(device, torch.float32))
            weight = module.weight.data
            weight.copy_((weight.float() + delta.cpu().reshape(weight.shape)).to(weight.dtype))
    pipe = base.pipe
    state = base.family.ldm_state_dict(pipe.unet, pipe.vae, *text_encoders(pipe))
    state = {key: tensor.detach().to("cpu", dtype).contiguous() for key, tensor in state.items()}
    if base.prediction_type == "v_prediction":
        state[V_MARKER] = torch.zeros(0)
    if model.zero_terminal_snr or getattr(pipe.scheduler.config, "rescale_betas_zero_snr", False):
        state[ZTSNR_MARKER] = torch.zeros(0)
    output = Path(tools.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sources = [Path(model.base)] if Path(model.base).is_file() else []
    record = tool_record("merge", sources + [a.file for a, _ in adapters], base=Path(model.base).name,
                         strengths=[s for _, s in loras], family=base.family.name, prediction_type=base.prediction_type)  # fmt: skip
    save_safetensors(state, output, record)
    log.info("merged %d adapter(s) into %s: %s", len(adapters), base.family, output)
    return output


def modules_of(pipe, adapter: Adapter) -> dict:
    """{key: the module of `pipe` each pair adapts}, checked: it exists and has the pair's shape."""
    found = {}
    for key, (down, up) in adapter.pairs.items():
        module = module_of(pipe, key)
        if module is None:
            raise UserError(f"adapter {adapter.file} adapts {key}, which --base does not have: merge it into the "
                            "base model it was made for")  # fmt: skip
        weight = module.weight.shape
        if (up.shape[0], down[0].numel()) != (weight[0], weight[1:].numel()):
            raise UserError(f"adapter {adapter.file}: {key} is {weight[1]} -> {weight[0]} in --base but "
                            f"{down.shape[1]} -> {up.shape[0]} in the adapter: merge it into the base model it was "
                            "made for")  # fmt: skip
        found[key] = module
    return found
