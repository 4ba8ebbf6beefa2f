"""Train the toy world's miniature base model from scratch and write it to trilora/toy/base/.

    nohup .venv/bin/python scripts/pretrain_toy_base.py > runs/pretrain_toy.log 2>&1 &

Stages, each resumable (run the same command again after a crash; it picks up the last saved
state, and a finished stage is skipped):
  1. renders: `--images` random renders of the four base styles with their captions;
  2. vae: AutoencoderKL on the renders (MSE + 1e-6 KL), then its latent scale 1/std;
  3. unet: UNet and CLIP text encoder together on the cached latents (SD's epsilon loss, 10 %
     empty captions for classifier-free guidance, EMA weights);
  4. export: the EMA weights in fp16 as a diffusers folder, then the judge's quality check on 200
     prompts with fixed seeds, written beside the weights as quality.json.
Every step draws its batch, noise and timesteps from a generator seeded by (seed, stage, step), so
a resumed run equals an uninterrupted one on the same machine and thread count.
"""

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trilora.families.sd1 import CONFIGS as SD15_DIR  # noqa: E402
from trilora.toy.base import TOY_BASE, build_toy_pipeline  # noqa: E402
from trilora.toy.world import BASE_STYLES, caption, render, sample_attributes  # noqa: E402

STAGES = {"vae": 1, "unet": 2}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/pretrain_toy"), help="state and caches")
    p.add_argument("--out", type=Path, default=TOY_BASE, help="where the finished model goes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--unet-steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--eval-prompts", type=int, default=200)
    p.add_argument("--save-every", type=float, default=120.0, help="seconds between saved states")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def log(message):
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def step_generator(seed, stage, step):
    return torch.Generator().manual_seed(seed * 1_000_003 + STAGES[stage] * 100_000_007 + step)


def lr_at(step, steps, lr, warmup=200):
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def make_renders(args):
    path = args.work / "renders.pt"
    if path.exists():
        return torch.load(path)
    log(f"rendering {args.images} images of {', '.join(BASE_STYLES)}")
    rng = random.Random(args.seed)
    pixels, captions = [], []
    for _ in range(args.images):
        a = sample_attributes(rng, BASE_STYLES)
        pixels.append(np.asarray(render(a, rng.getrandbits(32))))
        captions.append(caption(a))
    data = {
        "pixels": torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous(),
        "captions": captions,
    }
    torch.save(data, path)
    return data


