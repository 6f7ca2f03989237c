"""Repair-aware head / neuron importance (``width_importance="ls"``): the greedy order against
brute-force least squares, the grams against hand-collected activations, plans end to end."""

import itertools
import subprocess
import sys

import pytest
import torch

import depthcut as dc
from depthcut.graph.structure import discover_structure
from depthcut.methods.width.layers import width_layers
from depthcut.methods.width.repaired import (
    DAMP,
    SLAB,
    GramHooks,
    add_gram,
    damped_inverse_,
    greedy_order,
    greedy_scores,
)
from tiny import tiny_calib, tiny_gemma3, tiny_llama, tiny_neox, tiny_tokenizer


def peak_growth_in_matrices(setup: str, call: str) -> float:
    """How much ``call`` grows the peak RSS of a fresh process after ``setup`` (``torch``
    imported), in 4,000² float64 matrices."""
    code = (
        f"import resource, torch\n{setup}\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"{call}\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) * 1024 / 4000**2 / 8)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout)


def problem(owned: int, units: int = 6, out: int = 5, tokens: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, units * owned, generator=g, dtype=torch.float64)
    x[:, 1] += 0.8 * x[:, 0]  # correlated channels: the refit matters
    w = torch.randn(out, units * owned, generator=g, dtype=torch.float64)
    table = [tuple(range(u * owned, (u + 1) * owned)) for u in range(units)]
    return x, w, table


def refit_error(x, w, table, removed) -> float:
    """min over refits of the kept columns of ‖X(A − W)ᵀ‖² + λ‖A − W‖², by lstsq on the
    augmented rows [X; √λ I] (the dampened problem the OBS steps solve)."""
    lam = DAMP * float((x.T @ x).diagonal().mean())
    z = torch.cat([x, lam**0.5 * torch.eye(x.shape[1], dtype=x.dtype)])
    gone = {c for u in removed for c in table[u]}
    kept = [c for c in range(x.shape[1]) if c not in gone]
    target = z @ w.T
    coef = torch.linalg.lstsq(z[:, kept], target).solution
    return float((z[:, kept] @ coef - target).pow(2).sum())


@pytest.mark.parametrize(("owned", "units"), [(1, 6), (3, 6), (2, 14)])
def test_greedy_steps_are_the_least_squares_errors(owned, units):
    """14 units: H and W compacted three times along the order (every 4 steps)."""
    x, w, table = problem(owned, units=units, tokens=60)
    order = greedy_order(w, x.T @ x, table, steps=len(table))
    assert [len(units) for units, _ in order] == [1] * (len(table) - 1)
    removed, total = [], 0.0
    for units, delta in order:
        # the step's pick is the cheapest single addition, checked by brute force
        left = [u for u in range(len(table)) if u not in removed]
        brute = {u: refit_error(x, w, table, removed + [u]) for u in left}
        assert units[0] == min(brute, key=brute.get)
        removed += units
        total += delta
        torch.testing.assert_close(total, refit_error(x, w, table, removed), rtol=1e-9, atol=1e-9)


def test_chunked_steps_remove_several_units_at_their_joint_error():
    x, w, table = problem(1, units=8)
    order = greedy_order(w, x.T @ x, table, steps=4)  # 2 units a step
    assert [len(units) for units, _ in order] == [2, 2, 2, 1]
    removed, total = [], 0.0
    for units, delta in order:
        removed += units
        total += delta
        torch.testing.assert_close(total, refit_error(x, w, table, removed), rtol=1e-9, atol=1e-9)


def test_scores_follow_the_greedy_order_and_keep_the_last_unit():
    x, w, table = problem(1, units=7)
    order = greedy_order(w, x.T @ x, table, steps=len(table))
    scores = greedy_scores(w, x.T @ x, table, steps=len(table))
    ranked = sorted(range(len(table)), key=lambda u: scores[u])
    assert ranked[:-1] == [units[0] for units, _ in order]
    assert all(a <= b for a, b in itertools.pairwise(scores[u] for u in ranked))
    assert scores[ranked[-1]] > scores[ranked[-2]]


