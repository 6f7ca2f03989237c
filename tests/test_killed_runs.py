"""A run killed with SIGKILL (no cleanup runs: OOM, pre-emption) leaves no output, and the
next run removes the temporary folder it left, saying so in one line."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from depthcut.io import prepare_output, remove_stale
from tiny import save_tiny, words

# the real CLI, with the on-disk writer slowed down so that the kill lands while it writes
SLOW_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from depthcut.stream import apply as stream_apply
real = stream_apply.apply_on_disk

def slow(source, plan, tmp, meta):
    (tmp / "STARTED").write_text("writing")
    time.sleep(60)
    return real(source, plan, tmp, meta)

stream_apply.apply_on_disk = slow
from depthcut.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_during_a_streamed_write_leaves_nothing_the_next_run_keeps(tmp_path, caplog):
    save_tiny(tmp_path / "model")
    (tmp_path / "text.txt").write_text("\n\n".join(words(200, seed=s) for s in range(8)))
    out = tmp_path / "run"
    argv = ["prune", tmp_path / "model", "--out", out, "--streaming", "--units", "block"]
    argv += ["--calib", tmp_path / "text.txt", "--n-samples", "4", "--seq-len", "32"]
    script = [sys.executable, "-c", SLOW_WRITER, str(Path(__file__).parent), *map(str, argv)]
    proc = subprocess.Popen(script, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".run.tmp-*/STARTED")) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it wrote anything"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = list(tmp_path.glob(".run.tmp-*"))
    assert not out.exists() and len(left) == 1  # no output; the killed writer's folder
    assert left[0].name.startswith(f".run.tmp-{proc.pid}-")
    caplog.set_level(logging.INFO, logger="depthcut")
    prepare_output(out, overwrite=False)  # what the next run does before any work
    assert not list(tmp_path.glob(".run.tmp-*")) and not out.exists()
    assert caplog.messages == [f"depthcut: removed {left[0].name}, left by a killed run"]


def test_a_live_writers_folder_is_left_alone(tmp_path):
    live = tmp_path / f".run.tmp-{os.getpid()}-abc"
    live.mkdir()
    foreign = tmp_path / ".run.tmp-notapid"
    foreign.mkdir()
    assert remove_stale(tmp_path / "run") == []
    assert live.exists() and foreign.exists()


# the real CLI; after block 2's state is saved the run stalls, to be killed there
STALL_AFTER_BLOCK_2 = """
import sys, time
sys.path.insert(0, sys.argv[1])
from depthcut.stream import resume
real = resume.Checkpoint.save

def save(self, state):
    real(self, state)
    if state["next"] == 3:
        time.sleep(60)

resume.Checkpoint.save = save
from depthcut.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_streamed_scores_resume_after_sigkill_equal_an_uninterrupted_run(
    tmp_path, capsys, monkeypatch
):
    from depthcut.cli import main
    from depthcut.stream.source import BlockSource

    save_tiny(tmp_path / "model")
    (tmp_path / "text.txt").write_text("\n\n".join(words(200, seed=s) for s in range(8)))
    common = ["prune", tmp_path / "model", "--streaming", "--units", "block,neuron"]
    common += ["--neurons", "0.25", "--width-importance", "output_norm", "--budget"]
    common += ["params=0.2", "--calib", tmp_path / "text.txt", "--n-samples", "6"]
    common += ["--seq-len", "32"]
    killed = [*common, "--out", tmp_path / "run"]
    script = [sys.executable, "-c", STALL_AFTER_BLOCK_2, str(Path(__file__).parent)]
    proc = subprocess.Popen([*script, *map(str, killed)], stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / ".run.scores-checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists() and _saved_next(checkpoint) == 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _saved_next(checkpoint) == 3 and not (tmp_path / "run").exists()
    walked, real_walk = [], BlockSource.walk

    def walk(self, indices):
        indices = list(indices)
        walked.append(indices)
        return real_walk(self, indices)

    monkeypatch.setattr(BlockSource, "walk", walk)
    assert main([str(a) for a in [*killed, "--resume"]]) == 0
    assert walked[0] == [3, 4, 5]  # the scores' walk went on from the block after the kill
    assert not checkpoint.exists()  # a finished run leaves no checkpoint
    assert main([str(a) for a in [*common, "--out", tmp_path / "whole"]]) == 0
    resumed = json.loads((tmp_path / "run" / "scores.json").read_text())
    whole = json.loads((tmp_path / "whole" / "scores.json").read_text())
    assert resumed == whole
    assert (tmp_path / "run" / "plan.json").read_text() == (
        tmp_path / "whole" / "plan.json"
    ).read_text()


def _saved_next(path: Path) -> int | None:
    import torch

    try:
        return torch.load(path, weights_only=False)["next"]
    except (OSError, EOFError, RuntimeError, KeyError):
        return None


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    import pytest
    import torch

    from depthcut.errors import ConfigError
    from depthcut.stream.resume import Checkpoint

    path = tmp_path / "c.pt"
    Checkpoint(path, "run-a").save({"next": 1})
    assert Checkpoint(path, "run-a").load()["next"] == 1
    with pytest.raises(ConfigError, match="a checkpoint of another run"):
        Checkpoint(path, "run-b").load()
    assert torch.load(path, weights_only=False)["key"] == "run-a"  # left for its own run
