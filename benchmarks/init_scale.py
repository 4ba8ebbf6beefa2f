"""How fast does the layer output move under AdamW in the first steps: TriLoRA versus LoRA.

Both adapters start at dW = 0 and train on the same regression (reach a random low-rank change of
the base layer) with the same lr and alpha. We print |y - y_base| / |y_base| after 1, 10 and 100
steps for each, and their ratio. trilora.adapters.math.up_init_std picks TriLoRA's Gaussian scale so
that the ratio is about 1 (see its docstring for the derivation).

    python benchmarks/init_scale.py
"""

import torch
from torch import nn

from trilora.adapters.layers import AdapterLayer

SHAPES = [("linear 320->320", nn.Linear, (320, 320)), ("linear 768->320", nn.Linear, (768, 320)),
          ("linear 1280->5120", nn.Linear, (1280, 5120)), ("conv1x1 640->640", nn.Conv2d, (640, 640, 1))]  # fmt: skip
CHECKPOINTS = (1, 10, 100)


def movement(kind, args, method, rank=16, lr=1e-4, seed=0) -> list[float]:
    torch.manual_seed(seed)
    base = kind(*args)
    x = torch.randn(64, args[0]) if kind is nn.Linear else torch.randn(4, args[0], 8, 8)
    with torch.no_grad():
        y_base = base(x)
        change = kind(*args, bias=False)
        target = y_base + 0.1 * change(x)
    torch.manual_seed(seed + 1)
    layer = AdapterLayer(base, method, rank=rank, alpha=rank)
    params = [p for p in layer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    out = []
    for step in range(1, max(CHECKPOINTS) + 1):
        loss = (layer(x) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in CHECKPOINTS:
            with torch.no_grad():
                out.append(((layer(x) - y_base).norm() / y_base.norm()).item())
    return out


def main() -> None:
    print(f"{'layer':<20} {'step':>5} {'lora':>10} {'trilora':>10} {'ratio':>7}")
    ratios = []
    for name, kind, args in SHAPES:
        lora, tri = movement(kind, args, "lora"), movement(kind, args, "trilora")
        for step, a, b in zip(CHECKPOINTS, lora, tri, strict=True):
            ratios.append(b / a)
            print(f"{name:<20} {step:>5} {a:>10.2e} {b:>10.2e} {b / a:>7.2f}")
    geo = torch.tensor(ratios).log().mean().exp().item()
    print(f"trilora/lora output movement, geometric mean: {geo:.2f}")


if __name__ == "__main__":
    main()