def test_grams_weight_tokens_by_the_block_input():
    model = tiny_llama(layers=3)
    calib = tiny_calib(n=4, pad_last=5)
    layers = width_layers(model, discover_structure(model), "neuron")
    modules = dict(model.named_modules())
    hooks = GramHooks(layers, model.model.layers, modules)
    seen = {}
    handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(
        lambda m, a: seen.setdefault("x", []).append(a[0])
    )
    with torch.no_grad():
        blocks_in = []
        for batch in calib.batches():
            hooks.state["mask"] = batch["attention_mask"].bool()
            out = model(**batch, use_cache=False, output_hidden_states=True)
            blocks_in.append((out.hidden_states[1], hooks.state["mask"]))
    hooks.remove()
    handle.remove()
    expected = 0
    for x, (h, mask) in zip(seen["x"], blocks_in):
        xs, hs = x[mask].double(), h[mask].double()
        d = 1.0 / hs.pow(2).mean(-1)
        expected = expected + xs.T @ torch.diag(d) @ xs
    # each batch's product runs in float32 (batch_gram): float32 accuracy of the whole matrix
    scale = float(expected.abs().max())
    torch.testing.assert_close(hooks.grams["neuron:1"], expected, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("builder", [tiny_llama, tiny_neox, tiny_gemma3])
@pytest.mark.parametrize("kind", ["head", "neuron"])
def test_ls_plans_apply_and_reload(tmp_path, builder, kind):
    model = builder(layers=5)
    key = "heads" if kind == "head" else "neurons"
    cfg = dc.PruneConfig(units=(kind,), width_importance="ls", repair="ls", **{key: 0.3})
    pruned, plan, _ = dc.prune(model, cfg, tiny_calib(n=12, length=24), progress=False)
    assert plan.actions and all(a.kind == kind for a in plan.actions)
    path = tmp_path / "run"
    dc.save(pruned, plan, path, tiny_tokenizer())
    ids = torch.randint(3, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(
            dc.load(path)[0](input_ids=ids).logits, pruned(input_ids=ids).logits
        )


def test_a_post_norm_weights_tokens_by_its_gain():
    """Gemma3: the MLP's output passes post_feedforward_layernorm before the stream, so each
    token is also weighted by that norm's output / input mean square."""
    model = tiny_gemma3(layers=3)
    calib = tiny_calib(n=4, pad_last=5)
    layers = width_layers(model, discover_structure(model), "neuron")
    assert layers[1].post_norms == ("model.layers.1.post_feedforward_layernorm",)
    hooks = GramHooks(layers, model.model.layers, dict(model.named_modules()))
    seen = {}
    mlp = model.model.layers[1]
    handles = [
        mlp.mlp.down_proj.register_forward_pre_hook(
            lambda m, a: seen.setdefault("x", []).append(a[0])
        ),
        mlp.post_feedforward_layernorm.register_forward_hook(
            lambda m, a, o: seen.setdefault("yz", []).append((a[0], o))
        ),
        mlp.register_forward_pre_hook(
            lambda m, a, k: seen.setdefault("h", []).append(a[0] if a else k["hidden_states"]),
            with_kwargs=True,
        ),
    ]
    with torch.no_grad():
        for batch in calib.batches():
            hooks.state["mask"] = batch["attention_mask"].bool()
            model(**batch, use_cache=False)
    hooks.remove()
    for handle in handles:
        handle.remove()
    expected = 0
    masks = [b["attention_mask"].bool() for b in calib.batches()]
    for x, (y, z), h, mask in zip(seen["x"], seen["yz"], seen["h"], masks):
        gain = z[mask].double().pow(2).mean(-1) / y[mask].double().pow(2).mean(-1)
        d = gain / h[mask].double().pow(2).mean(-1)
        xs = x[mask].double()
        expected = expected + xs.T @ torch.diag(d) @ xs
    # each batch's product runs in float32 (batch_gram): float32 accuracy of the whole matrix
    scale = float(expected.abs().max())
    torch.testing.assert_close(hooks.grams["neuron:1"], expected, rtol=0, atol=1e-6 * scale)


def test_a_gram_wider_than_a_slab_sums_every_batch_and_is_symmetric():
    """Three batches of an input 2 slabs and a part wide: every block of XᵀDX (upper ones
    multiplied, lower ones mirrored) at float32 accuracy of the products."""
    width = 2 * SLAB + 76
    g = torch.Generator().manual_seed(0)
    grams, expected = {}, 0
    for _ in range(3):
        x = torch.randn(200, width, generator=g)
        w = torch.rand(200, generator=g, dtype=torch.float64) + 0.5
        add_gram(grams, "k", x, w)
        expected = expected + (x.double() * w[:, None]).T @ x.double()
    gram = grams["k"]
    assert gram.dtype == torch.float64 and gram.shape == (width, width)
    scale = float(expected.abs().max())
    torch.testing.assert_close(gram, expected, rtol=0, atol=1e-6 * scale)
    off = torch.ones(width, width, dtype=torch.bool).triu(SLAB)  # outside the diagonal slabs
    assert torch.equal(gram[off], gram.T[off])


def test_a_batch_adds_only_slab_sized_temporaries_to_the_gram():
    """A second batch into a 4,000-wide float64 gram, in a fresh process: the peak grows by
    less than a tenth of the matrix (the whole float32 product promoted to float64 by the add
    grew it by 1.5 matrices)."""
    setup = (
        "from depthcut.methods.width.repaired import add_gram\n"
        "x, w, grams = torch.randn(512, 4000), torch.rand(512, dtype=torch.float64), {}\n"
        "add_gram(grams, 'k', x, w)"
    )
    assert peak_growth_in_matrices(setup, "add_gram(grams, 'k', x, w)") < 0.1


def test_the_damped_inverse_is_exact_and_needs_no_second_matrix():
    """(G + λI)⁻¹ in G's own memory, across several slabs of the mirroring; measured in a
    fresh process: its peak grows by less than half a matrix (torch's cholesky(out=G) grows
    it by one)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 1100, generator=g, dtype=torch.float64)
    gram = x.T @ x
    damped = gram + DAMP * float(gram.diagonal().mean()) * torch.eye(1100, dtype=torch.float64)
    h = damped_inverse_(gram)
    assert h.data_ptr() == gram.data_ptr()
    torch.testing.assert_close(h, torch.linalg.inv(damped), rtol=1e-9, atol=1e-12)
    setup = (
        "from depthcut.methods.width.repaired import damped_inverse_\n"
        "g = torch.rand(4000, 4000, dtype=torch.float64).mul_(1e-3); g.diagonal().add_(1.0)"
    )
    assert peak_growth_in_matrices(setup, "damped_inverse_(g)") < 0.5
