import sys
from pathlib import Path

import pytest
import torch

import depthcut as dc
from depthcut.errors import ConfigError
from depthcut.int4 import AlignmentError, check_alignment, misaligned
from depthcut.io import logits_on_probe
from depthcut.quantization import (
    QuantizeConfig,
    QuantizedInputError,
    is_quantized,
    quantize,
    size_mb,
)
from support import make_plan, missing
from tiny import tiny_calib, tiny_gpt2, tiny_llama, tiny_tokenizer


def pruned_llama():
    model = tiny_llama(layers=6)
    plan, _, _ = make_plan(model, [("block", 2), ("attention", 3)])
    return dc.apply(model, plan), plan


def test_dynamic_int8_is_close_smaller_and_reloads_identically(tmp_path):
    pruned, plan = pruned_llama()
    q = quantize(pruned)
    assert is_quantized(q) and not is_quantized(pruned)
    ref, out = logits_on_probe(pruned), logits_on_probe(q)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert size_mb(q) < 0.7 * size_mb(pruned)
    assert type(q.model.layers[0].mlp.down_proj) is torch.nn.Linear  # keep_mlp_out
    assert is_quantized(q.model.layers[0].mlp.up_proj)
    every = quantize(pruned, QuantizeConfig(keep_mlp_out=False))
    assert is_quantized(every.model.layers[0].mlp.down_proj)
    assert size_mb(every) < 0.5 * size_mb(pruned)
    saved = dc.save(q, plan, tmp_path / "q", tiny_tokenizer())
    names = {p.name for p in saved.iterdir()}
    assert "quantized.safetensors" in names and "model.safetensors" not in names
    reloaded, _ = dc.load(saved)
    assert is_quantized(reloaded)
    torch.testing.assert_close(logits_on_probe(reloaded), out, rtol=0, atol=0)
    ids = torch.randint(3, 97, (1, 5))
    kw = {"max_new_tokens": 5, "do_sample": False}
    torch.testing.assert_close(reloaded.generate(ids, **kw), q.generate(ids, **kw))


TORCHAO_SITE = Path(sys.prefix) / "torchao-site"  # `make setup` installs torchao there
TORCHAO_CHECK = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import pytest, torch
import depthcut as dc
from depthcut.errors import DepthcutError
from depthcut.io import logits_on_probe
from depthcut.quantization import QuantizeConfig, quantize
from tiny import tiny_gpt2

model = tiny_gpt2(layers=2)
q = quantize(model, QuantizeConfig("torchao_int8_weight_only"))
assert type(q.lm_head.weight).__module__.startswith("torchao"), "not quantized"  # Linear only
ref = logits_on_probe(model)
assert (logits_on_probe(q) - ref).abs().max() < 0.05 * ref.abs().max()
with pytest.raises(DepthcutError, match="only"):
    dc.save(q, dc.Plan([], {}), sys.argv[3])
print("torchao path ok")
"""


def test_torchao_is_an_optional_extra(tmp_path):
    """Without the extra (this environment): one line naming it. With it (a subprocess that
    adds the folder `make setup` installs torchao into): close logits, and saving refused."""
    import importlib.util
    import subprocess

    model = tiny_gpt2(layers=2)
    assert importlib.util.find_spec("torchao") is None
    with pytest.raises(ConfigError, match=r"pip install 'depthcut\[torchao\]'"):
        quantize(model, QuantizeConfig("torchao_int8_weight_only"))
    if not TORCHAO_SITE.is_dir():
        missing("make setup installs torchao into .venv/torchao-site")
    tests = str(Path(__file__).parent)
    argv = [sys.executable, "-c", TORCHAO_CHECK, str(TORCHAO_SITE), tests, str(tmp_path / "ao")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "torchao path ok" in done.stdout, done.stderr[-2000:]
    assert not (tmp_path / "ao").exists()


def test_skip_keeps_float(tmp_path):
    model = tiny_llama(layers=2)
    d = quantize(model, QuantizeConfig(skip=("lm_head",)))
    assert type(d.lm_head) is torch.nn.Linear and is_quantized(d)
    plan = dc.Plan(
        [],
        {
            "num_blocks": 2,
            "params_all": sum(p.numel() for p in model.parameters()),
            "params_non_embedding": 0,
            "config": model.config.to_dict(),
        },
    )
    reloaded, _ = dc.load(dc.save(d, plan, tmp_path / "skip"))
    assert type(reloaded.lm_head) is torch.nn.Linear
    torch.testing.assert_close(logits_on_probe(reloaded), logits_on_probe(d), rtol=0, atol=0)


def test_pruning_or_recovering_a_quantized_model_is_refused():
    from depthcut.recovery.run import recover

    pruned, plan = pruned_llama()
    q = quantize(pruned)
    cfg = dc.PruneConfig(units=("block",), budget=dc.Budget(params=0.2))
    with pytest.raises(QuantizedInputError, match="quantize last"):
        dc.score(q, cfg, tiny_calib(), progress=False)
    with pytest.raises(QuantizedInputError, match="cannot prune"):
        dc.apply(q, plan)
    with pytest.raises(QuantizedInputError, match="cannot recover"):
        recover(q, None, data=(tiny_calib(), tiny_calib()))
    with pytest.raises(QuantizedInputError, match="cannot quantize"):
        quantize(q)


def test_alignment_check_catches_non_divisible_widths():
    model = tiny_llama(layers=4)  # hidden 32, intermediate 64
    cfg = dc.PruneConfig(units=("neuron",), neurons=0.3, protect_first=0, protect_last=0)
    odd = dc.apply(model, dc.plan(dc.score(model, cfg, tiny_calib(), progress=False), cfg))
    bad = misaligned(odd, 16)
    assert bad and all(name.endswith("down_proj") for name in bad)
    assert all(width % 16 for width in bad.values())
    with pytest.raises(AlignmentError, match="--round-to 16"):
        check_alignment(odd, 16)
    rounded = dc.PruneConfig(
        units=("neuron",), neurons=0.3, round_to=16, protect_first=0, protect_last=0
    )
    ok = dc.apply(model, dc.plan(dc.score(model, rounded, tiny_calib(), progress=False), rounded))
    assert misaligned(ok, 16) == {}
    check_alignment(ok, 16)
