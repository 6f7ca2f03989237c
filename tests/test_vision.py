"""Image classifiers: Fashion-MNIST (Debian's files, read here), the YOLO-style FashionNet
trained on it, Algorithm 9 on real images; the packaged CIFAR-10 CNN's structure."""

import copy
import gzip

import pytest
import torch
import torch.nn.functional as F

import depthcut as dc
from depthcut.errors import CalibrationError
from depthcut.graph.groups import build_graph
from depthcut.methods.fine.reference import fine_reference
from depthcut.methods.fine.state import FineState, fine_units
from depthcut.methods.fine.surgery import materialize, state_params
from depthcut.vision import (
    FashionNet,
    Recipe,
    fashion_mnist,
    fit,
    load_cifar_cnn,
    top1,
    trained_cnn,
)
from depthcut.vision import fashion as fashion_module
from depthcut.vision.fashion import FILES, read_idx
from support import missing, require_module
from tiny_cnn import randomize_bn

# measured with this file's recipe on 2026-12-05 (2 threads; tolerance for other thread counts)
TRAINED_TOP1 = 0.9063
A9_UNITS_25 = ["c3b.m.1.cv2.conv", "c3b.m.0.cv2.conv"]


def write_idx(path, array: torch.Tensor, magic: bytes | None = None) -> None:
    head = magic or bytes([0, 0, 8, array.dim()])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(head + dims + array.to(torch.uint8).numpy().tobytes())


def fake_folder(folder, n_train: int = 20, n_test: int = 10) -> None:
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = FILES[split]
        write_idx(folder / images, torch.arange(n * 784).view(n, 28, 28) % 256)
        write_idx(folder / labels, torch.arange(n) % 10)


