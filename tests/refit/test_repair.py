"""Least-squares repair (--repair ls): the fits against torch.linalg.lstsq, folded == unfolded,
no parameter added, identity on an empty plan, never worse on the held-back batches, and saved
→ loaded == in memory for repaired block, sublayer, width and fine-grained plans."""

import copy

import pytest
import torch
from transformers.pytorch_utils import Conv1D

import depthcut as dc
from depthcut.calibrate import BlockCache
from depthcut.errors import ConfigError
from depthcut.graph.structure import discover_structure
from depthcut.importance import functional as F
from depthcut.planning.plan import Plan
from depthcut.refit.fine import FINE_RIDGES
from depthcut.refit.ls import DEPTH_RIDGES, check_nll, fold, solve
from depthcut.refit.run import RIDGES, halves, model_nll
from depthcut.refit.width import KeptSystem, input_grams, refit_columns
from support import assert_reloads_equal, make_plan, real_tokens, run_masked
from tiny import tiny_calib, tiny_gemma3, tiny_gpt2, tiny_llama, tiny_neox


def calib():
    return tiny_calib(n=12, length=24)


def width_plan(model, kinds=("neuron",)):
    cfg = dc.PruneConfig(units=kinds, neurons=0.25, heads=0.3, width_importance="magnitude")
    return dc.plan(dc.score(model, cfg, calib(), progress=False), cfg, model)


def test_depth_solve_is_least_squares():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g).double(), torch.randn(50, 6, generator=g).double()
    expected = torch.linalg.lstsq(x, y).solution
    torch.testing.assert_close(solve(x.T @ x, x.T @ y, ridge=0.0), expected)


def test_width_refit_is_weighted_least_squares_on_the_kept_channels():
    model = tiny_llama()
    path = "model.layers.2.mlp.down_proj"
    seen = []
    handle = model.get_submodule(path).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    data = calib()
    grams = input_grams(model, [path], data, progress=False)
    handle.remove()
    x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()
    keep = list(range(0, 64, 3))
    w = model.get_submodule(path).weight.detach().double()
    root = x.pow(2).mean(-1, keepdim=True).rsqrt()  # the tokens' weights, square-rooted
    expected = torch.linalg.lstsq(root * x[:, keep], root * (x @ w.T)).solution.T
    new = refit_columns(w, grams[path], keep, ridge=0.0)
    torch.testing.assert_close(new[:, keep], expected)
    dropped = [c for c in range(64) if c not in keep]
    assert new[:, dropped].abs().max() == 0


def test_the_check_loss_runs_the_head_a_sequence_at_a_time():
    """The depth refit's held-back loss: the LM head sees one sequence at a time (a batch's
    logits at once were 1.2 GB with their log-probabilities on the 1.5B), the loss equals the
    batched one, and the work is counted as one tail run a batch."""
    model = tiny_llama()
    data = tiny_calib(n=6, pad_last=5)
    cache = BlockCache(model, discover_structure(model), data, progress=False)
    rows, runs = [], cache.tail_runs
    handle = model.lm_head.register_forward_hook(lambda m, a, out: rows.append(out.shape[0]))
    found = check_nll(cache, [1, 2])
    handle.remove()
    assert rows == [1, 1, 1, 1] and cache.tail_runs - runs == pytest.approx(2.0)
    batched = F.mean_nll((cache.logits(cache.inputs[-1][b]), cache.batches[b]) for b in [1, 2])
    assert found == pytest.approx(batched, rel=1e-6)


