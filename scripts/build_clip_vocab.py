"""Build the CLIP tokenizer files (vocab.json, merges.txt) from OpenAI's BPE merge list.

The merge list `bpe_simple_vocab_16e6.txt.gz` (MIT licence) ships inside the PyPI package
open_clip_torch. Fetch it without importing open_clip (which pulls torchvision):

    pip download --no-deps open_clip_torch -d /tmp/oc
    python scripts/build_clip_vocab.py /tmp/oc/open_clip_torch-*.whl

The vocabulary is the byte alphabet, the same with the end-of-word mark `</w>`, one token per
merge, then the two special tokens: 49,408 entries in all.
"""

import gzip
import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "trilora" / "families" / "sd15" / "tokenizer"
NUM_MERGES = 49152 - 256 - 2


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2's and CLIP's BPE, in vocabulary order:
    bytes that are printable stand for themselves, the others map to 256, 257, ... in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def build(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    alphabet = byte_alphabet()
    tokens = alphabet + [t + "</w>" for t in alphabet]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def main(source: str) -> None:
    if source.endswith(".whl"):
        with zipfile.ZipFile(source) as wheel:
            data = wheel.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    else:
        data = Path(source).read_bytes()
    vocab, merges = build(data)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
