"""The real packaged CIFAR-10 CNN and test images (slow: decodes 10k PNGs once)."""

import copy

import pytest
import torch

from depthcut.errors import CalibrationError
from depthcut.graph.groups import build_graph
from depthcut.methods.fine.reference import fine_reference
from depthcut.methods.fine.state import FineState, fine_units
from depthcut.methods.fine.surgery import materialize, state_params
from depthcut.vision import DATA_FILE, cifar_test_set, load_cifar_cnn, split_calibration, top1

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar():
    """Skipped (with the index's answer) only when no configured index has the data file:
    on 2026-12-05 PyPI lists no bigbench 1.0.0 file any more (issue filed for a new source)."""
    try:
        images = cifar_test_set()
    except CalibrationError as err:
        if f"no {DATA_FILE}" not in str(err):
            raise
        pytest.skip(f"CIFAR-10 test images unavailable: {err}")
    return load_cifar_cnn(), *images


def test_packaged_cnn_top1_on_the_full_test_set(cifar):
    model, images, labels = cifar
    assert images.shape == (10000, 3, 32, 32) and torch.bincount(labels).tolist() == [1000] * 10
    assert sum(p.numel() for p in model.parameters()) == 968_394
    assert top1(model, images, labels) == pytest.approx(0.8014, abs=0.001)


def test_calibration_and_evaluation_images_never_overlap(cifar):
    _, images, labels = cifar
    (cx, cy), (ex, ey) = split_calibration(images, labels)
    assert len(cx) == 1000 and len(ex) == 9000
    assert torch.bincount(cy).tolist() == [100] * 10


def test_fine_units_of_the_real_cnn_and_surgery_equals_reference(cifar):
    model, images, _ = cifar
    x = images[:16]
    graph = build_graph(model, (x,))
    units = fine_units(graph, model, include_excluded=True)
    assert [u.module for u in units if u.reason is None] == ["fc1", "fc2", "fc3"]
    assert sum(1 for u in units if u.reason and "spatial size" in u.reason) == 6
    state = FineState(graph)
    state.prune(graph.by_module("fc2").name)
    with torch.no_grad(), fine_reference(model, state):
        expected = model(x)
    pruned = materialize(state, copy.deepcopy(model))
    torch.testing.assert_close(pruned(x), expected)
    assert pruned.fc1.out_features == 512 and sum(p.numel() for p in pruned.parameters()) == (
        state_params(state, model)
    )
