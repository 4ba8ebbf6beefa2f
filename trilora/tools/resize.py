"""`trilora resize FILE --rank R | --energy E | --max-error E --output OUT.safetensors`: each module's
best approximation of a lower rank (Eckart–Young, from the SVD of B·A, never forming ΔW), written
in both layouts, with what was kept reported per part.

The pair's alpha/r (the scale a loader applies) is kept, so a resized adapter needs the same
strength as the original; a module's rank never grows (--rank above the file's largest is refused;
a module of a lower rank, such as LoCon's convolutions, keeps its own).
"""

import logging
from pathlib import Path

from trilora.adapters.lowrank import truncate
from trilora.errors import UserError
from trilora.formats.adapter import Adapter, read_adapter
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


def resize(adapter: Adapter, **choice) -> tuple[Adapter, dict]:
    """(the resized adapter, Kept per module); `choice`: rank=, energy= or max_error=."""
    largest = max(down.shape[0] for down, _ in adapter.pairs.values())
    if choice.get("rank") is not None and choice["rank"] > largest:
        raise UserError(f"--rank {choice['rank']} is above the adapter's largest rank, {largest}: resize only "
                        "lowers ranks (a higher rank would hold nothing more); give --rank at most "
                        f"{largest}")  # fmt: skip
    pairs, alphas, kept = {}, {}, {}
    for key, (down, up) in adapter.pairs.items():
        scale = adapter.alphas[key] / down.shape[0]
        new_down, new_up, kept[key] = truncate(down, up, scale, scale, **choice)
        k = new_down.shape[0]
        pairs[key] = (new_down.reshape(k, *down.shape[1:]), new_up.reshape(up.shape[0], k, *up.shape[2:]))
        alphas[key] = scale * k
    resized = Adapter(pairs, alphas, adapter.metadata, adapter.layout, adapter.family, adapter.file)
    return resized, kept


def resize_command(tree) -> list[Path]:
    tools = tree.tools
    choice = tools.rank_choice()
    tools.require_output()
    if not tools.file:
        raise UserError("no adapter to resize: give it as `trilora resize FILE`")
    if not Path(tools.file).exists():
        raise UserError(f"adapter file not found: {tools.file}")
    check_outputs(adapter_output_flags(tools.output), {"FILE": tools.file}, tools.overwrite)
    adapter = read_adapter(tools.file, sgm_config)
    resized, kept = resize(adapter, **choice)
    report = kept_report(kept)
    resized.metadata = with_ranks(adapter.metadata, resized) | tool_record(
        "resize", [adapter.file], choice=choice, kept=report
    )
    files = write_both(resized, tools.output, DTYPES[tools.save_dtype] if tools.save_dtype else adapter.dtype)
    for line in report_lines(report):
        print(line)
    return files