def test_every_ridge_of_one_kept_system_is_the_closed_form():
    """A = (W G[:, K] + λ W_K)(G_KK + λI)⁻¹ for each ridge, solved from one system: the
    ridges before the last on a copy (the system stays intact), the last in its memory."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=g, dtype=torch.float64)
    gram, w = x.T @ x, torch.randn(7, 40, generator=g)
    keep = list(range(1, 40, 2))
    system = KeptSystem(w, gram, keep)
    g_kk = gram[keep][:, keep]
    for n, ridge in enumerate((1e-2, 1e-1, 0.5)):
        lam = ridge * float(g_kk.diagonal().mean())
        rhs = w.double() @ gram[:, keep] + lam * w.double()[:, keep]
        expected = torch.linalg.solve(g_kk + lam * torch.eye(len(keep)), rhs.T).T
        new = system.refit(ridge, consume=n == 2)
        assert new.dtype == w.dtype and new.shape == w.shape
        torch.testing.assert_close(new[:, keep], expected.float())
        assert new[:, [c for c in range(40) if c not in keep]].abs().max() == 0


@pytest.mark.parametrize("conv", [False, True])
def test_fold_equals_layer_then_map(conv):
    torch.manual_seed(0)
    layer = Conv1D(5, 6) if conv else torch.nn.Linear(6, 5)
    torch.nn.init.normal_(layer.bias)
    t = torch.randn(5, 5)
    x = torch.randn(7, 6)
    expected = layer(x) @ t
    fold(layer, t)
    torch.testing.assert_close(layer(x), expected)


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_empty_plan_is_the_identity():
    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    plan = Plan([], {})
    assert dc.repair(model, plan, calib(), progress=False) == {"method": "none"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def mixed_plan(model):
    cfg = dc.PruneConfig(units=("block", "neuron"), neurons=0.1, budget=dc.Budget(params=0.2))
    return dc.plan(dc.score(model, cfg, calib(), progress=False), cfg, model)


@pytest.mark.parametrize("which", ["mixed", "fine"])
def test_repair_adds_no_parameter_and_keeps_every_shape(which):
    model = tiny_llama()
    plan = mixed_plan(model) if which == "mixed" else fine_plan(model)
    assert {a.kind.value for a in plan.actions} == (
        {"block", "neuron"} if which == "mixed" else {"fine"}
    )
    plain = dc.apply(model, plan)
    before_shapes, before_count = shapes(model), sum(p.numel() for p in model.parameters())
    report = dc.repair(model, plan, calib(), progress=False)
    assert shapes(model) == before_shapes
    assert sum(p.numel() for p in model.parameters()) == before_count
    assert shapes(dc.apply(model, plan, inplace=True)) == shapes(plain)
    assert report["forward_equivalents"] > 0
    assert plan.run["repair"] is report


def sliced_nll(model, plan, data):
    return model_nll(dc.apply(model, plan), data)


DEPTH_PICKS = {"blocks": [("block", 2)], "attention": [("attention", 2), ("attention", 4)]}


def some_plan(model, which: str):
    if which == "width":
        return width_plan(model)
    return fine_plan(model) if which == "fine" else make_plan(model, DEPTH_PICKS[which])[0]


@pytest.mark.parametrize("which", ["width", "blocks", "attention", "fine"])
def test_never_worse_on_the_held_back_batches(which):
    model = tiny_llama(layers=6, seed=3)
    plan = some_plan(model, which)
    data = calib()
    _, check = halves(data)
    unrepaired = sliced_nll(model, plan, check)
    report = dc.repair(model, plan, data, progress=False)
    repaired = sliced_nll(model, plan, check)
    assert repaired <= unrepaired + 1e-9
    if which in ("width", "fine"):  # the guard's losses are the sliced model's, its pick the min
        losses = report[which]["check_nll"]
        assert losses["None"] == pytest.approx(unrepaired, rel=1e-5)
        assert repaired == pytest.approx(min(losses.values()), rel=1e-5)
        assert len(losses) == 1 + (len(RIDGES) if which == "width" else len(FINE_RIDGES))
    if which in DEPTH_PICKS:  # the last run is checked on the whole plan: its pick is the model
        last = report["depth"]["runs"][-1]
        losses = last["check_nll"]
        assert set(losses) == {"None", *map(str, DEPTH_RIDGES)}
        assert losses[str(last["ridge"])] == min(losses.values())
        assert repaired == pytest.approx(min(losses.values()), rel=1e-5)


def test_width_refit_lowers_the_consumer_error_on_its_fitting_tokens():
    """Block 1 is the first pruned layer (block 0 is protected), so its down-projection sees
    the dense inputs in all three models: the refit must lower the (weighted) objective."""
    model = tiny_llama(seed=4)
    plan = width_plan(model)
    assert any(a.block == 1 for a in plan.actions)
    dense = copy.deepcopy(model)
    dc.repair(model, plan, calib(), progress=False)
    fit, _ = halves(calib())
    models = {"dense": dense, "repaired": dc.apply(model, plan), "plain": dc.apply(dense, plan)}
    outs, inputs = {}, []
    for name, m in models.items():
        seen = []
        layer = m.get_submodule("model.layers.1.mlp.down_proj")
        handle = layer.register_forward_hook(lambda mod, a, o, seen=seen: seen.append((a[0], o)))
        with torch.no_grad():
            for batch in fit.batches():
                m(**batch, use_cache=False)
        handle.remove()
        outs[name] = torch.cat([o for _, o in seen]).double()
        if name == "dense":
            inputs = torch.cat([x for x, _ in seen]).double()
    weight = 1 / inputs.pow(2).mean(-1, keepdim=True)
    err = {k: (weight * (outs[k] - outs["dense"]).pow(2)).sum() for k in ("repaired", "plain")}
    assert err["repaired"] < 0.9 * err["plain"]


@pytest.mark.parametrize(
    "kind",
    ["block", "sublayer", "width", "fine"],
)
def test_saved_repaired_run_reloads_equal(tmp_path, kind):
    model = tiny_llama(seed=5)
    if kind == "width":
        plan = width_plan(model, ("head", "neuron"))
    elif kind == "fine":
        plan = fine_plan(model)
    else:
        picks = (
            [("block", 2)] if kind == "block" else [("attention", 3), ("mlp", 3), ("attention", 1)]
        )
        plan = make_plan(model, picks)[0]
    dc.repair(model, plan, calib(), progress=False)
    pruned = dc.apply(model, plan, inplace=True)
    assert_reloads_equal(pruned, plan, tmp_path / "run", calib().input_ids[:2])


def test_too_few_tokens_is_refused_with_the_minimum():
    model = tiny_llama()
    plan = make_plan(model, [("block", 2)])[0]
    with pytest.raises(ConfigError, match="give at least 64 calibration tokens"):
        dc.repair(model, plan, tiny_calib(n=2, length=8), progress=False)


FINE = ["model.layers.2.mlp.up_proj", "model.layers.3.self_attn", "model.layers.4.mlp.down_proj"]


def fine_plan(model):
    return dc.plan_units(model, FINE)


def test_fine_repair_refits_the_edited_blocks_kept_writers():
    """The MLP writer of each edited block; the attention writer (inside the kept attention
    region) where the block's down-projection is pruned; none of a pruned region."""
    model = tiny_llama(seed=0)
    report = dc.repair(model, fine_plan(model), calib(), progress=False)["fine"]
    assert report["writers"] == [
        "model.layers.2.self_attn.o_proj",
        "model.layers.2.mlp.down_proj",
        "model.layers.3.mlp.down_proj",
        "model.layers.4.self_attn.o_proj",
    ]
    assert report["skipped"] == [
        "model.layers.3.self_attn.o_proj: pruned",
        "model.layers.4.mlp.down_proj: pruned",
    ]
    losses = report["check_nll"]
    assert report["kept"] and losses[str(report["ridge"])] == min(losses.values()) < losses["None"]


