"""``--runtime llamacpp``: the joint search's option costs from whole-model variants timed in
llama.cpp, and its candidates re-measured there. The arithmetic is checked on exact synthetic
timings; the variants on the shapes their GGUF files declare; the whole search once end to
end (no timing is asserted: the machine decides those). Needs ``make llama``."""

from __future__ import annotations

import re

import pytest

from depthcut.errors import ConfigError
from depthcut.formats import llamacpp
from depthcut.formats import runtime as rt
from depthcut.search.cost import option_seconds
from support import require_module
from tiny import tiny_calib, tiny_gemma3, tiny_smol_vocab

pytestmark = pytest.mark.slow

SIZES = {"attention": 2, "mlp": 160}
VARIANTS = [
    "dense",
    "blocks",
    "attention:1",
    "attention:0",
    *(f"mlp:{n}" for n in range(224, -1, -32)),  # eighths of 256 neurons, then none
]


@pytest.fixture(scope="module", autouse=True)
def _binding():
    require_module("llama_cpp", "llama-cpp-python (`make llama` installs it)")


def synthetic(n: int = 6, fixed: float = 1.0, block: float = 0.5, att: float = 0.2, mlp=0.25):
    """Round times of the variants of an ``n``-block model whose blocks cost ``block``
    (attention ``att``, MLP ``mlp``) over a ``fixed`` rest; MLP 80 of 160 runs at 0.6 of its
    time, one KV group of two at 0.7; each variant's second round 5% slower."""
    dense = fixed + n * block
    exact = {
        "dense": dense,
        "blocks": dense - (n // 2) * block,
        "attention:0": dense - n * att,
        "attention:1": dense - n * att * (1 - 0.7),
        "mlp:0": dense - n * mlp,
        "mlp:80": dense - n * mlp * (1 - 0.6),
    }
    return {k: [v, v * 1.05] for k, v in exact.items()}


def test_derive_recovers_the_per_block_costs():
    table = rt.derive(synthetic(), 6, 3, SIZES)
    assert table["total"] == pytest.approx(4.0)
    for i in range(6):
        assert table["units"][f"block:{i}"] == pytest.approx(0.5)
        assert table["units"][f"attention:{i}"] == pytest.approx(0.2)
        assert table["units"][f"mlp:{i}"] == pytest.approx(0.25)
    assert table["ratios"]["mlp"] == pytest.approx({160: 1.0, 80: 0.6, 0: 0.0})
    assert table["ratios"]["attention"] == pytest.approx({2: 1.0, 1: 0.7, 0: 0.0})
    assert table["spread"] == pytest.approx(0.05 / 1.025)  # (max − min) ÷ median
    # an option's predicted time: the block less what its sublayers save
    assert option_seconds(table, 2, 0.0, 1.0) == pytest.approx(0.3)
    assert option_seconds(table, 2, 0.7, 0.6) == pytest.approx(0.5 - 0.2 * 0.3 - 0.25 * 0.4)


def test_derive_keeps_a_block_no_cheaper_than_its_sublayers_and_ratios_in_range():
    times = synthetic(block=0.3)  # blocks measured cheaper than attention + MLP (noise)
    times["mlp:80"] = [times["dense"][0] + 0.1]  # a narrower MLP measured slower than dense
    table = rt.derive(times, 6, 3, SIZES)
    assert table["units"]["block:0"] == pytest.approx(0.2 + 0.25)
    assert table["ratios"]["mlp"][80] == 1.0


def test_the_joint_search_runs_in_llamacpp(smol_tokenizer, monkeypatch):
    """Options timed from llama.cpp variants — each variant's GGUF declares its level in every
    block (read back from the file before it is timed) —, every candidate exported and timed
    against the dense export; the plan says where it was timed, and its model is smaller."""
    import depthcut as dc
    from depthcut.units.discover import count_params

    model = tiny_smol_vocab(layers=8, hidden_size=128, intermediate_size=256)  # blocks that
    timer = dc.LlamaCpp(smol_tokenizer, rounds=2, compare_rounds=2, steps=8)  # a timer sees
    seen, timed = {}, timer.time_files

    def spy(files, rounds, model, prefill=True):
        for name, path in files.items():
            seen.setdefault(name, llamacpp.read_arrays(path))
        return timed(files, rounds, model, prefill)

    monkeypatch.setattr(timer, "time_files", spy)
    calib = tiny_calib(n=16, length=64)
    table, plans = dc.frontier(model, calib, ["latency=0.1"], k=1, progress=False, runtime=timer)
    assert sorted(seen) == sorted([*VARIANTS, "pruned"])
    assert seen["dense"]["block_count"] == 8 and seen["blocks"]["block_count"] == 4
    assert _per_layer(seen["dense"], "ffn") == [256] * 8
    assert _per_layer(seen["mlp:128"], "ffn") == [128] * 8
    assert _per_layer(seen["attention:1"], "kv_heads") == [1] * 8
    assert _per_layer(seen["attention:1"], "ffn") == [256] * 8
    assert sorted(table.latency["variants"]) == sorted(VARIANTS)
    assert table.latency["runtime"] == "llamacpp"
    assert table.latency["device"] == f"llama.cpp f16, {timer.threads} threads"
    assert set(table.latency["prefill"]["ratios"]) == {"attention", "mlp"}
    plan = plans["latency-0.1"]
    assert plan.run["search"]["runtime"] == "llamacpp"
    measured = plan.run["search"]["measured"]
    assert 0.0 < 1.0 - measured["saved"] < 2.0 and measured["kl"] >= 0.0
    pruned = dc.apply(model, plan, calib, progress=False)
    assert count_params(pruned) < count_params(model)
    assert not list(timer.folder.glob("*/*.gguf"))[1:]  # only the dense export is kept


def _per_layer(arrays: dict, key: str) -> list[int]:
    value = arrays[key]
    return list(value) if isinstance(value, list) else [value] * arrays["block_count"]


def test_a_torch_table_is_refused_under_llamacpp(smol_tokenizer):
    from depthcut.search.library import OptionTable, check_table

    table = OptionTable({"model_type": "llama"}, [], {"runtime": "torch"})
    with pytest.raises(ConfigError, match="timed in torch, not llamacpp: pass --runtime torch"):
        check_table(table, {"model_type": "llama"}, rt.LlamaCpp(smol_tokenizer))


def test_a_model_llamacpp_cannot_load_pruned_is_refused(smol_tokenizer):
    with pytest.raises(ConfigError, match="this model is gemma3_text: use --runtime torch"):
        rt.make_runtime("llamacpp", smol_tokenizer, tiny_gemma3(2))


def test_runtimes_parse_and_refuse():
    assert rt.parse_runtime("torch") == ("torch", "f16")
    assert rt.parse_runtime("llamacpp") == ("llamacpp", "f16")
    assert rt.parse_runtime("llamacpp:q4_k_m") == ("llamacpp", "q4_k_m")
    for bad, message in [
        ("gpu", "--runtime 'gpu': choose torch"),
        ("torch:f16", "choose torch"),
        ("llamacpp:q3", "--runtime 'llamacpp:q3': unknown GGUF type 'q3'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            rt.parse_runtime(bad)


def test_llamacpp_without_its_binding_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name)
    )
    message = "--runtime llamacpp needs llama_cpp, an optional extra: pip install 'depthcut[llama]'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        rt.require_runtime("llamacpp:q4_k_m")
    rt.require_runtime("torch")  # PyTorch needs nothing more
