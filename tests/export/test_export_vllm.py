"""vLLM (its CPU build, in the separate ``.venv-vllm`` that ``make vllm`` creates) serves the
hf and hf-hetero exports of a pruned SmolLM2-135M with the greedy tokens of PyTorch.

Opt-in (``make test-vllm``): skipped where ``.venv-vllm`` does not exist."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import depthcut as dc
from depthcut.formats.common import greedy, prompts
from depthcut.formats.run import export_run
from depthcut.graph.structure import discover_structure
from depthcut.methods import describe
from depthcut.planning.plan import Action, Plan
from support import save_run

VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="make vllm creates .venv-vllm"),
]

SERVE = r"""
import json, sys
from vllm import LLM, SamplingParams

def main():
    folder, ids_file = sys.argv[1], sys.argv[2]
    ids = json.load(open(ids_file))
    llm = LLM(model=folder, dtype="float32", trust_remote_code=True, max_model_len=128,
              enforce_eager=True, gpu_memory_utilization=0.25)  # on CPU: share of RAM
    params = SamplingParams(temperature=0, max_tokens=16)
    outs = llm.generate([{"prompt_token_ids": row} for row in ids], params)
    print("TOKENS " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))

if __name__ == "__main__":
    main()
"""


def served_tokens(folder: Path, ids: torch.Tensor) -> list:
    script, ids_file = folder.parent / "serve.py", folder.parent / "ids.json"
    script.write_text(SERVE)
    ids_file.write_text(json.dumps(ids.tolist()))
    # a plain environment: what the test process exported (threads, offline flags of the
    # depthcut venv's libraries) is not the serving process's business
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    done = subprocess.run(
        [str(VLLM_PYTHON), str(script), str(folder), str(ids_file)],
        capture_output=True,
        text=True,
        cwd=folder.parent,
        timeout=900,
        env=env,
    )
    (folder.parent / "serve.log").write_text(done.stdout + done.stderr)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("TOKENS ")), None)
    errors = [ln for ln in done.stderr.splitlines() if "rror" in ln]
    assert line is not None, "\n".join(errors[:8])
    return json.loads(line[len("TOKENS ") :])


@pytest.mark.parametrize("fmt", ["hf", "hf-hetero"])
def test_vllm_serves_exports(tmp_path, fmt):
    model, tok = dc.load_model("smollm2-135m")
    info = describe(model, discover_structure(model))
    if fmt == "hf":
        actions = [Action("block", b, f"model.layers.{b}", 1) for b in (20, 24, 26)]
    else:  # no attention in block 3, no MLP in block 25, FFN 1436 (not ×256) in block 10
        actions = [
            Action("attention", 3, "model.layers.3.self_attn", 1),
            Action("mlp", 25, "model.layers.25.mlp", 1),
            Action("neuron", 10, "model.layers.10.mlp", 1, None, tuple(range(100))),
        ]
    pruned = save_run(tmp_path / "run", model, Plan(actions, info), tok)
    out = export_run(tmp_path / "run", fmt, tmp_path / "export")
    ids = prompts(pruned, tok)
    assert served_tokens(out, ids) == greedy(pruned, ids, 16).tolist()
