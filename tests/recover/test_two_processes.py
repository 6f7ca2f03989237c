"""Data-parallel recovery: two gloo processes under torchrun, with the same global batch,
give the single process's loss curve and final weights."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("two_processes.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env | {"OMP_NUM_THREADS": "1"}


def _run(tmp_path: Path, method: str, processes: int) -> dict:
    out = tmp_path / f"{method}-{processes}.pt"
    cmd = [sys.executable, str(SCRIPT), str(out), method]
    if processes > 1:
        cmd = [
            str(TORCHRUN),
            "--nproc_per_node",
            str(processes),
            "--master_port",
            _free_port(),
            *cmd[1:],
        ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_gloo_processes_equal_one(tmp_path, method):
    one, two = _run(tmp_path, method, 1), _run(tmp_path, method, 2)
    curve_one = torch.tensor(one["history"]["train_loss"])
    curve_two = torch.tensor(two["history"]["train_loss"])
    assert curve_one.shape == (8, 2)
    torch.testing.assert_close(curve_two, curve_one, rtol=0, atol=1e-5)
    val = [r["val_loss"] for r in one["history"]["rows"]]
    torch.testing.assert_close(
        torch.tensor([r["val_loss"] for r in two["history"]["rows"]]), torch.tensor(val)
    )
    assert val[-1] < val[0] - 0.02  # it trained
    assert one["state"].keys() == two["state"].keys()
    for name, value in one["state"].items():
        torch.testing.assert_close(two["state"][name], value, rtol=0, atol=1e-5)


def test_torchrun_recover_cli_smoke(tmp_path, tiny_dir, pattern_file):
    """``torchrun … -m depthcut.cli recover``: two processes train, one evaluates and saves."""
    import json

    import depthcut as dc
    from support import prune_args

    pruned, out = tmp_path / "pruned", tmp_path / "rec"
    argv = prune_args(tiny_dir, pruned, pattern_file, "--units", "block")
    assert dc.cli.main([str(a) for a in argv]) == 0
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", _free_port(), "-m"]
    cmd += ["depthcut.cli", "recover", str(pruned), "--out", str(out), "--method", "full"]
    cmd += ["--calib", str(pattern_file), "--eval-text", str(pattern_file), "--max-steps", "4"]
    cmd += ["--eval-every", "2", "--train-seq-len", "16", "--train-batch-size", "2"]
    cmd += ["--window", "32", "--max-windows", "2"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "recovery.json").read_text())
    assert history["steps"] == 4 and [r["step"] for r in history["rows"]] == [0, 2, 4]
    assert proc.stdout.count("recovered model -> ") == 1  # the process that saved it
    assert not (tmp_path / "rec.checkpoints").exists()
    recovered, _ = dc.load(out)
    assert sum(p.numel() for p in recovered.parameters()) > 0
