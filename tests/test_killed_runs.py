"""A run killed with SIGKILL (no cleanup runs: OOM, pre-emption) leaves no output, and the
next run removes the temporary folder it left, saying so in one line."""

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


def test_sigkill_during_a_streamed_write_leaves_nothing_the_next_run_keeps(tmp_path, capsys):
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
    capsys.readouterr()
    prepare_output(out, overwrite=False)  # what the next run does before any work
    assert not list(tmp_path.glob(".run.tmp-*")) and not out.exists()
    err = capsys.readouterr().err
    assert err.strip() == f"depthcut: removed {left[0].name}, left by a killed run"


def test_a_live_writers_folder_is_left_alone(tmp_path):
    live = tmp_path / f".run.tmp-{os.getpid()}-abc"
    live.mkdir()
    foreign = tmp_path / ".run.tmp-notapid"
    foreign.mkdir()
    assert remove_stale(tmp_path / "run") == []
    assert live.exists() and foreign.exists()
