"""The settings of the adapter toolbox: `trilora resize`, `merge`, `extract` and `convert` (each
reads the fields its `Command` names; the base model of merge and extract is [model]'s)."""

from __future__ import annotations

from dataclasses import dataclass

from trilora.config.fields import opt
from trilora.errors import UserError

SAVE_DTYPES = ("fp16", "bf16", "fp32")
LAYOUTS = ("kohya", "diffusers")


@dataclass
class ToolsConfig:
    file: str = opt("", "The adapter: a kohya .safetensors, a diffusers LoRA folder (or its file), or a run's "
                    "own adapter file (best/, last/, adapters/).", metavar="FILE", path=True)  # fmt: skip
    lora: list[str] = opt([], "An adapter and its strength (repeatable): folded into --base, or, without "
                          "--base, merged with the others into one adapter.", repeat=True,
                          metavar="FILE[:STRENGTH]", path=True)  # fmt: skip
    tuned: str = opt("", "The fine-tuned model (a diffusers folder or single file of --base's family); the "
                     "adapter extracted is its difference from --base.", metavar="PATH", path=True)  # fmt: skip
    rank: int | None = opt(None, "Rank of every module (resize: at most the file's; merge: the ranks' sum "
                           "when not given, exact).", low=1, high=8192)  # fmt: skip
    energy: float | None = opt(None, "Per module, the lowest rank that keeps this share of the Frobenius "
                               "energy (the sum of squared singular values), e.g. 0.95.", low=0, high=1)  # fmt: skip
    max_error: float | None = opt(None, "Per module, the lowest rank whose relative Frobenius error is at "
                                  "most this, e.g. 0.05.", low=0, high=1)  # fmt: skip
    to: str = opt("kohya", "The layout written: kohya (one .safetensors, for A1111, ComfyUI, kohya) or "
                  "diffusers (a folder, for diffusers and PEFT).", choices=LAYOUTS)  # fmt: skip
    save_dtype: str | None = opt(None, "Precision of what is written (default: the source's own; fp16 for "
                                 "extract and a merged checkpoint).", choices=SAVE_DTYPES)  # fmt: skip
    device: str = opt("auto", "Device of the SVDs and merges: auto, cpu, cuda, cuda:N.")
    output: str = opt("", "What to write: a .safetensors file (an adapter also gets OUTPUT-diffusers/ beside "
                      "it; convert --to diffusers: a folder).", metavar="PATH", path=True)  # fmt: skip
    overwrite: bool = opt(
        False, "Replace an earlier output of a trilora tool (default: refuse).", saved=False
    )

    def rank_choice(self, required: bool = True) -> dict:
        """The one way of choosing ranks given (--rank, --energy or --max-error), as keyword arguments."""
        given = {k: v for k, v in (("rank", self.rank), ("energy", self.energy), ("max_error", self.max_error))
                 if v is not None}  # fmt: skip
        if len(given) > 1 or (required and not given):
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in given) or "none"
            raise UserError(f"give one of --rank R, --energy E or --max-error E (given: {flags})")
        return given

    def require_output(self) -> None:
        if not self.output:
            raise UserError("no output: pass --output FILE.safetensors")
