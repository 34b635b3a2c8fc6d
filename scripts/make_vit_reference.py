#!/usr/bin/env python3
"""Reference weights and logits of the PyTorch ViT twin, for trainer/tests/models_vit.rs.

Run once with a Python that has torch and safetensors; the outputs are committed (CI has no torch):

    /work/torch-venv/bin/python scripts/make_vit_reference.py --out trainer/tests/data/vit

The twin is `ViT` of scripts/torch_vit_reference.py. Files (float32, CPU, seed 0):

* vit_mnist.pth.tar: `torch.save({'arch': 'vit', 'epoch': 0, 'state_dict': ...})` of the 1x28x28
  twin, plain keys (`patch_embed.proj.weight`, ...), read by `crt-trainer import --from pytorch
  --arch vit`. Weights: PyTorch's default initialization, then LayerNorm scales and shifts and the
  position embeddings randomized (1 + 0.2 z, 0.2 z, 0.5 z), so that a wrong use of any of them shows.
* reference.safetensors:
  - `mnist.x` [8, 1, 28, 28] uniform [0, 1); `mnist.logits` [8, 10]: the MNIST twin in eval mode.
  - `cifar.*`: the tensors in which the 3x32x32 twin differs from the MNIST one
    (`cifar.patch_embed.proj.weight`, `cifar.patch_embed.proj.bias`, `cifar.pos_embed`,
    `cifar.head.weight`, `cifar.head.bias`); its blocks and final norm are the MNIST twin's (so the
    file stays small). It runs behind the CIFAR-10 reference normalization (mean 0.4914/0.4822/0.4465,
    std 0.2023/0.1994/0.2010), as CRT Lab's CIFAR-10 models do. `cifar.x` [4, 3, 32, 32],
    `cifar.logits` [4, 10].
  The metadata `reference` records the torch version.
"""

import argparse
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_vit_reference import ViT  # noqa: E402

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]
CIFAR_ONLY = ["patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "head.weight", "head.bias"]


def randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif name == "pos_embed":
                p.copy_(0.5 * torch.randn_like(p))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    mnist = ViT(1, 28)
    randomize(mnist)
    cifar = ViT(3, 32)
    randomize(cifar)
    shared = {k: v for k, v in mnist.state_dict().items() if k not in CIFAR_ONLY}
    cifar.load_state_dict(shared, strict=False)
    mnist.eval()
    cifar.eval()

    mnist_x = torch.rand(8, 1, 28, 28)
    cifar_x = torch.rand(4, 3, 32, 32)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        mnist_logits = mnist(mnist_x)
        cifar_logits = cifar((cifar_x - mean) / std)

    torch.save({"arch": "vit", "epoch": 0, "state_dict": mnist.state_dict()},
               os.path.join(args.out, "vit_mnist.pth.tar"))
    tensors = {"mnist.x": mnist_x, "mnist.logits": mnist_logits, "cifar.x": cifar_x, "cifar.logits": cifar_logits}
    sd = cifar.state_dict()
    for k in CIFAR_ONLY:
        tensors[f"cifar.{k}"] = sd[k]
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(args.out, "reference.safetensors"),
              metadata={"reference": f"torch {torch.__version__}"})
    print("mnist logits", mnist_logits[:2])
    print("cifar logits", cifar_logits[:2])


if __name__ == "__main__":
    main()
