"""Save a pruned model so that it reloads to the same logits; load it back.

Layout: ``model.safetensors`` + ``config.json`` (the pruned config) + tokenizer files +
``plan.json`` + ``depthcut.json`` (depthcut version, base config, plan). Whole-block plans
reload with plain ``AutoModelForCausalLM.from_pretrained``; every plan reloads with
``depthcut.load``, which rebuilds the base architecture, applies the plan and loads weights.
Output is written to a temporary sibling directory and renamed when complete and verified.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthcut import log
from depthcut.card import write_card
from depthcut.errors import ModelLoadError, OutputExistsError, OutputWriteError
from depthcut.graph.structure import probe_inputs
from depthcut.hftypes import HFModel
from depthcut.planning.plan import Plan
from depthcut.skeleton import build_from_config
from depthcut.version import FORMAT_VERSION
from depthcut.weights import checkpoint_to_model_keys, tied_keys

QUANTIZED_FILE = "quantized.safetensors"


def _version() -> str:
    from depthcut.version import __version__

    return __version__


def prepare_output(out_dir: str | Path, overwrite: bool) -> Path:
    """Validate the output path before any work; returns it resolved."""
    out = Path(out_dir).resolve()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists (use --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    return out


def _tmp_prefix(out: Path) -> str:
    """A temporary sibling's name prefix; the writer's PID follows it, so that a folder left
    by a killed writer (SIGKILL, OOM: no cleanup ran) can be told from a live one."""
    return f".{out.name}.tmp-"


def _writer_alive(name: str, prefix: str) -> bool:
    pid = name[len(prefix) :].split("-", 1)[0]
    if not pid.isdigit():
        return True  # not ours to judge: left alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove the temporary siblings of ``out`` whose writer process no longer runs (a run
    killed while writing); says so in one status line each (``depthcut.log``); returns them."""
    prefix = _tmp_prefix(out)
    stale = [
        p
        for p in sorted(out.parent.glob(prefix + "*"))
        if p.is_dir() and not _writer_alive(p.name, prefix)
    ]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        log.status(f"depthcut: removed {path.name}, left by a killed run")
    return stale


def atomic_dir(out: Path, write, overwrite: bool = False) -> Path:
    """Run ``write(tmp_dir)`` and rename the temp dir to ``out`` only when it succeeded."""
    try:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{_tmp_prefix(out)}{os.getpid()}-"))
    except OSError as err:
        raise OutputWriteError(f"{out}: cannot write there ({err.strerror})") from None
    try:
        write(tmp)
        if out.exists() and overwrite:
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputWriteError(
            f"{out}: writing failed ({err.strerror or err}); nothing was kept"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def logits_on_probe(model: nn.Module) -> torch.Tensor:
    """Logits on a fixed probe (the last hidden state for encoders)."""
    with torch.no_grad():
        out = model(**probe_inputs(model, 16), use_cache=False)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def save(
    model: nn.Module,
    plan: Plan | list[Plan],
    out_dir: str | Path,
    tokenizer=None,
    overwrite: bool = False,
    verify: bool = True,
    extra=None,
    meta: dict | None = None,
) -> Path:
    """Write the pruned model; with ``verify`` reload it and assert identical logits.

    ``plan`` may be a list of plans applied one after another (an iterative prune → recover
    run); each was made for the model the previous ones left. ``meta`` adds keys to
    ``depthcut.json`` (e.g. ``source``, ``recovery``, ``quantization``); ``extra(tmp_dir)``
    may add files (scores, report) before the directory is renamed.

    >>> dc.save(pruned, plan, "out/smollm2-bi25", tok)  # doctest: +SKIP
    """
    out = prepare_output(out_dir, overwrite)
    plans = [plan] if isinstance(plan, Plan) else list(plan)
    meta = dict(meta or {})

    def write(tmp: Path) -> None:
        _write_weights(model, tmp, meta)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for n, p in enumerate(plans, 1):
            p.save(tmp / ("plan.json" if len(plans) == 1 else f"plan-{n}.json"))
        plan_dicts = [p.to_dict() for p in plans]
        info = {"format": FORMAT_VERSION, "depthcut": _version(), "plans": plan_dicts}
        (tmp / "depthcut.json").write_text(json.dumps(info | meta, indent=2, sort_keys=True) + "\n")
        if extra is not None:
            extra(tmp)
        write_card(tmp, out.name, plan_dicts, meta)  # after extra: it reads report.json
        if verify:
            log.status(f"depthcut: verified {out.name}: {_verify(model, plans, tmp)}")

    return atomic_dir(out, write, overwrite)


def load(path: str | Path, with_tokenizer: bool = True):
    """(model, tokenizer or None) from a directory written by :func:`save`."""
    from transformers import AutoTokenizer

    from depthcut.methods import apply_plan

    path = Path(path)
    meta = read_meta(path)
    plans = [Plan.from_dict(p) for p in meta["plans"]]
    model = build_from_config(plans[0].model["config"])
    for plan in plans:
        apply_plan(model, plan, inplace=True)
    if meta.get("quantization"):
        model = _load_quantized(model, path, meta["quantization"])
    else:
        _load_weights(model, path)
    model.eval()
    has_tok = with_tokenizer and (path / "tokenizer_config.json").exists()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True) if has_tok else None
    return model, tok