def test_read_idx_gives_the_declared_shape_and_refuses_bad_files(tmp_path):
    data = torch.arange(12, dtype=torch.uint8).view(3, 2, 2)
    write_idx(tmp_path / "ok.gz", data)
    assert torch.equal(read_idx(tmp_path / "ok.gz"), data)
    write_idx(tmp_path / "float.gz", data, magic=bytes([0, 0, 0x0D, 3]))
    with pytest.raises(CalibrationError, match="not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "float.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as handle:
        handle.write(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(CalibrationError, match="3 bytes of data for shape \\[5\\]"):
        read_idx(tmp_path / "short.gz")


def test_missing_data_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHCUT_FASHION_MNIST", str(tmp_path))
    with pytest.raises(CalibrationError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("test")
    with pytest.raises(ValueError, match="choose one of train, test"):
        fashion_mnist("validation")


def test_images_are_standardised_nchw_with_their_labels(tmp_path, monkeypatch):
    fake_folder(tmp_path)
    monkeypatch.setenv("DEPTHCUT_FASHION_MNIST", str(tmp_path))
    images, labels = fashion_mnist("train")
    assert images.shape == (20, 1, 28, 28) and images.dtype == torch.float32
    assert labels.tolist() == [i % 10 for i in range(20)] and labels.dtype == torch.int64
    raw = float(torch.arange(20 * 784)[5] % 256)  # pixel 5 of image 0
    assert images[0, 0, 0, 5].item() == pytest.approx((raw - 72.94) / 90.02)


def test_fit_is_deterministic_and_learns(tmp_path):
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(256) % 10
    images = torch.randn(256, 1, 28, 28, generator=gen) + labels.view(-1, 1, 1, 1) * 0.5
    recipe = Recipe(epochs=4, lr=1e-2, batch=32)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(fit(FashionNet(), images, labels, recipe, progress=False))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(0)
    other = fit(FashionNet(), images, labels, Recipe(4, 1e-2, 32, seed=1), progress=False)
    assert not torch.equal(other.stem.conv.weight, models[0].stem.conv.weight)  # data order
    torch.manual_seed(0)
    assert top1(FashionNet().eval(), images, labels) < 0.2 < 0.8 < top1(models[0], images, labels)
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(FashionNet(), images[:8], labels[:8], recipe)


def test_fashionnet_units_and_removals_equal_the_reference():
    model = randomize_bn(FashionNet(), seed=1)
    x = torch.randn(4, 1, 28, 28)
    graph = build_graph(model, (x,))
    units = fine_units(graph, model, include_excluded=True)
    excluded = {u.module: u.reason for u in units if u.reason}
    assert excluded == {
        "down1.conv": "changes the spatial size (28, 28) → (14, 14)",
        "down2.conv": "changes the spatial size (14, 14) → (7, 7)",
    }
    assert len(units) == 18 and sum(p.numel() for p in model.parameters()) == 60_666
    state = FineState(graph)
    for module in ("c3b.m.1.cv2.conv", "c3b.cv2.conv", "stem.conv"):  # residual, concat, first
        state.prune(graph.by_module(module).name)
    with torch.no_grad(), fine_reference(model, state):
        expected = model(x)
    pruned = materialize(state, copy.deepcopy(model))
    torch.testing.assert_close(pruned(x), expected)
    assert sum(p.numel() for p in pruned.parameters()) == state_params(state, model) < 60_666


@pytest.fixture(scope="module")
def fashion():
    try:
        return fashion_mnist("train"), fashion_mnist("test")
    except CalibrationError as err:
        missing(str(err))


@pytest.mark.slow
def test_fashion_mnist_from_debian(fashion):
    (train_x, train_y), (test_x, test_y) = fashion
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train_y).tolist() == [6000] * 10
    assert torch.bincount(test_y).tolist() == [1000] * 10
    assert test_y[:5].tolist() == [9, 2, 1, 1, 6]  # ankle boot, pullover, trouser, trouser, shirt
    assert train_x.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert train_x.std().item() == pytest.approx(1.0, abs=1e-3)


@pytest.fixture(scope="module")
def trained(fashion):
    return trained_cnn(progress=False)


@pytest.mark.slow
def test_trained_cnn_top1_and_it_is_trained_once(fashion, trained, monkeypatch):
    _, (test_x, test_y) = fashion
    assert top1(trained, test_x, test_y) == pytest.approx(TRAINED_TOP1, abs=0.006)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cached weights")

    monkeypatch.setattr(fashion_module, "fit", no_training)
    again = trained_cnn(progress=False)
    for a, b in zip(trained.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_algorithm9_on_real_images_then_recovery(fashion, trained):
    (train_x, train_y), (test_x, test_y) = fashion
    batches = [(train_x[i : i + 250], train_y[i : i + 250]) for i in range(0, 2000, 250)]
    plan = dc.cnn_plan(trained, train_x[:2], batches, F.cross_entropy, 0.25, progress=False)
    assert [a.path for a in plan.actions] == A9_UNITS_25
    assert plan.fraction() == pytest.approx(0.3059, abs=1e-4)
    pruned = dc.apply(trained, plan)
    graph = build_graph(trained, (test_x[:2],))
    state = FineState(graph)
    for path in A9_UNITS_25:
        state.prune(graph.by_module(path).name)
    with torch.no_grad(), fine_reference(trained, state):
        expected = trained(test_x[:64])
    torch.testing.assert_close(pruned(test_x[:64]), expected)
    before = top1(pruned, test_x, test_y)
    fit(pruned, train_x[:12000], train_y[:12000], Recipe(epochs=1, lr=1e-3, seed=1), False)
    after = top1(pruned, test_x, test_y)
    assert after > before + 0.5 and after > TRAINED_TOP1 - 0.05


@pytest.mark.slow
def test_algorithm9_beats_ranking_once_at_the_same_budget(fashion, trained):
    """Re-scoring after every removal (Algorithm 9) against the same Taylor importance ranked
    once on the dense network: at 35% A9 removes more parameters and, after the same short
    recovery, is more accurate (measured 79.41% at 38.3% removed vs 77.50% at 37.6%)."""
    (train_x, train_y), (test_x, test_y) = fashion
    batches = [(train_x[i : i + 250], train_y[i : i + 250]) for i in range(0, 2000, 250)]
    top = {}
    for rescore in (True, False):
        plan = dc.cnn_plan(
            trained, train_x[:2], batches, F.cross_entropy, 0.35, rescore, progress=False
        )
        pruned = dc.apply(trained, plan)
        fit(pruned, train_x[:12000], train_y[:12000], Recipe(epochs=1, lr=1e-3, seed=1), False)
        top[rescore] = (plan.removed_params, top1(pruned, test_x, test_y))
    assert top[True][0] >= top[False][0] and top[True][1] > top[False][1] + 0.01, top


@pytest.mark.slow
def test_packaged_cifar_cnn_fine_units_and_surgery_equals_reference():
    require_module("cifar_10_model", "cifar-10-model (make setup installs it)")
    model = load_cifar_cnn()
    assert sum(p.numel() for p in model.parameters()) == 968_394
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
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
