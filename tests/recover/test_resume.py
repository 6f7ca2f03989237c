"""A recovery killed with SIGKILL resumes from its last checkpoint to the weights of an
uninterrupted run; its --out never appears before the end; a resume of another run is refused."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer

from support import run

TRAIN = ["--max-steps", "12", "--eval-every", "2", "--train-seq-len", "16"]
TRAIN += ["--train-batch-size", "2", "--window", "32", "--max-windows", "2", "--patience", "9"]

# the CLI in a child process that stops itself (SIGKILL, no cleanup) right after the
# Trainer wrote the checkpoint of step 4
KILLED = """
import os, signal, sys
from transformers import Trainer
orig = Trainer._save_checkpoint
def save(self, *a, **k):
    orig(self, *a, **k)
    if self.state.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
Trainer._save_checkpoint = save
from depthcut.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def run_dir(block_run):
    return block_run


def _argv(run_dir, out, text, method, *extra):
    lr = "1e-2" if method == "lora" else "2e-3"
    return [
        "recover", run_dir, "--out", out, "--method", method, "--lr", lr, "--calib", text,
        "--eval-text", text, *TRAIN, *extra,
    ]  # fmt: skip


def _weights(out):
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(
    capsys, monkeypatch, tmp_path, run_dir, pattern_file, method
):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    code, _, err = run(capsys, *_argv(run_dir, whole, pattern_file, method))
    assert code == 0, err
    argv = [str(a) for a in _argv(run_dir, cut, pattern_file, method)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", KILLED, *argv], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not cut.exists()  # --out stays absent until the run completes
    ckpt = tmp_path / "cut.checkpoints"
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    steps = []
    original_step = Trainer.training_step
    monkeypatch.setattr(
        Trainer, "training_step", lambda *a, **k: steps.append(1) or original_step(*a, **k)
    )
    code, _, err = run(capsys, *_argv(run_dir, cut, pattern_file, method, "--resume"))
    assert code == 0, err
    assert len(steps) == 8  # the resumed run continued from step 4, not from the start
    assert not ckpt.exists()  # removed once the output is saved
    a, b = _weights(whole), _weights(cut)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)
    rows_a = json.loads((whole / "recovery.json").read_text())
    rows_b = json.loads((cut / "recovery.json").read_text())
    assert rows_b["steps"] == rows_a["steps"] == 12
    assert [r["step"] for r in rows_b["rows"]] == [0, 2, 4, 6, 8, 10, 12]
    torch.testing.assert_close(
        torch.tensor(rows_b["train_loss"]), torch.tensor(rows_a["train_loss"]), rtol=0, atol=1e-6
    )
    # the training changed the weights (a trainer doing nothing would pass the rest)
    pruned = load_file(str(run_dir / "model.safetensors"))
    assert any(not torch.equal(pruned[n], a[n]) for n in a)


def test_resume_refusals(capsys, tmp_path, run_dir, pattern_file):
    out = tmp_path / "o"
    code, _, err = run(capsys, *_argv(run_dir, out, pattern_file, "full", "--resume"))
    assert code == 2 and "nothing to resume" in err and not out.exists()
    ckpt = tmp_path / "o.checkpoints"
    assert not ckpt.exists()
    ckpt.mkdir()
    stamp = {"run": str(run_dir.resolve()), "teacher": None, "recover": {}}
    (ckpt / "depthcut-recover.json").write_text(json.dumps(stamp))
    code, _, err = run(capsys, *_argv(run_dir, out, pattern_file, "full"))
    assert code == 2 and "pass --resume to continue it" in err
    code, _, err = run(capsys, *_argv(run_dir, out, pattern_file, "full", "--resume"))
    assert code == 2 and "another recovery setting (method: None → full" in err
    stamp["run"] = "/elsewhere/pruned"
    (ckpt / "depthcut-recover.json").write_text(json.dumps(stamp))
    code, _, err = run(capsys, *_argv(run_dir, out, pattern_file, "full", "--resume"))
    assert code == 2 and "another run (/elsewhere/pruned here" in err
    assert not out.exists() and sorted(p.name for p in ckpt.iterdir()) == ["depthcut-recover.json"]
