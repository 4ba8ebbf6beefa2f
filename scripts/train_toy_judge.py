"""Train the toy judge (trilora/toy/judge.py) on fresh renders and write trilora/toy/judge.safetensors.

    .venv/bin/python scripts/train_toy_judge.py --seed 0

Renders a training set over all styles (render seeds below judge.TRAIN_SEED_LIMIT), trains with
mild augmentation so that the judge also reads imperfect generated images, then prints the
per-attribute accuracy of the saved fp16 weights on fresh renders (render seeds from
judge.EVAL_SEED_START), clean and augmented. The same seed and thread count give the same weights.
"""

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from trilora.toy.judge import (
    EVAL_SEED_START,
    TRAIN_SEED_LIMIT,
    WEIGHTS,
    Judge,
    judge_metadata,
    load_judge,
    targets,
)
from trilora.toy.metrics import attribute_accuracy
from trilora.toy.world import STYLES, render, sample_attributes


def render_set(count: int, attribute_seed: int, render_seeds) -> tuple[torch.Tensor, list]:
    """`count` renders over all styles: uint8 (N, 3, 32, 32) and their attributes."""
    rng = random.Random(attribute_seed)
    attributes = [sample_attributes(rng, STYLES) for _ in range(count)]
    images = np.stack(
        [np.asarray(render(a, seed)) for a, seed in zip(attributes, render_seeds, strict=False)]
    )
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), attributes


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild damage like a generator's: shifts of up to 2 px, brightness/contrast jitter, noise, slight blur.

    x: float (N, 3, 32, 32) in [-1, 1].
    """
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    shifts = torch.randint(0, 5, (n, 2), generator=generator)
    x = torch.stack([padded[i, :, dy : dy + 32, dx : dx + 32] for i, (dy, dx) in enumerate(shifts.tolist())])
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    x = x * (1 + 0.16 * (u(n, 1, 1, 1) - 0.5)) + 0.16 * (
        u(n, 1, 1, 1) - 0.5
    )  # contrast ±8 %, brightness ±0.08
    kernel = torch.tensor([0.25, 0.5, 0.25])
    kernel = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    amount = u(n, 1, 1, 1) * (u(n, 1, 1, 1) < 0.3)  # a third of the images get some blur
    x = x + amount * (blurred - x)
    x = x + 0.05 * u(n, 1, 1, 1) * torch.randn(x.shape, generator=generator)  # noise with σ up to 0.05
    return x.clamp(-1, 1)


def evaluate(judge: Judge, images: torch.Tensor, attributes: list, generator=None) -> dict[str, float]:
    x = images.float() / 127.5 - 1
    if generator is not None:
        x = augment(x, generator)
    return attribute_accuracy(judge.predict(x), attributes)


def show(accuracy: dict[str, float]) -> str:
    return "  ".join(f"{name} {100 * value:.2f} %" for name, value in accuracy.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the training set, the weights and the augmentation"
    )
    parser.add_argument("--train-count", type=int, default=30_000, help="renders in the training set")
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--lr", type=float, default=3e-3, help="peak learning rate (AdamW, warm-up then cosine)"
    )
    parser.add_argument("--eval-count", type=int, default=2000, help="fresh renders to score the judge on")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=WEIGHTS, help="where to write the fp16 weights")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    seed_rng = random.Random(args.seed)
    render_seeds = [seed_rng.randrange(TRAIN_SEED_LIMIT) for _ in range(args.train_count)]
    train_images, train_attributes = render_set(args.train_count, args.seed, render_seeds)
    train_targets = targets(train_attributes)
    eval_images, eval_attributes = render_set(
        args.eval_count, args.seed + 1, range(EVAL_SEED_START, EVAL_SEED_START + args.eval_count)
    )
    print(
        f"rendered {args.train_count} + {args.eval_count} images in {time.time() - start:.1f} s", flush=True
    )

    judge = Judge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    generator = torch.Generator().manual_seed(args.seed)
    judge.train()
    for step in range(args.steps):
        index = torch.randint(0, args.train_count, (args.batch_size,), generator=generator)
        x = augment(train_images[index].float() / 127.5 - 1, generator)  # (B, 3, 32, 32)
        logits = judge(x)
        loss = sum(F.cross_entropy(logits[name], train_targets[name][index]) for name in logits)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:.0f} s", flush=True)
    train_seconds = time.time() - start

    state = {
        name: (tensor.half() if tensor.is_floating_point() else tensor).contiguous()
        for name, tensor in judge.state_dict().items()
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.output), metadata=judge_metadata())
    saved = load_judge(args.output)
    print(
        f"trained in {train_seconds:.0f} s; wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB, fp16)"
    )
    print(f"fresh renders, clean:     {show(evaluate(saved, eval_images, eval_attributes))}")
    augmented = evaluate(saved, eval_images, eval_attributes, torch.Generator().manual_seed(args.seed + 1))
    print(f"fresh renders, augmented: {show(augmented)}")


if __name__ == "__main__":
    main()
