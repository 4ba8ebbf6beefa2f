"""Time to add adapters to a full-size UNet (random weights; SD 1.5's, or SDXL's with --family sdxl):
LoRA, TriLoRA as it was (every singular value of each target weight with torch.linalg.svdvals) and
TriLoRA now (trilora.adapters.math.top_singular_values: only s_1..s_r), measured side by side in one run.

    python benchmarks/adapter_setup.py [--rank 16] [--device cpu] [--repeats 2] [--family sd1|sdxl]

Each variant wraps the same target layers (kohya's defaults: 192 on SD 1.5, 722 on SDXL; nothing is
modified in the model); the figure is the best of --repeats passes. Also prints the largest difference in Sigma_0 = diag(s)/s_1 between
the old and the new route over all targets (random weights have a flat spectrum: the worst case).
"""

import argparse
import time

import torch
from diffusers import UNet2DConditionModel

import trilora.adapters.layers as layers
from trilora.adapters.inject import unet_targets
from trilora.adapters.layers import AdapterLayer
from trilora.adapters.math import flat
from trilora.device import resolve_device
from trilora.families.registry import FAMILIES


def sigma_init_all_values(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """The previous implementation: all min(out, in) singular values, then the first r."""
    values = torch.linalg.svdvals(flat(weight).float())
    values = values / values[0].clamp_min(1e-12)
    return torch.diag(values[:rank])


def wrap_all(unet, names: list[str], method: str, rank: int) -> tuple[float, list]:
    start = time.perf_counter()
    wrapped = [AdapterLayer(unet.get_submodule(name), method, rank, rank) for name in names]
    if wrapped and wrapped[0].down.weight.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--family", default="sd1", choices=list(FAMILIES), help="whose shipped UNet config")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    configs = FAMILIES[args.family].configs
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet")).to(device)
    unet.requires_grad_(False)
    names = unet_targets(unet)
    new_sigma = layers.sigma_init
    times = {"lora": [], "trilora (all singular values)": [], "trilora (top r)": []}
    for _ in range(args.repeats):
        times["lora"].append(wrap_all(unet, names, "lora", args.rank)[0])
        layers.sigma_init = sigma_init_all_values
        seconds, old = wrap_all(unet, names, "trilora", args.rank)
        times["trilora (all singular values)"].append(seconds)
        layers.sigma_init = new_sigma
        seconds, new = wrap_all(unet, names, "trilora", args.rank)
        times["trilora (top r)"].append(seconds)
    error = max(float((a.mid - b.mid).detach().abs().max()) for a, b in zip(old, new, strict=True))
    print(f"full-size {FAMILIES[args.family].title} UNet, {len(names)} target layers, rank {args.rank}, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    for name, values in times.items():
        print(f"  {name:32s} {min(values):8.2f} s")
    before, after = min(times["trilora (all singular values)"]), min(times["trilora (top r)"])
    print(f"  TriLoRA set-up, before / after: {before / after:.1f}x faster; "
          f"largest |Sigma_0 difference| {error:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
