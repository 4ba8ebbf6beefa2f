"""`trilora convert FILE --to kohya|diffusers --output PATH`: the same pairs in the other layout, the
tensors untouched (same dtype, same bytes) and the header kept (ss_*, modelspec.*, trilora_*), so
kohya → diffusers → kohya gives back the file's tensors byte for byte."""

from pathlib import Path

from trilora.errors import UserError
from trilora.formats.adapter import read_adapter, write_diffusers, write_kohya
from trilora.tools.common import DTYPES, check_outputs, sgm_config, tool_record


def convert_command(tree) -> list[Path]:
    tools = tree.tools
    if not tools.file:
        raise UserError("no adapter to convert: give it as `trilora convert FILE --to kohya|diffusers`")
    if not tools.output:
        raise UserError(
            "no output: pass --output FILE.safetensors (--to kohya) or --output DIR (--to diffusers)"
        )
    if not Path(tools.file).exists():
        raise UserError(f"adapter file not found: {tools.file}")
    output = Path(tools.output)
    if tools.to == "kohya" and output.suffix != ".safetensors":
        raise UserError(
            f"--output {output}: --to kohya writes one .safetensors file; give a name ending in .safetensors"
        )
    if tools.to == "diffusers" and output.suffix == ".safetensors":
        raise UserError(f"--output {output}: --to diffusers writes a folder (holding pytorch_lora_weights.safetensors); "
                        "give a folder name")  # fmt: skip
    check_outputs({"--output": output}, {"FILE": tools.file}, tools.overwrite)
    adapter = read_adapter(tools.file, sgm_config)
    dtype = DTYPES[tools.save_dtype] if tools.save_dtype else adapter.dtype
    adapter.metadata = adapter.metadata | tool_record("convert", [adapter.file], source_layout=adapter.layout,
                                                      to=tools.to)  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    if tools.to == "kohya":
        return [write_kohya(output, adapter, dtype, sgm_config(adapter.family))]
    return [write_diffusers(output, adapter, dtype)]
