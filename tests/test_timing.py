"""Timings that know their noise: the spread of repeats, other processes' CPU use (a real CPU
hog in a subprocess), and reports that mark what cannot be trusted."""

import subprocess
import sys
import time

import pytest

from depthcut.eval.latency import measure_many
from depthcut.report.write import comparison, timing_warnings
from depthcut.timing import BUSY_LIMIT, CpuWatch, reliability, spread
from tiny import tiny_llama

HOG = "import time\nend = time.time() + 120\nwhile time.time() < end:\n    pass\n"


@pytest.fixture
def hogs():
    """Two processes spinning on the CPU (one per core here) while a test measures."""
    procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2)]
    time.sleep(0.5)
    yield
    for p in procs:
        p.kill()
        p.wait()


def test_a_busy_machine_marks_the_timings_unreliable(hogs):
    result = measure_many({"m": tiny_llama()}, (16,), (1,), new_tokens=8, repeats=3)["m"]
    assert result.other_cpu is not None and result.other_cpu > BUSY_LIMIT
    assert any(r.startswith("machine busy: other processes used") for r in result.unreliable)
    assert set(result.spread) == {"prefill 16", "decode b1"}


def test_the_watch_counts_other_processes_not_this_one(monkeypatch):
    """(machine busy seconds, own seconds) read at start and stop: 3 s of the machine's busy
    time over 2 s of wall clock, 1 s of it this process's own → others used 100%."""
    from depthcut import timing

    readings = iter([(10.0, 1.0), (13.0, 2.0)])
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(timing, "_cpu_seconds", lambda children=False: next(readings))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    watch = CpuWatch()
    watch.start()
    assert watch.stop() == pytest.approx(100.0)


def test_a_watch_with_children_counts_finished_subprocesses_as_its_own():
    """A subprocess this process ran and waited for (a llama.cpp timing) is its own CPU with
    ``children``, not another process's."""
    import subprocess
    import sys

    from depthcut import timing

    before = timing._cpu_seconds(children=True)[1] - timing._cpu_seconds()[1]
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    after = timing._cpu_seconds(children=True)[1] - timing._cpu_seconds()[1]
    assert after - before >= 0.3


def test_spread_and_reasons():
    assert spread([1.0, 1.0, 1.0]) == 0.0
    assert spread([0.9, 1.0, 1.3]) == pytest.approx(0.4)
    assert reliability({"decode b1": 0.05}, 5.0) == []
    assert reliability({"decode b1": 0.4, "prefill 128": 0.2}, None) == [
        "2 figure(s) spread over 10% between repeats (decode b1: 40%)"
    ]
    assert reliability({}, 160.0) == ["machine busy: other processes used 160% CPU meanwhile"]


def _side(params: int, prefill: float, decode: float, unreliable=()) -> dict:
    latency = {"prefill_ms": {512: prefill}, "decode_tps": {1: decode}}
    return {"params_all": params, "params_non_embedding": params, "latency": latency} | (
        {"latency": latency | {"unreliable": list(unreliable)}} if unreliable else {}
    )


def test_a_pruned_model_slower_than_dense_is_flagged():
    before, after = _side(100, 2514.0, 10.0), _side(74, 4841.0, 21.0)  # the demo's numbers
    reasons = timing_warnings(before, after)
    assert reasons == [
        "the pruned model measured slower than the dense one (prefill 512): timing noise, "
        "not the pruning"
    ]
    text = comparison(before, after)
    assert "| prefill 512 tok (ms) | 2514.0 ⚠ | 4841.0 ⚠ |" in text
    assert text.endswith("⚠ timings unreliable: " + reasons[0])


def test_clean_timings_are_not_marked():
    before, after = _side(100, 2500.0, 10.0), _side(74, 1900.0, 13.0)
    assert timing_warnings(before, after) == []
    assert "⚠" not in comparison(before, after)


def test_measured_flags_are_carried_once():
    busy = ["machine busy: other processes used 90% CPU meanwhile"]
    before, after = _side(100, 2500.0, 10.0, busy), _side(74, 1900.0, 13.0, busy)
    assert timing_warnings(before, after) == busy
