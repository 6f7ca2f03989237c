"""Data-parallel scoring: 2 gloo processes, each on half the calibration rows, give the
single-process scores (API under torch.multiprocessing, and the CLI under torchrun)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import depthcut as dc
from depthcut.errors import ConfigError
from support import missing
from tiny import save_tiny, tiny_calib, tiny_llama, words

CONFIGS = {
    "block-bi": dict(units=("block",), importance="bi"),
    "sublayer-angular-last": dict(units=("attention", "mlp"), importance="angular", tokens="last"),
    "block-gromov": dict(units=("block",), importance="gromov"),
    "block-kl": dict(units=("block",), importance="kl"),
    "block-ce": dict(units=("block",), importance="ce"),
    "width-taylor": dict(
        units=("head", "neuron"), heads=0.25, neurons=0.25, width_importance="taylor"
    ),
    "width-output-norm": dict(
        units=("head", "neuron"), heads=0.25, neurons=0.25, width_importance="output_norm"
    ),
    "width-frequency": dict(
        units=("head", "neuron"), heads=0.25, neurons=0.25, width_importance="activation_frequency"
    ),
    "width-ls": dict(units=("head", "neuron"), heads=0.25, neurons=0.25, width_importance="ls"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scores(name: str) -> dict:
    torch.manual_seed(0)
    model = tiny_llama(layers=6)
    calib = tiny_calib(n=8, pad_last=5)
    s = dc.score(model, dc.PruneConfig(**CONFIGS[name]), calib, progress=False)
    width = {k: v["scores"] for k, v in (s.width or {}).items()}
    return {"units": s.unit_scores, "spans": s.spans, "width": width}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {name: _scores(name) for name in CONFIGS}
        refused = []
        for bad in (
            dict(units=("block",), importance="ppl"),
            dict(units=("fine",)),
            dict(units=("block",), strategy="iterative"),
        ):
            try:
                dc.score(tiny_llama(layers=6), dc.PruneConfig(**bad), tiny_calib(n=8), False)
            except ConfigError as err:
                refused.append(str(err))
        if rank == 0:
            Path(out).write_text(json.dumps({"results": results, "refused": refused}))
    finally:
        dist.destroy_process_group()


def _close(a, b, where=""):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif a is None:
        assert b is None, where
    else:
        assert b == pytest.approx(a, rel=1e-5, abs=1e-9), where


def test_two_gloo_processes_give_the_single_process_scores(tmp_path):
    out = tmp_path / "rank0.json"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    for name in CONFIGS:
        _close(got["results"][name], json.loads(json.dumps(_scores(name))), name)
    assert len(got["refused"]) == 3
    assert "cannot be combined across processes" in got["refused"][0]
    assert all("run fine units and iterative" in r for r in got["refused"][1:])


_RENDEZVOUS = ("address already in use", "eaddrinuse", "rendezvous", "connection reset by peer")


def _run(cmd: list[str], env: dict, retry_rendezvous: bool = False) -> None:
    """Run cmd; on failure show its stderr. A port/rendezvous failure of the launcher itself
    (another job on the machine took the port) is retried once; any other failure is not."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode and retry_rendezvous and any(k in r.stderr.lower() for k in _RENDEZVOUS):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd[0]} exited {r.returncode}:\n{r.stderr[-4000:]}"


def test_cli_under_torchrun_writes_the_single_process_scores(tmp_path):
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        missing("torchrun is installed with torch")
    save_tiny(tmp_path / "m")
    (tmp_path / "text.txt").write_text("\n\n".join(words(200, seed=s) for s in range(10)))
    common = [
        "score",
        str(tmp_path / "m"),
        "--units",
        "block",
        "--importance",
        "bi",
        "--calib",
        str(tmp_path / "text.txt"),
        "--n-samples",
        "8",
        "--seq-len",
        "32",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    # --standalone: torchrun binds its own free port (no pick-then-bind race with other jobs).
    launch = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "depthcut.cli"]
    _run([*launch, *common, "--out", str(tmp_path / "dp.json")], env, retry_rendezvous=True)
    _run([sys.executable, "-m", "depthcut.cli", *common, "--out", str(tmp_path / "one.json")], env)
    dp, one = (json.loads((tmp_path / f).read_text()) for f in ("dp.json", "one.json"))
    _close(dp["unit_scores"], one["unit_scores"])
    assert dp["cost"]["processes"] == 2 and "processes" not in one["cost"]
