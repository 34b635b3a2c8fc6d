#!/usr/bin/env python3
"""Reference-layout PyTorch checkpoints for `crt-trainer import` (trainer/tests/import_pytorch.rs).

Builds the reference codes' architectures in PyTorch with their state_dict key layout: a
`Sequential(NormalizeLayer, network)` whose NormalizeLayer keeps its constants as plain attributes
(so they are not in the file), saved as `torch.save({'arch', 'state_dict', 'epoch', 'optimizer'})`
in PyTorch's zip format, and the logits those models give on 100 fixed inputs, clean and under
fixed noise. Run once; the outputs are committed, so CI needs no torch:

    python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch safetensors numpy
    /tmp/torch-venv/bin/python scripts/make_reference_checkpoint.py --out trainer/tests/data/pytorch

Files (all float32, CPU, fixed seeds):

* cifar_resnet20.pth.tar: Cohen et al.'s cifar_resnet20 (BasicBlocks 16/32/64, 3 per stage) behind
  NormalizeLayer(mean 0.4914/0.4822/0.4465, std 0.2023/0.1994/0.2010), keys `1.conv1.weight`, ...;
  `arch` = 'cifar_resnet20', `epoch`, and an SGD `optimizer` state (a fresh one: no momentum
  buffers, to keep the file small). The weights: PyTorch's default initialization, randomized
  BatchNorm scales, shifts and running statistics, then 100 Adam steps (Gaussian augmentation, sigma 0.25) towards a random linear
  labelling of random images, only so that the predictions vary between inputs.
* cifar_resnet20_fork.pth.tar: the same network wrapped as DataParallel(Sequential(...)) by a fork
  whose normalization layer registers its constants as buffers (`module.0.means`,
  `module.0.sds`, non-reference values 0.5/0.5/0.5 and 0.25/0.25/0.25), keys `module.1.conv1.weight`.
* lenet.pth.tar: the MNIST LeNet of jh-jeong/smoothing-consistency (conv 20, conv 50, fc 500),
  no normalization layer, plain keys (`conv1.weight`).
* bad_unknown_key.pth.tar, bad_wrong_shape.pth.tar, bad_resnet110_partial.pth.tar: tiny
  state dicts that must be refused naming the key; legacy_format.pth.tar: a tiny checkpoint in the
  pre-1.6 (non-zip) format.
* reference_logits.safetensors: inputs and logits. Images are stored as bytes (x = byte / 255) and
  the noise as bytes too: noise = (byte - 128) / 128 = sigma * z with sigma = 0.25 and z = (byte -
  128) / 32 (a Gaussian draw rounded to 1/32, clipped to +-127/32), so both sides read exactly the
  same float32 inputs. `cifar.x`, `cifar.noise` [100, 3, 32, 32] u8; `mnist.x`, `mnist.noise`
  [100, 1, 28, 28] u8; `<model>.clean` = f(x), `<model>.noisy` = f(x + noise) [100, 10] f32 for
  <model> in resnet20, fork, lenet (eval mode). The metadata `reference` records the torch version.
"""

import argparse
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]
FORK_MEAN = [0.5, 0.5, 0.5]
FORK_STD = [0.25, 0.25, 0.25]
SIGMA = 0.25
N = 100


class NormalizeLayer(nn.Module):
    """The reference codes' layer: constants as plain attributes, not in the state_dict."""

    def __init__(self, means, sds):
        super().__init__()
        self.means = means
        self.sds = sds

    def forward(self, x):
        means = torch.tensor(self.means, dtype=x.dtype).view(1, -1, 1, 1)
        sds = torch.tensor(self.sds, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - means) / sds


class BufferNormalizeLayer(nn.Module):
    """A fork's layer: the same constants registered as buffers (`means`, `sds`)."""

    def __init__(self, means, sds):
        super().__init__()
        self.register_buffer("means", torch.tensor(means).view(-1))
        self.register_buffer("sds", torch.tensor(sds).view(-1))

    def forward(self, x):
        return (x - self.means.view(1, -1, 1, 1)) / self.sds.view(1, -1, 1, 1)


