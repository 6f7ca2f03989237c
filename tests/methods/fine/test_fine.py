"""Fine-grained units through the public API: score → plan → apply → save/load, selection."""

import json

import pytest
import torch
import torch.nn.functional as F

import depthcut as dc
from depthcut.api import apply, fine_units, plan, plan_units, score
from depthcut.config import Budget, PruneConfig
from depthcut.errors import ConfigError
from depthcut.methods.fine.cnn import cnn_plan
from depthcut.methods.fine.planner import interleave
from depthcut.units.discover import count_params
from tiny import tiny_calib, tiny_gemma3, tiny_gpt2, tiny_llama, tiny_neox
from tiny_cnn import image_batch, tiny_resnet, tiny_yolo


def fine_cfg(**kw):
    base = {"units": ("fine",), "importance": "angular", "strategy": "interleave", "repair": "none"}
    return PruneConfig(**(base | {"budget": Budget(params=kw.pop("params", 0.1))} | kw))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


IDS = torch.tensor([[5, 9, 3, 17, 30, 2, 8, 11, 40, 6], [7, 7, 21, 4, 50, 60, 3, 9, 12, 1]])


@pytest.mark.parametrize("builder", [tiny_llama, tiny_gpt2, tiny_neox, tiny_gemma3])
def test_fine_mlp_units_of_a_block_equal_mlp_sublayer_removal(builder):
    model = builder()
    fm_units = [u for u in fine_units(model) if u.block == 2]
    mlp = [u.path for u in fm_units if u.label != "fine.attention"]
    fine = apply(model, plan_units(model, mlp))
    coarse = apply(model, plan_units(model, ["mlp:2"]))
    torch.testing.assert_close(logits(fine, IDS), logits(coarse, IDS))
    assert count_params(fine) == count_params(coarse)


@pytest.mark.parametrize("builder", [tiny_llama, tiny_gpt2, tiny_neox, tiny_gemma3])
def test_fine_attention_unit_equals_attention_sublayer_removal(builder):
    model = builder()
    (attn,) = [u.path for u in fine_units(model) if u.block == 3 and u.label == "fine.attention"]
    fine = apply(model, plan_units(model, [attn]))
    coarse = apply(model, plan_units(model, ["attention:3"]))
    torch.testing.assert_close(logits(fine, IDS), logits(coarse, IDS))


def test_score_plan_apply_removes_exactly_the_planned_params():
    model = tiny_llama()
    cfg = fine_cfg(params=0.15)
    scores = score(model, cfg, tiny_calib(), progress=False)
    assert len(scores.units) == 6 * 4
    assert scores.cost["forward_equivalents"] > 3.0  # forward + backward + unit re-runs
    the_plan = plan(scores, cfg)  # LLM plans need no model: a skeleton from the config
    pruned = apply(model, the_plan)
    assert count_params(model) - count_params(pruned) == the_plan.removed_params
    assert the_plan.removed_params >= 0.15 * count_params(model)
    assert all(1 <= a.block <= 4 for a in the_plan.actions)  # protect_first/last = 1


def test_interleave_is_two_non_attention_per_attention():
    order = list(interleave(["a1", "a2", "a3", "a4"], ["b1", "b2"]))
    assert order == ["a1", "b1", "a2", "a3", "b2", "a4"]
    assert list(interleave(["a1"], ["b1", "b2"])) == ["a1", "b1", "b2"]


def test_plan_strategies_and_orders_follow_the_scores():
    model = tiny_llama()
    cfg = fine_cfg(params=0.2, strategy="ranked")
    scores = score(model, cfg, tiny_calib(), progress=False)
    ranked = plan(scores, cfg, model)
    pool = [u for u in scores.units if 1 <= u.block <= 4]
    lowest = min(pool, key=lambda u: scores.unit_scores[u.id])
    highest = max(pool, key=lambda u: scores.unit_scores[u.id])
    assert ranked.actions[0].path == lowest.path
    desc = plan(scores, fine_cfg(params=0.2, strategy="ranked", order="descending"), model)
    assert desc.actions[0].path == highest.path
    alone = scores.fine["alone"]
    unified = plan(scores, fine_cfg(params=0.2, strategy="unified"), model)
    per_param = min(pool, key=lambda u: scores.unit_scores[u.id] / alone[u.id])
    assert unified.actions[0].path == per_param.path
    inter = plan(scores, fine_cfg(params=0.2), model)
    kinds = ["attn" if "attn" in a.path else "mlp" for a in inter.actions]
    assert kinds[:3] == ["mlp", "attn", "mlp"]