def test_fine_repair_of_conv1d_writers_with_bias(tmp_path):
    """GPT-2 (Conv1D writers with a bias): the repaired model computes the check loss the
    report chose, and the saved run reloads equal."""
    model = tiny_gpt2(seed=2)
    plan = dc.plan_units(model, ["transformer.h.2.mlp.c_fc", "transformer.h.4.mlp.c_fc"])
    _, check = halves(calib())
    report = dc.repair(model, plan, calib(), progress=False)["fine"]
    assert report["kept"] and len(report["writers"]) == 4
    pruned = dc.apply(model, plan, inplace=True)
    assert model_nll(pruned, check) == pytest.approx(min(report["check_nll"].values()), rel=1e-6)
    assert_reloads_equal(pruned, plan, tmp_path / "run", calib().input_ids[:2])


def test_fine_repair_leaves_post_norm_writers_alone():
    """Gemma3: every writer reaches the stream through a post-norm, so the fine refit fits
    nothing, says why, and changes no weight."""
    model = tiny_gemma3()
    before = copy.deepcopy(model.state_dict())
    plan = dc.plan_units(model, ["model.layers.1.mlp.up_proj", "model.layers.2.mlp.up_proj"])
    report = dc.repair(model, plan, calib(), progress=False)["fine"]
    assert report["writers"] == [] and not report["kept"] and len(report["skipped"]) == 4
    assert all("through one linear layer" in why for why in report["skipped"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def block_io(model, block: int, data) -> dict:
    """Per fit batch: the down-projection's input and output, the block's output (real tokens)."""
    seen = {"x": [], "m": [], "h": []}
    down = model.get_submodule(f"model.layers.{block}.mlp.down_proj")
    layer = model.get_submodule(f"model.layers.{block}")

    def on_down(module, args, out):
        seen["x"].append(args[0])
        seen["m"].append(out)

    def on_block(module, args, out):
        seen["h"].append(out[0] if isinstance(out, tuple) else out)

    hooks = [down.register_forward_hook(on_down), layer.register_forward_hook(on_block)]
    masks = run_masked(model, data, hooks)
    return {k: real_tokens(v, masks) for k, v in seen.items()}


def test_fine_refit_is_weighted_ridge_least_squares_of_the_pruned_block():
    """One edited block with dense input: its down-projection equals the independent solution
    of min Σ w‖X Aᵀ − (M + Y − H)‖² + λ‖A − W‖² (w = 1/‖Y‖², λ = ridge · mean diag XᵀwX) by
    ``torch.linalg.lstsq`` on the stacked system (the attention writer's fit is exact there:
    its block input and attention are the dense ones)."""
    model = tiny_llama(seed=0)
    path = "model.layers.2.mlp.down_proj"
    plan = dc.plan_units(model, ["model.layers.2.mlp.up_proj"])
    fit, _ = halves(calib())
    unrepaired = dc.apply(model, plan)
    plain, dense = block_io(unrepaired, 2, fit), block_io(model, 2, fit)
    report = dc.repair(model, plan, calib(), progress=False)["fine"]
    assert report["kept"]
    x, y = plain["x"], plain["m"] + dense["h"] - plain["h"]
    root = dense["h"].pow(2).sum(-1, keepdim=True).rsqrt()  # the tokens' weights, square-rooted
    lam = report["ridge"] * float((root * x).pow(2).sum(0).mean())
    prior = unrepaired.get_submodule(path).weight.detach().double().T
    ridge = torch.eye(x.shape[1], dtype=x.dtype) * lam**0.5
    stacked = torch.linalg.lstsq(torch.cat([root * x, ridge]), torch.cat([root * y, ridge @ prior]))
    refit = dc.apply(model, plan).get_submodule(path).weight.detach().double().T
    torch.testing.assert_close(refit, stacked.solution, rtol=1e-4, atol=1e-5)


def next_token_kl(dense, model, data) -> float:
    """Mean KL(dense ‖ model) of the next-token distribution over ``data``'s real tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data.batches():
            p = torch.log_softmax(dense(**batch).logits.double(), -1)
            q = torch.log_softmax(model(**batch).logits.double(), -1)
            mask = batch["attention_mask"].bool()
            total += float((p.exp() * (p - q)).sum(-1)[mask].sum())
            count += int(mask.sum())
    return total / count


@pytest.mark.parametrize("builder", [tiny_llama, tiny_gemma3])
def test_fine_ls_importance_is_the_kl_left_after_the_fine_refit(builder, monkeypatch):
    """Repair-aware fine importance (``ls``) of a unit = KL(dense ‖ pruned) of the next-token
    distribution over the held-back batches' real tokens, for the model pruned by that unit
    alone, repaired by the fine refit (its ridge pinned to the score's) and physically sliced.
    Gemma3: no writer can be refit, so the plain KL."""
    import depthcut.refit.fine as fine_refit

    monkeypatch.setattr(fine_refit, "FINE_RIDGES", (3.0,))
    model = builder(seed=0)
    first = dc.Budget(params_count=1)  # the first pick alone
    cfg = dc.PruneConfig(units=("fine",), importance="ls", strategy="unified", budget=first)
    scores = dc.score(model, cfg, calib(), progress=False)
    plan = dc.plan(scores, cfg, model)
    (unit,) = [a.path for a in plan.actions]
    repaired = copy.deepcopy(model)
    report = dc.repair(repaired, plan, calib(), progress=False)["fine"]
    assert report["kept"] == (builder is tiny_llama)
    _, check = halves(calib())
    expected = next_token_kl(model, dc.apply(repaired, plan, inplace=True), check)
    assert scores.unit_scores[unit] == pytest.approx(expected, rel=1e-3)
    if builder is tiny_llama:  # the refit makes up for part of the unit
        assert expected < 0.9 * next_token_kl(model, dc.apply(model, plan), check)


def test_cli_prune_and_apply_repair(capsys, tiny_dir, pattern_file, tmp_path):
    import json

    from support import prune_args, run

    args = prune_args(tiny_dir, tmp_path / "r", pattern_file, "--repair", "ls", "--n-samples", "8")
    args += ["--units", "block"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    plan = json.loads((tmp_path / "r" / "plan.json").read_text())
    assert plan["run"]["config"]["repair"] == "ls"
    assert [r["run"] for r in plan["run"]["repair"]["depth"]["runs"]]
    recipe = json.loads((tmp_path / "r" / "recipe.json").read_text())
    assert recipe["prune"]["repair"] == "ls"
    calib = ["--calib", pattern_file, "--n-samples", "8", "--seq-len", "32"]
    argv = ["apply", tiny_dir, tmp_path / "r" / "plan.json", "--out", tmp_path / "a"]
    code, _, err = run(capsys, *argv, "--repair", "ls", *calib)
    assert code == 0, err
    first, _ = dc.load(tmp_path / "r")
    again, _ = dc.load(tmp_path / "a")
    for key, value in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)


def test_attention_run_of_a_parallel_block_is_refused():
    model = tiny_neox(parallel=True)
    plan = make_plan(model, [("attention", 2)])[0]
    with pytest.raises(ConfigError, match="run in parallel: no stream between them"):
        dc.repair(model, plan, calib(), progress=False)
    sequential = tiny_neox(parallel=False)
    plan = make_plan(sequential, [("attention", 2)])[0]
    assert dc.repair(sequential, plan, calib(), progress=False)["depth"]["runs"][0]["writer"]


@pytest.mark.parametrize(("units", "expected"), [("neuron", "ls"), ("block", "none")])
def test_cli_repair_auto_is_ls_for_width_plans(
    capsys, tiny_dir, pattern_file, tmp_path, units, expected
):
    """The default --repair auto: ls for a neuron plan (whose fraction follows the budget
    when --neurons is not given), none for blocks."""
    import json

    from support import prune_args, run

    args = prune_args(tiny_dir, tmp_path / "r", pattern_file, "--units", units, "--n-samples", "8")
    code, _, err = run(capsys, *args)
    assert code == 0, err
    plan = json.loads((tmp_path / "r" / "plan.json").read_text())
    assert plan["run"]["config"]["repair"] == expected
    assert ("repair" in plan["run"]) == (expected == "ls")
