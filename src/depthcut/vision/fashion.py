"""Fashion-MNIST and a small YOLO-style classifier trained on it once, offline.

* The data: Debian's ``dataset-fashion-mnist`` (60,000 training and 10,000 test images,
  28 × 28 grey, 10 balanced classes) in ``/usr/share/datasets/fashion-mnist`` — or the folder
  ``DEPTHCUT_FASHION_MNIST`` names — read from its four IDX files (gzip).
* The model (``FashionNet``, 60,666 parameters): the building blocks of YOLO's backbones —
  conv → batch norm → SiLU, residual bottlenecks inside CSP blocks that concatenate two
  branches, stride-2 downsampling — then global pooling and a linear classifier. Every
  same-size conv is a fine unit, so Algorithm 9 has residual, concat and channel-changing
  layers to choose among.
* ``trained_cnn()`` trains it once, deterministically (``train.Recipe``: 3 epochs, ≈2 CPU
  minutes on 2 cores), into depthcut's cache; concurrent callers wait for one training.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from depthcut.errors import CalibrationError
from depthcut.paths import cache_dir, locked
from depthcut.vision.train import Recipe, fit

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DATA_ENV = "DEPTHCUT_FASHION_MNIST"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MEAN, STD = 72.94, 90.02  # of the training pixels (0–255)
RECIPE = Recipe()
VERSION = "fashionnet-1"  # bump when the architecture changes: the cached weights are keyed by it


def data_dir() -> Path:
    """The folder holding the four IDX files; a one-line error with the fix when absent."""
    folder = Path(os.environ.get(DATA_ENV) or DEBIAN_DIR)
    missing = [name for pair in FILES.values() for name in pair if not (folder / name).is_file()]
    if missing:
        raise CalibrationError(
            f"Fashion-MNIST not found in {folder} (missing {missing[0]}): "
            f"apt-get install dataset-fashion-mnist, or set {DATA_ENV} to a folder with its files"
        )
    return folder


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (gzip) as a uint8 tensor of its declared shape."""
    with gzip.open(path) as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise CalibrationError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4]!r})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise CalibrationError(f"{path}: {body.size} bytes of data for shape {dims} (truncated?)")
    return torch.from_numpy(body.reshape(dims).copy())


def fashion_mnist(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 1, 28, 28] float, standardised; labels [N] int64) of ``split``."""
    if split not in FILES:
        raise ValueError(f"split {split!r}: choose one of {', '.join(FILES)}")
    folder = data_dir()
    images, labels = (read_idx(folder / name) for name in FILES[split])
    if len(images) != len(labels):
        raise CalibrationError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    return ((images.float() - MEAN) / STD).unsqueeze(1), labels.long()


class ConvBNAct(nn.Module):
    """YOLO's Conv: conv (same padding) → batch norm → SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """x + 3×3(1×1(x))."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 1)
        self.cv2 = ConvBNAct(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C3(nn.Module):
    """CSP block: cv3(cat(bottlenecks(cv1(x)), cv2(x)))."""

    def __init__(self, c: int, n: int):
        super().__init__()
        half = c // 2
        self.cv1 = ConvBNAct(c, half)
        self.cv2 = ConvBNAct(c, half)
        self.m = nn.Sequential(*[Bottleneck(half) for _ in range(n)])
        self.cv3 = ConvBNAct(2 * half, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class FashionNet(nn.Module):
    """stem 3×3 (16) → down (32) → C3 → down (64) → C3 → global pool → linear (10)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = ConvBNAct(1, 16, 3)
        self.down1 = ConvBNAct(16, 32, 3, 2)
        self.c3a = C3(32, 2)
        self.down2 = ConvBNAct(32, 64, 3, 2)
        self.c3b = C3(64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c3b(self.down2(self.c3a(self.down1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _cache_path(recipe: Recipe) -> Path:
    key = hashlib.sha256(f"{VERSION} {recipe}".encode()).hexdigest()[:12]
    return cache_dir("models") / f"fashion-cnn-{key}.pt"


def trained_cnn(recipe: Recipe = RECIPE, progress: bool = True) -> FashionNet:
    """``FashionNet`` trained on the 60,000 training images by ``recipe`` (eval mode): trained
    once and cached; a second process asking meanwhile waits for the first one's weights."""
    path = _cache_path(recipe)
    with locked(path.with_suffix(".lock")):
        if not path.exists():
            images, labels = fashion_mnist("train")
            torch.manual_seed(recipe.seed)
            model = fit(FashionNet(), images, labels, recipe, progress, "train Fashion-MNIST CNN")
            tmp = path.with_suffix(f".tmp-{os.getpid()}")
            torch.save(model.state_dict(), tmp)
            tmp.replace(path)
    model = FashionNet()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()