def test_iterative_rescoring_records_a_sequence_and_replays_it():
    model = tiny_llama()
    cfg = fine_cfg(params=0.15, strategy="iterative")
    scores = score(model, cfg, tiny_calib(), progress=False)
    seq = scores.fine["sequence"]
    assert sum(s["params"] for s in seq) >= 0.15 * count_params(model)
    the_plan = plan(scores, cfg, model)
    assert [a.path for a in the_plan.actions] == [s["unit"] for s in seq]
    assert [list(a.channels or ()) for a in the_plan.actions] == [s["labels"] for s in seq]


def test_taylor_and_kl_importance_give_finite_scores_for_every_unit():
    model = tiny_llama(layers=3)
    for metric in ("taylor", "kl", "ce"):
        scores = score(model, fine_cfg(importance=metric), tiny_calib(n=2), progress=False)
        values = list(scores.unit_scores.values())
        assert len(values) == 12 and all(v == v for v in values)
        assert metric == "ce" or min(values) >= 0
        assert len(set(values)) == 12


def test_fine_plan_saves_and_reloads_with_identical_logits(tmp_path):
    model = tiny_llama()
    cfg = fine_cfg(params=0.2)
    scores = score(model, cfg, tiny_calib(), progress=False)
    the_plan = plan(scores, cfg, model)
    pruned = apply(model, the_plan)
    out = dc.save(pruned, the_plan, tmp_path / "fine")  # save verifies the reload itself
    reloaded, _ = dc.load(out)
    torch.testing.assert_close(logits(reloaded, IDS), logits(pruned, IDS))
    assert count_params(reloaded) == count_params(pruned)


@pytest.mark.parametrize("builder", [tiny_llama, tiny_gpt2, tiny_gemma3])
def test_generate_with_cache_after_fine_attention_removal(builder):
    model = builder()
    units = fine_units(model)
    paths = [u.path for u in units if u.label == "fine.attention" and u.block in (1, 4)]
    paths += [u.path for u in units if u.block == 2 and u.label != "fine.attention"][:1]
    pruned = apply(model, plan_units(model, paths))
    kw = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    with torch.no_grad():
        cached = pruned.generate(IDS[:, :5], use_cache=True, **kw)
        naive = pruned.generate(IDS[:, :5], use_cache=False, **kw)
    assert cached.shape == (2, 13)
    torch.testing.assert_close(cached, naive)


def test_fine_config_validation():
    assert PruneConfig(units=("fine",)).strategy == "interleave"  # the CLI's default too
    assert PruneConfig(units=("block",)).strategy == "ranked"
    with pytest.raises(ConfigError, match="cannot be mixed"):
        PruneConfig(units=("fine", "block"))
    with pytest.raises(ConfigError, match="importance"):
        PruneConfig(units=("fine",), importance="gromov")
    with pytest.raises(ConfigError, match="for units='fine'"):
        PruneConfig(units=("block",), strategy="interleave")


def _cls_batches(model, n=3):
    out = []
    for b in range(n):
        x = image_batch(4, seed=b)
        with torch.no_grad():
            target = model(x).argmax(1) if model(x).dim() == 2 else model(x)
        out.append((x, target))
    return out


def _loss(out, target):
    return F.cross_entropy(out, target) if out.dim() == 2 else F.mse_loss(out, target + 0.1)


@pytest.mark.parametrize("builder", [tiny_resnet, tiny_yolo])
def test_algorithm9_reaches_the_target_and_replays(builder):
    model = builder()
    x = image_batch()
    the_plan = cnn_plan(model, x, _cls_batches(model), _loss, 0.2, progress=False)
    pruned = apply(model, the_plan)
    assert count_params(model) - count_params(pruned) == the_plan.removed_params
    assert the_plan.removed_params >= 0.2 * count_params(model)
    assert pruned(x).shape == model(x).shape
    again = apply(model, dc.Plan.from_dict(the_plan.to_dict()))
    torch.testing.assert_close(again(x), pruned(x))


