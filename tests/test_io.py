import pytest
import torch

import depthcut as dc
from depthcut.io import logits_on_probe
from support import make_plan
from tiny import BUILDERS, tiny_llama, tiny_tokenizer


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_save_load_identical_logits_sublayer_plan(tmp_path, arch):
    model = BUILDERS[arch](layers=6)
    plan, _, _ = make_plan(model, [("block", 2), ("attention", 3), ("mlp", 1)])
    pruned = dc.apply(model, plan)
    out = dc.save(pruned, plan, tmp_path / "out", tiny_tokenizer())
    assert {"model.safetensors", "config.json", "plan.json", "depthcut.json"} <= {
        p.name for p in out.iterdir()
    }
    reloaded, tok = dc.load(out)
    torch.testing.assert_close(logits_on_probe(reloaded), logits_on_probe(pruned))
    assert tok is not None
    ids = torch.randint(3, 97, (1, 6))
    kw = {"max_new_tokens": 6, "do_sample": False}
    torch.testing.assert_close(reloaded.generate(ids, **kw), pruned.generate(ids, **kw))


def test_block_plan_reloads_with_plain_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama(layers=6)
    plan, _, _ = make_plan(model, [("block", 1), ("block", 4)])
    pruned = dc.apply(model, plan)
    out = dc.save(pruned, plan, tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert plain.config.num_hidden_layers == 4
    torch.testing.assert_close(logits_on_probe(plain), logits_on_probe(pruned))


def test_existing_output_is_refused_and_kept(tmp_path):
    model = tiny_llama(layers=6)
    plan, _, _ = make_plan(model, [("block", 1)])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(dc.DepthcutError, match="exists"):
        dc.save(dc.apply(model, plan), plan, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    dc.save(dc.apply(model, plan), plan, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists()


def test_interrupted_save_leaves_nothing(tmp_path):
    model = tiny_llama(layers=6)
    plan, _, _ = make_plan(model, [("block", 1)])

    def boom(tmp):
        assert (tmp / "model.safetensors").exists()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dc.save(dc.apply(model, plan), plan, tmp_path / "out", extra=boom)
    assert list(tmp_path.iterdir()) == []
