"""Every architecture × every unit kind: physical == reference, save → load, cached generation,
plain from_pretrained where the result keeps the architecture; refused pairs give their error."""

import re
from pathlib import Path

import pytest
import torch

import depthcut as dc
from depthcut.errors import DepthcutError
from matrix import (
    ARCHS,
    KINDS,
    REFUSED,
    config,
    is_causal,
    output,
    plain_loadable,
    reference,
    table,
)
from tiny import VOCAB, tiny_calib, tiny_tokenizer

PAIRS = [(a, k) for a in ARCHS for k in KINDS]


def _plan(model, kind):
    cfg = config(kind)
    scores = dc.score(model, cfg, tiny_calib(), progress=False)
    return dc.plan(scores, cfg, model)


@pytest.mark.parametrize(("arch", "kind"), [p for p in PAIRS if p in REFUSED])
def test_refused_pair_gives_its_one_line_error(arch, kind):
    model = ARCHS[arch][1](layers=4)
    with pytest.raises(DepthcutError, match=re.escape(REFUSED[(arch, kind)])) as err:
        dc.apply(model, _plan(model, kind))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("arch", "kind"), [p for p in PAIRS if p not in REFUSED])
def test_pair(arch, kind, tmp_path):
    model = ARCHS[arch][1](layers=6)
    plan = _plan(model, kind)
    assert plan.actions and {a.kind for a in plan.actions} <= set(KINDS[kind]["units"])
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    with reference(model, plan):
        expected = output(model, ids)
    assert not torch.allclose(expected, output(model, ids))  # the plan changed something
    pruned = dc.apply(model, plan)
    torch.testing.assert_close(output(pruned, ids), expected, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    dc.save(pruned, plan, tmp_path / "run", tiny_tokenizer())
    reloaded, _ = dc.load(tmp_path / "run")
    torch.testing.assert_close(output(reloaded, ids), output(pruned, ids), rtol=0, atol=0)
    if not is_causal(model):
        return
    kw = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = reloaded.generate(ids[:, :4], use_cache=True, **kw)
        naive = reloaded.generate(ids[:, :4], use_cache=False, **kw)
    torch.testing.assert_close(cached, naive)
    if plain_loadable(arch, kind):
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "run").eval()
        torch.testing.assert_close(output(plain, ids), output(pruned, ids), rtol=0, atol=0)


def test_readme_table_is_generated_from_the_matrix():
    root = Path(__file__).parent.parent
    for page in ("README.md", "docs/support.md"):
        text = (root / page).read_text()
        assert table() in text, (
            f"{page}'s 'what works where' table is stale: python tests/matrix.py"
        )