def read_meta(path: str | Path) -> dict:
    """``depthcut.json`` of a saved run, with ``plans`` always a list."""
    meta_file = Path(path) / "depthcut.json"
    if not meta_file.exists():
        raise ModelLoadError(f"{path}: not a depthcut output (no depthcut.json)")
    meta = json.loads(meta_file.read_text())
    if "plans" not in meta:  # format 1: one plan
        meta["plans"] = [meta.pop("plan")]
    return meta


@contextmanager
def _no_transformers_bars() -> Iterator[None]:
    """transformers' own progress bars ("Writing model shards") off for the duration: a
    library call shows nothing (depthcut's bars are its own, behind ``progress``)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _write_weights(model: HFModel, tmp: Path, meta: dict) -> None:
    """Float models via ``save_pretrained``; int8 models as ``quantized.safetensors`` (no
    ``model.safetensors``, so plain ``from_pretrained`` cannot misread them)."""
    from depthcut.quantization import QuantizeConfig, is_quantized, quantized_state

    if not is_quantized(model):
        with _no_transformers_bars():
            model.save_pretrained(tmp)
        return
    from safetensors.torch import save_file

    meta.setdefault("quantization", QuantizeConfig("dynamic_int8").to_dict())
    model.config.save_pretrained(tmp)
    save_file(quantized_state(model), str(tmp / QUANTIZED_FILE))


def _load_quantized(model: nn.Module, path: Path, info: dict) -> nn.Module:
    from safetensors.torch import load_file

    from depthcut.quantization import QuantizeConfig, load_quantized_state

    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in info.items()}
    cfg = QuantizeConfig(**fields)
    return load_quantized_state(model, cfg, load_file(path / QUANTIZED_FILE))


def _load_weights(model: HFModel, path: Path) -> None:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    state = checkpoint_to_model_keys(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = tied_keys(model)
    if unexpected or set(missing) - tied:
        raise ModelLoadError(
            f"{path}: weights do not fit the plan (missing {sorted(set(missing) - tied)[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _verify(model: nn.Module, plans: list[Plan], folder: Path) -> str:
    """Block by block where the plan can be rebuilt on ``meta`` (depth plans), else by
    reloading the directory and comparing logits; returns how it was checked."""
    from depthcut.verify import blockwise_applies, verify_blockwise

    if blockwise_applies(model, plans):
        verify_blockwise(model, plans[0], folder)
        return "saved tensors and every rebuilt block match, block by block"
    reloaded, _ = load(folder, with_tokenizer=False)
    torch.testing.assert_close(logits_on_probe(reloaded), logits_on_probe(model))
    return "reloaded logits match"
