"""A library call prints nothing (its notes go to the ``depthcut`` logger, which the CLI
shows), leaves the caller's environment as it was, and keeps the cause of a load error."""

import os
import subprocess
import sys
from pathlib import Path

from depthcut.eval.zeroshot import OFFLINE_ENV, offline_env
from depthcut.models import load_model
from support import run
from tiny import save_tiny

TESTS = Path(__file__).parent
SCRIPT = """
import sys, logging
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import depthcut as dc
from depthcut.io import prepare_output
from tiny import tiny_calib, tiny_llama
if sys.argv[3] == "logging":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
root = Path(sys.argv[2])
model, calib = tiny_llama(layers=4), tiny_calib()
cfg = dc.PruneConfig(budget=dc.Budget(params=0.2, count="non_embedding"))
pruned, plan, _ = dc.prune(model, cfg, calib, progress=False)
dc.save(pruned, plan, root / "run")
(root / ".again.tmp-999999999-x").mkdir()  # a killed writer's folder
prepare_output(root / "again", overwrite=False)
"""


def library_run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    (tmp_path / mode).mkdir()
    argv = [sys.executable, "-c", SCRIPT, str(TESTS), str(tmp_path / mode), mode]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_a_library_call_prints_nothing_unless_logging_is_configured(tmp_path):
    quiet = library_run(tmp_path, "quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert (quiet.stdout, quiet.stderr) == ("", "")
    shown = library_run(tmp_path, "logging")
    lines = shown.stderr.splitlines()
    assert any(line.startswith("depthcut: verified run: ") for line in lines), shown.stderr
    assert "depthcut: removed .again.tmp-999999999-x, left by a killed run" in lines


def test_the_environment_is_left_as_it_was(tmp_path, monkeypatch):
    save_tiny(tmp_path / "m")
    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    load_model(str(tmp_path / "m"))
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    with offline_env():
        assert all(os.environ[key] == "1" for key in OFFLINE_ENV)
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["HF_DATASETS_OFFLINE"] == "0"


def test_verbose_shows_what_a_load_error_came_from(capsys, tmp_path):
    folder = tmp_path / "broken"
    save_tiny(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    capsys.readouterr()
    code, _, err = run(capsys, "inspect", folder)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"depthcut: error: {folder}: cannot load its weights")
    code, _, err = run(capsys, "inspect", folder, "--verbose")
    assert code == 2 and "Traceback (most recent call last)" in err


RECOVER = """
import sys
sys.path.insert(0, sys.argv[1])
from depthcut.data import pack_tokens
from depthcut.recovery.config import RecoverConfig
from depthcut.recovery.run import recover
from tiny import VOCAB, tiny_llama
model = tiny_llama(layers=4)
ids = [3 + (7 * i) % (VOCAB - 3) for i in range(1200)]
data = pack_tokens(ids[:960], 32, 30, 4), pack_tokens(ids[960:], 8, 30, 4)
for method, loss in (("lora", "kd"), ("full", "lm")):
    cfg = RecoverConfig(method=method, loss=loss, max_steps=4, eval_every=2)
    recover(model, None, cfg, teacher=tiny_llama(layers=4, seed=3), progress=False, data=data)
"""


def test_recovery_on_the_trainer_prints_nothing():
    """The Trainer's checkpoint bars, its logger's warnings and peft's deprecation notes are
    held back: LoRA + distillation and full fine-tuning, with checkpoints, print nothing. (In
    a caller's default environment: a CLI test run with --verbose earlier in this process sets
    TRANSFORMERS_VERBOSITY=info, under which everything rightly goes through.)"""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    done = subprocess.run(
        [sys.executable, "-c", RECOVER, str(TESTS)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
