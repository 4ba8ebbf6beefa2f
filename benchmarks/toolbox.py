"""Resize and extract on full-size models (random weights; SD 1.5's configs, or SDXL's with --family
sdxl): the toolbox's own routes, timed, beside the route that forms ΔW, in one run.

    python benchmarks/toolbox.py [--family sd1|sdxl] [--rank 32] [--device cpu] [--sample 48]

- resize: a rank-`--rank` LoRA on every module trilora trains (the UNet's transformer-block layers
  and each text encoder's attention and MLP), resized to rank/2. Ours: the thin SVD of B·A through
  two QRs (trilora.adapters.lowrank.product_svd), ΔW never formed; beside it, forming ΔW and taking
  its SVD (what kohya's resize_lora.py does), on the first --sample modules, and the largest
  difference of the two results (relative to ΔW).
- extract: the same modules of a "fine-tuned" copy (each weight plus Gaussian noise: a full-rank
  ΔW, the worst case), each ΔW's exact SVD in fp32 (trilora.tools.extract.extract_modules, as
  `trilora extract` runs it), rank --rank kept. Both models in fp16, as released checkpoints are.
  Loading the two checkpoints from disk is not included (it is I/O).

Prints seconds and the peak resident memory of the process.
"""

import argparse
import copy
import resource
import time

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from trilora.adapters.inject import text_encoder_targets, unet_targets
from trilora.adapters.lowrank import product_svd, split
from trilora.adapters.math import flat
from trilora.device import resolve_device
from trilora.families.registry import FAMILIES
from trilora.formats.adapter import Adapter
from trilora.tools.extract import extract_modules
from trilora.tools.resize import resize


def models(family) -> dict:
    """{part: a random-weight fp16 model} from the family's shipped configs."""
    torch.manual_seed(0)
    built = {
        "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(family.configs / "unet"))
    }
    for part in family.text_encoders:
        config = CLIPTextConfig.from_pretrained(family.configs / part)
        cls = (
            CLIPTextModelWithProjection
            if "WithProjection" in (config.architectures or [""])[0]
            else CLIPTextModel
        )
        built[part] = cls(config)
    return {part: model.half().requires_grad_(False) for part, model in built.items()}


def targets(part: str, model) -> list[str]:
    return unet_targets(model) if part == "unet" else text_encoder_targets(model)


def random_adapter(parts: dict, rank: int) -> Adapter:
    generator = torch.Generator().manual_seed(1)
    pairs = {}
    for part, model in parts.items():
        for name in targets(part, model):
            weight = model.get_submodule(name).weight
            pairs[f"{part}.{name}"] = (torch.randn(rank, *weight.shape[1:], generator=generator).half(),
                                      torch.randn(weight.shape[0], rank, *([1] * (weight.ndim - 2)), generator=generator).half())  # fmt: skip
    return Adapter(pairs, dict.fromkeys(pairs, float(rank)), {}, "kohya", None, None)


def naive_resize(down, up, k):
    """Form ΔW, take its SVD (fp32), keep k: kohya's resize_lora.py's route."""
    delta = flat(up).float() @ flat(down).float()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return split(u, s, vh, k)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd1", choices=["sd1", "sdxl"])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sample", type=int, default=48, help="modules the ΔW route is timed on")
    args = parser.parse_args()
    family, device = FAMILIES[args.family], resolve_device(args.device)
    start = time.perf_counter()
    parts = models(family)
    print(f"{family}: random-weight fp16 models built in {time.perf_counter() - start:.0f} s "
          f"({', '.join(f'{p}: {len(targets(p, m))} modules' for p, m in parts.items())})")  # fmt: skip
    torch.set_grad_enabled(False)

    adapter = random_adapter(parts, args.rank)
    start = time.perf_counter()
    resize(adapter, rank=args.rank // 2)
    ours_all = time.perf_counter() - start
    sample = list(adapter.pairs.items())[: args.sample]
    start = time.perf_counter()
    ours = [split(*product_svd(d, u), args.rank // 2) for _, (d, u) in sample]
    ours_sample = time.perf_counter() - start
    start = time.perf_counter()
    naive = [naive_resize(d, u, args.rank // 2) for _, (d, u) in sample]
    naive_sample = time.perf_counter() - start
    difference = max(float((flat(a_u) @ flat(a_d) - flat(b_u) @ flat(b_d)).norm() / (flat(u).float() @ flat(d).float()).norm())
                     for ((a_d, a_u), (b_d, b_u), (_, (d, u))) in zip(ours, naive, sample, strict=True))  # fmt: skip
    print(f"resize rank {args.rank} -> {args.rank // 2}, all {len(adapter.pairs)} modules: {ours_all:.1f} s "
          f"(B·A's SVD through QR, ΔW never formed)")  # fmt: skip
    print(f"  first {len(sample)} modules: ours {ours_sample:.2f} s, forming ΔW and its SVD {naive_sample:.2f} s: "
          f"{naive_sample / ours_sample:.0f}x; largest difference of the results {difference:.1e} of ΔW")  # fmt: skip

    tuned = {}
    generator = torch.Generator().manual_seed(2)
    for part, model in parts.items():
        tuned[part] = copy.deepcopy(model)
        for name in targets(part, model):
            weight = tuned[part].get_submodule(name).weight
            weight += (torch.randn(weight.shape, generator=generator) * 1e-3).half()
    start = time.perf_counter()
    kept = 0
    for part, model in parts.items():
        found = extract_modules(model, tuned[part], targets(part, model), device, rank=args.rank)
        kept += len(found)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(
        f"extract rank {args.rank}, {kept} modules (full-rank ΔW, exact SVD in fp32 on {device}): {seconds:.0f} s"
    )
    print(
        f"peak resident memory of this process: {peak_gib():.1f} GiB (both models in fp16, and the adapter)"
    )


if __name__ == "__main__":
    main()