def test_algorithm9_rescoring_changes_the_order_vs_one_shot():
    model = tiny_resnet()
    x, batches = image_batch(), _cls_batches(tiny_resnet())
    iterative = cnn_plan(model, x, batches, _loss, 0.3, rescore=True, progress=False)
    once = cnn_plan(model, x, batches, _loss, 0.3, rescore=False, progress=False)
    assert iterative.actions[0].path == once.actions[0].path  # same first pick
    assert [a.path for a in iterative.actions] != [a.path for a in once.actions]


def test_cli_prune_units_fine_writes_structure_and_reloads(capsys, tmp_path, tiny_dir):
    from support import prune_args, run
    from tiny import words

    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(words(200, seed=s) for s in range(8)))
    out = tmp_path / "fine"
    code, stdout, _ = run(capsys, *prune_args(tiny_dir, out, text, "--units", "fine"))
    assert code == 0, stdout
    assert "fine" in stdout and "(R=" in stdout  # gate/up prunes reconcile widths
    assert (out / "structure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Pruned structure" in report and "| self_attn |" in report
    data = json.loads((out / "report.json").read_text())
    statuses = {s for row in data["structure"]["status"] for s in row}
    assert "kept" in statuses and statuses & {"identity", "patched 0"}
    code, stdout, _ = run(capsys, "inspect", out)
    assert code == 0 and "blocks:" in stdout


def test_inspect_prints_the_fine_search_space(capsys, tiny_dir):
    from support import run

    code, stdout, _ = run(capsys, "inspect", tiny_dir)
    assert code == 0
    assert "blocks 6 | sublayers 12 | fine units 24 (6 attention, 18 linear)" in stdout


def test_cnn_search_space_counts_channel_changing_layers():
    from depthcut.inspect import search_space_text

    text = search_space_text(tiny_yolo(), image_batch())
    assert "layers 15 | width-preserving (coarse-prunable) 6 | fine units 14 (+133%" in text
    assert "excluded down.conv: changes the spatial size (16, 16) → (8, 8)" in text


def test_spatial_changing_unit_is_refused_with_the_reason():
    from depthcut.methods.fine.state import UnitRefused

    with pytest.raises(UnitRefused, match=r"layer2.0.conv1: .*changes the spatial size"):
        plan_units(tiny_resnet(), ["layer2.0.conv1"], example=image_batch())


def test_ordering_ablation_runs_each_order_on_the_same_scores():
    from depthcut.api import ordering_ablation

    model = tiny_llama()
    cfg = fine_cfg(params=0.2)
    scores = score(model, cfg, tiny_calib(), progress=False)
    ids = IDS

    def evaluate(m):
        with torch.no_grad():
            return float(m(input_ids=ids, labels=ids).loss)

    result = ordering_ablation(model, scores, cfg, evaluate)
    assert set(result) == {"ascending", "descending", "random"}
    assert all(r["fraction"] >= 0.2 for r in result.values())
    assert result["ascending"]["units"] != result["descending"]["units"]
    assert result["ascending"]["units"][0] == plan(scores, cfg, model).actions[0].path


def test_one_prune_run_exports_the_block_graph_once(capsys, tmp_path, tiny_dir):
    """score, plan, apply, the structure report and save-verify share one torch.export."""
    from depthcut.cli import main
    from depthcut.methods.fine import model as fine_model
    from tiny import words

    fine_model._GRAPHS.clear()
    before = fine_model.graph_builds
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(words(200, seed=s) for s in range(6)))
    argv = ["prune", tiny_dir, "--units", "fine", "--importance", "angular", "--budget"]
    argv += ["params=0.15", "--out", tmp_path / "o", "--calib", text, "--n-samples", "2"]
    assert main([str(a) for a in [*argv, "--seq-len", "32"]]) == 0
    assert fine_model.graph_builds - before == 1
    assert (tmp_path / "o" / "structure.png").exists()


def test_fine_plan_is_refused_on_another_block_graph():
    """Same parameters, other attention implementation (eager softmax vs SDPA): the plan's
    graph fingerprint names the difference instead of replaying channels on another graph."""
    from depthcut.errors import UnsupportedModelError

    model = tiny_llama(layers=4)
    paths = [u.path for u in dc.fine_units(model) if u.block == 1][:2]
    the_plan = plan_units(model, paths)
    assert the_plan.model["fine_graph"]["units"][0] == "self_attn"
    other = tiny_llama(layers=4)
    other.config._attn_implementation = "eager"
    with pytest.raises(UnsupportedModelError, match=r"fine plan was made on another block graph"):
        apply(other, the_plan)
