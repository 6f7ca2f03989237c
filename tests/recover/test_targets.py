"""Sparse distillation: stored top-k teacher targets, their loss, their file and its checks."""

import json

import pytest
import torch

import depthcut as dc
from depthcut.errors import ConfigError
from depthcut.losses import kd_loss, sparse_kd_loss
from depthcut.recovery.targets import (
    compute_targets,
    fingerprint,
    load_targets,
    stream_targets,
    top_k,
)
from support import prune_args, run
from tiny import VOCAB, tiny_calib, tiny_llama, tiny_tokenizer


def test_top_k_and_tail_hold_all_the_mass():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, VOCAB) * 3
    idx, lp, tail = top_k(logits, 8)
    full = torch.log_softmax(logits.double(), -1)
    assert lp.dtype == torch.float32  # stored as float32: compared at float32's tolerance
    torch.testing.assert_close(lp, full.gather(-1, idx).float())
    expected = torch.log1p(-full.gather(-1, idx).exp().sum(-1))
    torch.testing.assert_close(tail.double(), expected, rtol=1e-5, atol=1e-6)
    assert (idx[..., :1] == logits.argmax(-1, keepdim=True)).all()


def test_sparse_kd_is_the_full_kl_at_full_k_and_a_lower_bound_below():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 6, VOCAB) * 2, torch.randn(2, 6, VOCAB) * 2
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0  # padding is left out
    full = kd_loss(student, teacher, mask)
    exact = sparse_kd_loss(student, *top_k(teacher, VOCAB), mask)
    torch.testing.assert_close(exact, full, rtol=1e-5, atol=1e-6)
    partial = [float(sparse_kd_loss(student, *top_k(teacher, k), mask)) for k in (4, 16, 64)]
    assert partial[0] < partial[1] < partial[2] < float(full)  # more of the KL seen as k grows
    assert float(sparse_kd_loss(teacher, *top_k(teacher, 16), mask)) == pytest.approx(0, abs=1e-6)
    student.requires_grad_(True)
    sparse_kd_loss(student, *top_k(teacher, 16), mask).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_targets_round_trip_and_refusals(tmp_path):
    model, data, tok = tiny_llama(layers=2), tiny_calib(n=4, length=12), tiny_tokenizer()
    meta = fingerprint(tok, data, 8)
    targets = compute_targets(model, data, 8, meta, progress=False)
    assert targets.indices.shape == (4, 12, 8) and targets.tail.shape == (4, 12)
    assert targets.bytes_per_token() == 8 * (4 + 2) + 4
    path = targets.save(tmp_path / "t.safetensors")
    back = load_targets(path, meta)
    for name in ("indices", "logprobs", "tail"):
        assert torch.equal(getattr(back, name), getattr(targets, name))
    with torch.no_grad():
        logits = model(**data.batches()[0]).logits
    first = targets.logprobs[: len(logits)].float()
    torch.testing.assert_close(first, top_k(logits, 8)[1], atol=4e-3, rtol=0)
    other_text = fingerprint(tok, tiny_calib(n=4, length=12, seed=9), 8)
    with pytest.raises(ConfigError, match="another calibration text"):
        load_targets(path, other_text)
    with pytest.raises(ConfigError, match="hold top-8 tokens, not top-16"):
        load_targets(path, fingerprint(tok, data, 16))
    with pytest.raises(ConfigError, match="another tokenizer"):
        load_targets(path, meta | {"tokenizer": "0" * 16})
    assert not list(tmp_path.glob("*.partial"))


def test_streamed_teacher_equals_the_teacher_in_memory(tiny_dir):
    model, tok = dc.load_model(str(tiny_dir))
    data = tiny_calib(n=4, length=12)
    meta = fingerprint(tok, data, 8)
    live = compute_targets(model, data, 8, meta, progress=False)
    streamed = stream_targets(tiny_dir, data, 8, meta, progress=False)
    assert torch.equal(streamed.indices, live.indices)
    torch.testing.assert_close(streamed.logprobs, live.logprobs, rtol=0, atol=1e-3)
    torch.testing.assert_close(streamed.tail, live.tail, rtol=1e-4, atol=1e-5)


TRAIN = ["--max-steps", "4", "--eval-every", "2", "--train-seq-len", "16"]
TRAIN += ["--train-batch-size", "2", "--window", "32", "--max-windows", "2"]


def test_recover_cli_stores_reuses_and_refuses_targets(capsys, tmp_path, tiny_dir, pattern_file):
    pruned = tmp_path / "pruned"
    code, _, err = run(capsys, *prune_args(tiny_dir, pruned, pattern_file, "--units", "block"))
    assert code == 0, err
    file = tmp_path / "top16.safetensors"
    base = ["recover", pruned, "--loss", "kd", "--teacher-topk", "16", "--calib", pattern_file]
    base += ["--eval-text", pattern_file, "--teacher-targets", file, *TRAIN]
    code, _, err = run(capsys, *base, "--out", tmp_path / "a", "--stream-teacher")
    assert code == 0, err
    history = json.loads((tmp_path / "a" / "recovery.json").read_text())
    assert history["teacher_targets"] == {"k": 16, "bytes_per_token": 16 * 6 + 4}
    stored = file.stat().st_mtime_ns
    code, _, err = run(capsys, *base, "--out", tmp_path / "b")
    assert code == 0, err
    assert file.stat().st_mtime_ns == stored  # read, not recomputed
    again = json.loads((tmp_path / "b" / "recovery.json").read_text())
    assert again["train_loss"] == history["train_loss"]  # the same targets, the same run
    code, _, err = run(capsys, *base, "--out", tmp_path / "c", "--train-seq-len", "12")
    assert code == 2 and "another number or length of training windows" in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.checkpoints").exists()