class Block(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus the input (1x1 conv + BN where the shape changes), ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of depth 6n+2 with the reference state_dict names."""

    def __init__(self, depth, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for stage, cout in enumerate([16, 32, 64]):
            blocks = []
            for i in range(n):
                blocks.append(Block(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.avg_pool2d(x, 8).flatten(1)
        return self.fc(x)


class LeNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def randomize_batchnorm(model, gen):
    """Non-trivial BatchNorm scale, shift and running statistics (the default ones are 1, 0, 0, 1)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.num_batches_tracked.fill_(1000)


def fit_random_teacher(model, shape, seed, steps=100, lr=1e-3):
    """A few Adam steps (train mode) towards the labels of a fixed random linear map of the image,
    only so that the predictions vary between inputs (an untrained network predicts one class)."""
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(10, shape[0] * shape[1] * shape[2] // 16, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x = images((64, *shape), gen).to(torch.float32) / 255
        y = (F.avg_pool2d(x - 0.5, 4).flatten(1) @ proj.T).argmax(1)
        opt.zero_grad()
        noisy = x + SIGMA * torch.randn(x.shape, generator=gen)  # Gaussian augmentation, as the references train
        F.cross_entropy(model(noisy), y).backward()
        opt.step()
    model.eval()


def images(shape, gen):
    """Byte images: a smooth random field plus pixel noise, so the logits vary between inputs."""
    n, c, h, w = shape
    coarse = torch.rand(n, c, h // 4, w // 4, generator=gen)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    fine = torch.rand(n, c, h, w, generator=gen)
    return (255 * (0.8 * smooth + 0.2 * fine)).round().clamp(0, 255).to(torch.uint8)


def noise_bytes(shape, gen):
    z = torch.randn(shape, generator=gen)
    return ((32 * z).round().clamp(-127, 127) + 128).to(torch.uint8)


def as_inputs(x_bytes, noise):
    x = x_bytes.to(torch.float32) / 255
    return x, x + (noise.to(torch.float32) - 128) / 128


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x).contiguous()


def save_checkpoint(path, arch, state_dict, epoch, optimizer=None, legacy=False):
    ckpt = {"arch": arch, "state_dict": state_dict, "epoch": epoch}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="trainer/tests/data/pytorch")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731

    # ResNet-20 behind the reference normalization (plain attributes).
    torch.manual_seed(20)
    net = CifarResNet(20)
    randomize_batchnorm(net, torch.Generator().manual_seed(21))
    resnet = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), net)
    fit_random_teacher(resnet, (3, 32, 32), 22)
    assert all(k.startswith("1.") for k in resnet.state_dict()), "NormalizeLayer must not add keys"
    sgd = torch.optim.SGD(resnet.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    save_checkpoint(out("cifar_resnet20.pth.tar"), "cifar_resnet20", resnet.state_dict(), 90, sgd)

    # The fork: DataParallel around Sequential(buffer normalization, the same network).
    fork = nn.DataParallel(nn.Sequential(BufferNormalizeLayer(FORK_MEAN, FORK_STD), net))
    keys = list(fork.state_dict())
    assert "module.0.means" in keys and "module.1.conv1.weight" in keys, keys[:4]
    save_checkpoint(out("cifar_resnet20_fork.pth.tar"), "cifar_resnet20", fork.state_dict(), 90)

    # LeNet (MNIST: no normalization layer), plain keys.
    torch.manual_seed(5)
    lenet = LeNet()
    fit_random_teacher(lenet, (1, 28, 28), 6)
    save_checkpoint(out("lenet.pth.tar"), "lenet", lenet.state_dict(), 30)

    # Tiny files the import must refuse, naming the key.
    w = net.conv1.weight.detach().clone()
    save_checkpoint(
        out("bad_unknown_key.pth.tar"),
        "cifar_resnet20",
        {"1.conv1.weight": w, "1.layer4.0.conv1.weight": torch.full((4, 4, 3, 3), 0.5)},
        1,
    )
    save_checkpoint(out("bad_wrong_shape.pth.tar"), "cifar_resnet20", {"1.conv1.weight": torch.full((16, 1, 3, 3), 0.5)}, 1)
    stem = {f"1.{k}": v for k, v in net.state_dict().items() if k.startswith(("conv1.", "bn1."))}
    save_checkpoint(out("bad_resnet110_partial.pth.tar"), "cifar_resnet110", stem, 1)
    save_checkpoint(out("legacy_format.pth.tar"), "lenet", {"conv1.bias": torch.zeros(20)}, 1, legacy=True)

    # Inputs and reference logits.
    gen = torch.Generator().manual_seed(100)
    cifar_x, cifar_noise = images((N, 3, 32, 32), gen), noise_bytes((N, 3, 32, 32), gen)
    mnist_x, mnist_noise = images((N, 1, 28, 28), gen), noise_bytes((N, 1, 28, 28), gen)
    tensors = {"cifar.x": cifar_x, "cifar.noise": cifar_noise, "mnist.x": mnist_x, "mnist.noise": mnist_noise}
    for name, model, (xb, nb) in [
        ("resnet20", resnet, (cifar_x, cifar_noise)),
        ("fork", fork, (cifar_x, cifar_noise)),
        ("lenet", lenet, (mnist_x, mnist_noise)),
    ]:
        clean, noisy = as_inputs(xb, nb)
        tensors[f"{name}.clean"] = logits(model, clean)
        tensors[f"{name}.noisy"] = logits(model, noisy)
    meta = {
        "torch": torch.__version__,
        "sigma": SIGMA,
        "x": "byte / 255",
        "noise": "(byte - 128) / 128 = sigma * z, z = (byte - 128) / 32",
        "normalization": {"resnet20": [CIFAR_MEAN, CIFAR_STD], "fork": [FORK_MEAN, FORK_STD], "lenet": None},
    }
    save_file(tensors, out("reference_logits.safetensors"), metadata={"reference": json.dumps(meta)})
    total = 0
    for f in sorted(os.listdir(args.out)):
        size = os.path.getsize(out(f))
        total += size
        print(f"{size:>10,}  {f}")
    print(f"{total:>10,}  total (torch {torch.__version__})")


if __name__ == "__main__":
    main()
