"""What a user sees: no library noise on stderr unless --verbose."""

import os
import re
import subprocess
import sys

from depthcut.verbosity import QUIET_ENV

BAR = re.compile(r"\d+%\|.*\|")


def _stderr(*args: str, tmp_path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    env["DEPTHCUT_CACHE"] = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "depthcut.cli", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stderr


def _noise(stderr: str) -> list[str]:
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr)]
    return [ln for ln in lines if ln and not BAR.search(ln) and not ln.startswith("depthcut:")]


def test_inspect_prints_no_library_noise(tiny_dir, tmp_path):
    assert _noise(_stderr("inspect", str(tiny_dir), tmp_path=tmp_path)) == []


def test_verbose_lets_library_logs_through(tiny_dir, tmp_path):
    stderr = _stderr("inspect", str(tiny_dir), "--verbose", tmp_path=tmp_path)
    assert "Loading weights" in stderr  # transformers' own loading bar, hidden by default
