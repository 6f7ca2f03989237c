"""Golden outputs of the score → plan → apply path on tiny models, saved before a refactor:
scores.json (minus wall time), plan.json bytes and the pruned model's logits must stay
identical (``test_golden.py``). ``python tests/golden.py`` rewrites them — only do that for a
change that is meant to alter results, and say so in the commit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import depthcut as dc  # noqa: E402
from tiny import VOCAB, tiny_calib, tiny_llama  # noqa: E402
from tiny_cnn import image_batch, tiny_resnet  # noqa: E402

FOLDER = Path(__file__).parent / "golden"
LLM_CASES = {
    "block": dict(units=("block",), importance="bi", budget=dc.Budget(params=0.3)),
    "sublayer": dict(units=("attention", "mlp"), importance="angular", budget=dc.Budget(0.2)),
    "fine_interleave": dict(
        units=("fine",),
        importance="angular",
        strategy="interleave",
        budget=dc.Budget(0.15),
        repair="none",
    ),
    "fine_iterative": dict(
        units=("fine",),
        importance="angular",
        strategy="iterative",
        budget=dc.Budget(0.15),
        repair="none",
    ),
    "head_neuron": dict(
        units=("head", "neuron"), heads=0.25, neurons=0.25, width_importance="taylor", repair="none"
    ),
    # PruneConfig's default (= the CLI's): neurons ranked by what the refit cannot recover,
    # then the ls refit
    "default": dict(budget=dc.Budget(params=0.25, count="non_embedding")),
    "block_ls": dict(units=("block",), importance="bi", budget=dc.Budget(0.3), repair="ls"),
    "block_patch": dict(units=("block",), importance="bi", budget=dc.Budget(0.3), repair="patch"),
}


def scores_json(scores: dc.Scores) -> str:
    data = scores.to_dict()
    data["cost"] = {k: v for k, v in data.get("cost", {}).items() if k != "seconds"}
    return json.dumps(data, indent=2, sort_keys=True)


def llm_case(name: str) -> dict:
    torch.manual_seed(0)
    model = tiny_llama(layers=6)
    cfg = dc.PruneConfig(**LLM_CASES[name])
    scores = dc.score(model, cfg, tiny_calib(), progress=False)
    plan = dc.plan(scores, cfg, model)
    pruned = dc.apply(model, plan, tiny_calib(), progress=False)  # repaired by the plan's repair
    plan.run.get("repair", {}).pop("seconds", None)  # the refit's choices and check losses stay
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = pruned(input_ids=ids, use_cache=False).logits
    return {"scores": scores_json(scores), "plan": plan.to_json(), "logits": logits}


def cnn_case() -> dict:
    from depthcut.methods.fine.cnn import cnn_plan

    torch.manual_seed(0)
    model, x = tiny_resnet(), image_batch()
    batches = []
    for b in range(3):
        xb = image_batch(4, seed=b)
        with torch.no_grad():
            batches.append((xb, model(xb).argmax(1)))
    plan = cnn_plan(model, x, batches, F.cross_entropy, 0.2, progress=False)
    with torch.no_grad():
        logits = dc.apply(model, plan)(x)
    return {"scores": "", "plan": plan.to_json(), "logits": logits}


def compute(name: str) -> dict:
    return cnn_case() if name == "cnn" else llm_case(name)


CASES = [*LLM_CASES, "cnn"]


def write_all() -> None:
    FOLDER.mkdir(exist_ok=True)
    for name in CASES:
        out = compute(name)
        (FOLDER / f"{name}.scores.json").write_text(out["scores"])
        (FOLDER / f"{name}.plan.json").write_text(out["plan"])
        torch.save(out["logits"], FOLDER / f"{name}.logits.pt")
        print(f"{name}: {len(out['plan'])} plan bytes, logits {tuple(out['logits'].shape)}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    write_all()
