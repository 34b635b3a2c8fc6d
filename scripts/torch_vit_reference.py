#!/usr/bin/env python3
"""The PyTorch twin of CRT Lab's `vit` and its timings beside `crt-trainer bench`.

The twin (class ViT) is written plainly, with the state_dict names the trainer uses:
  patch_embed.proj (Conv2d, kernel = stride = 4), pos_embed [1, L, 64] (no class token: the head
  reads the mean of the tokens), blocks.{i}.norm1, blocks.{i}.attn.qkv (fused q, k, v),
  blocks.{i}.attn.proj, blocks.{i}.norm2, blocks.{i}.mlp.fc1, blocks.{i}.mlp.fc2, norm, head.
  Pre-norm blocks, 4 heads of 16, MLP 64-128-64 with nn.GELU() (exact erf), nn.LayerNorm eps 1e-5.

Timings: the same work, CLI and JSON lines as ../shared/bench/torch_reference.py, for `--models vit`
(3x32x32 inputs, as the trainer's bench uses for vit). `crt-trainer bench` runs this script for vit.

Usage: torch_vit_reference.py [--models vit] [--modes train,certify] [--threads 2] [--device cpu|cuda]
                              [--train-batch vit=128] [--certify-batch 1000] [--runs 10]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PATCH, DIM, DEPTH, HEADS, MLP_HIDDEN = 4, 64, 4, 4, 128


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        b, l, d = x.shape
        hd = d // HEADS
        qkv = self.qkv(x).reshape(b, l, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * hd**-0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, l, d))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(DIM, MLP_HIDDEN)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(MLP_HIDDEN, DIM)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = Mlp()

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.proj = nn.Conv2d(channels, DIM, PATCH, stride=PATCH)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    def __init__(self, channels=3, side=32, classes=10):
        super().__init__()
        self.patch_embed = PatchEmbed(channels)
        self.pos_embed = nn.Parameter(torch.randn(1, (side // PATCH) ** 2, DIM) * 0.02)
        self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, classes)

    def forward(self, x):
        x = self.blocks(self.patch_embed(x) + self.pos_embed)
        return self.head(self.norm(x).mean(dim=1))


MODELS = {"vit": (lambda: ViT(3, 32), (3, 32, 32))}
DEVICE = torch.device("cpu")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, runs, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_train(model, shape, batch, runs):
    torch.manual_seed(0)
    x = torch.rand(batch, *shape, device=DEVICE)
    y = torch.randint(0, 10, (batch,), device=DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x + 0.25 * torch.randn_like(x)), y)
        loss.backward()
        opt.step()

    return median_time(step, runs)


def bench_certify(model, shape, batch, runs):
    torch.manual_seed(0)
    image = torch.rand(1, *shape, device=DEVICE)
    model.eval()

    def sample():
        with torch.inference_mode():
            noisy = image + 0.25 * torch.randn(batch, *shape, device=DEVICE)
            torch.bincount(model(noisy).argmax(1), minlength=10).tolist()

    return median_time(sample, runs)


def parse_pairs(text):
    return {k: int(v) for k, v in (p.split("=") for p in text.split(",") if p)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit")
    ap.add_argument("--modes", default="train,certify")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-batch", default="vit=128")
    ap.add_argument("--certify-batch", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    train_batch = parse_pairs(args.train_batch)
    for name in args.models.split(","):
        build, shape = MODELS[name]
        for mode in args.modes.split(","):
            model = build().to(DEVICE)
            batch = train_batch.get(name, 128) if mode == "train" else args.certify_batch
            bench = bench_train if mode == "train" else bench_certify
            med = bench(model, shape, batch, args.runs)
            print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "device": str(DEVICE),
                              "model": name, "mode": mode,
                              "batch": batch, "threads": args.threads, "median_s": round(med, 6),
                              "items_per_s": round(batch / med, 1), "runs": args.runs}), flush=True)


if __name__ == "__main__":
    main()
