"""Where benchmark results go: ``benchmarks/results/NAME.json`` with the command that produced
them, the commit, the date and the hardware, so the documentation's tables can say all four."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def hardware() -> dict:
    """The CPU and its core count (what every table names its figures by)."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def commit(folder: Path | None = None) -> str:
    """The short commit checked out in ``folder`` (this checkout by default); "" outside git."""
    where = ["-C", str(folder)] if folder is not None else []
    done = subprocess.run(
        ["git", *where, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def today() -> str:
    return time.strftime("%Y-%m-%d")


def this_command() -> str:
    """This script and its arguments, as the results files show it."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def write(name: str, fields: dict, command: str | None = None, head: dict | None = None) -> Path:
    """Write ``fields`` with the command (default: this script and its arguments), commit,
    date and hardware into ``results/NAME.json``; ``head``: the command, commit and date of
    the run a resumed one continues, kept as they were."""
    path = RESULTS / f"{name}.json"
    head = head or {"command": command or this_command(), "commit": commit(), "date": today()}
    path.write_text(json.dumps(head | {"hardware": hardware()} | fields, indent=2) + "\n")
    return path


def provenance(results: dict) -> str:
    """One line: the command, date, commit and hardware a results file records."""
    parts = [f"`{results['command']}`"] if results.get("command") else []
    parts += [
        results[k] if k == "date" else f"commit {results[k]}"
        for k in ("date", "commit")
        if results.get(k)
    ]
    if results.get("hardware"):
        parts.append(f"{results['hardware']['cores']}-core CPU ({results['hardware']['cpu']})")
    return ", ".join(parts)


FLAG_NOTE = "⚠: the timing flagged itself (spread over 10% between repeats, or a busy CPU)"


def flag(latency: dict) -> str:
    """ " ⚠" after a figure whose timing flagged itself (``LatencyResult.unreliable``)."""
    return " ⚠" if latency.get("unreliable") else ""


def show(name: str, table, measure) -> None:
    """A benchmark's ``main``: with ``--table`` print the table of its results file, otherwise
    run ``measure()``, write its fields into ``results/NAME.json`` and print the table."""
    path = RESULTS / f"{name}.json"
    if sys.argv[1:2] != ["--table"]:
        path = write(name, measure())
    print(table(json.loads(path.read_text())))