def train_stage(args, stage, modules, steps, lr, batch_loss):
    """A flat loop over `steps` with AdamW and cosine decay; saves (modules, optimizer, EMA, step) atomically."""
    state_path = args.work / f"{stage}-state.pt"
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema = {name: copy.deepcopy(m).requires_grad_(False) for name, m in modules.items()}
    step = 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        for name, m in modules.items():
            m.load_state_dict(state["modules"][name])
            ema[name].load_state_dict(state["ema"][name])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        log(f"{stage}: resumed at step {step}")
    if step >= steps:
        return ema
    for m in modules.values():
        m.train()

    def save():
        state = {
            "modules": {n: m.state_dict() for n, m in modules.items()},
            "ema": {n: m.state_dict() for n, m in ema.items()},
            "optimizer": optimizer.state_dict(),
            "step": step,
        }
        torch.save(state, state_path.with_suffix(".tmp"))
        state_path.with_suffix(".tmp").replace(state_path)

    saved, started, running = time.monotonic(), time.monotonic(), []
    while step < steps:
        try:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, lr)
            loss = batch_loss(step_generator(args.seed, stage, step))
        except KeyboardInterrupt:  # before this step changed anything: save and stop cleanly
            save()
            log(f"{stage}: interrupted, saved step {step}; run the same command to continue")
            raise SystemExit(130) from None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, m in modules.items():
                for e, p in zip(ema[name].parameters(), m.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        step += 1
        running.append(loss.item())
        if step % 100 == 0 or step == steps:
            rate = (time.monotonic() - started) / len(running)
            log(f"{stage} step {step}/{steps} loss {np.mean(running):.4f} ({rate:.2f} s/step)")
            running, started = [], time.monotonic()
        if time.monotonic() - saved > args.save_every or step == steps:
            save()
            saved = time.monotonic()
    return ema


def train_vae(args, pipe, data):
    vae = pipe.vae.to(args.device)
    pixels = data["pixels"]

    def batch_loss(g):
        index = torch.randint(len(pixels), (args.vae_batch,), generator=g)
        x = (pixels[index].float() / 127.5 - 1).to(args.device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(args.device)
        return F.mse_loss(vae.decode(z).sample, x) + 1e-6 * posterior.kl().mean()

    return train_stage(args, "vae", {"vae": vae}, args.vae_steps, args.vae_lr, batch_loss)["vae"]


@torch.no_grad()
def encode_latents(args, vae, data):
    path = args.work / "latents.pt"
    if path.exists():
        return torch.load(path)
    vae.eval()
    means = []
    for i in range(0, len(data["pixels"]), 256):
        x = (data["pixels"][i : i + 256].float() / 127.5 - 1).to(args.device)
        means.append(vae.encode(x).latent_dist.mean.cpu())
    means = torch.cat(means)
    scale = float(1 / means.std())
    x = (data["pixels"][:256].float() / 127.5 - 1).to(args.device)
    error = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x).item()
    log(
        f"latents {tuple(means.shape)}, std {means.std():.4f} -> scaling factor {scale:.4f}; recon MSE {error:.5f}"
    )
    latents = {"latents": means * scale, "scale": scale, "recon_mse": error}
    torch.save(latents, path)
    return latents


def train_unet(args, pipe, data, latents):
    unet, text_encoder = pipe.unet.to(args.device), pipe.text_encoder.to(args.device)
    scheduler = DDPMScheduler.from_pretrained(SD15_DIR / "scheduler")
    tokenize = pipe.tokenizer
    ids = tokenize(
        data["captions"], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    empty = tokenize([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids, z = ids.input_ids, latents["latents"]
    alphas = scheduler.alphas_cumprod

    def batch_loss(g):
        index = torch.randint(len(z), (args.batch,), generator=g)
        drop = torch.rand(args.batch, generator=g) < args.caption_dropout
        tokens = torch.where(drop[:, None], empty, ids[index])
        noise = torch.randn(z[index].shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z[index] + (1 - a).sqrt() * noise
        hidden = text_encoder(tokens.to(args.device))[0]
        prediction = unet(noisy.to(args.device), t.to(args.device), hidden).sample
        return F.mse_loss(prediction, noise.to(args.device))

    modules = {"unet": unet, "text_encoder": text_encoder}
    return train_stage(args, "unet", modules, args.unet_steps, args.lr, batch_loss)


def export(args, vae, ema, latents):
    pipe = build_toy_pipeline(args.seed)
    pipe.vae.load_state_dict(vae.state_dict())
    pipe.unet.load_state_dict(ema["unet"].state_dict())
    pipe.text_encoder.load_state_dict(ema["text_encoder"].state_dict())
    pipe.vae.register_to_config(scaling_factor=latents["scale"])
    pipe.to(torch.float16).save_pretrained(args.out, safe_serialization=True)
    log(f"wrote {args.out}")
    return {
        "command": "python scripts/pretrain_toy_base.py " + " ".join(sys.argv[1:]),
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("work", "out", "device")},
        "vae_recon_mse": latents["recon_mse"],
    }


def evaluate(args, record):
    from trilora.base.load import load_pipeline
    from trilora.toy.evaluate import generate_images, prompt_set, reference_renders, score
    from trilora.toy.judge import load_judge

    pipe = load_pipeline(args.out)
    pipe.set_progress_bar_config(disable=True)
    wanted = prompt_set(args.eval_prompts, BASE_STYLES, seed=args.seed)
    images = generate_images(pipe, wanted, seed=0)
    result = score(load_judge(), images, wanted, reference=reference_renders(wanted))
    log(f"quality on {len(wanted)} prompts: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    record["quality"] = {"prompts": len(wanted), **{k: round(v, 4) for k, v in result.items()}}
    (args.out / "quality.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv=None):
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    pipe = build_toy_pipeline(args.seed)
    data = make_renders(args)
    vae = train_vae(args, pipe, data)
    latents = encode_latents(args, vae, data)
    ema = train_unet(args, pipe, data, latents)
    record = export(args, vae, ema, latents)
    evaluate(args, record)


if __name__ == "__main__":
    main()
