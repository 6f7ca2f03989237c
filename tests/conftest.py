import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)
from depthcut.quantization import quiet_torchao  # noqa: E402

quiet_torchao()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama saved as a local model directory (with its tokenizer)."""
    from tiny import save_tiny

    path = tmp_path_factory.mktemp("m") / "tiny"
    save_tiny(path)
    return path


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2's packaged tokenizer: one llama.cpp's converter knows (GGUF tests)."""
    from depthcut.models import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2-135m"))


@pytest.fixture(scope="module")
def pattern_file(tmp_path_factory):
    """Learnable tiny-vocabulary text (tiny.pattern_text) as a local text source."""
    from tiny import pattern_text

    path = tmp_path_factory.mktemp("t") / "pattern.txt"
    path.write_text(pattern_text(articles=40, length=120))
    return path


@pytest.fixture(scope="module")
def block_run(tmp_path_factory, tiny_dir, pattern_file):
    """A run directory: the tiny Llama with 30% of its parameters removed as whole blocks."""
    import depthcut.cli
    from support import prune_args

    out = tmp_path_factory.mktemp("r") / "pruned"
    argv = prune_args(tiny_dir, out, pattern_file, "--units", "block", "--budget", "params=0.3")
    assert depthcut.cli.main([str(a) for a in argv]) == 0
    return out


# Under CI every dependency CI installs must be there: a skip would hide its breakage. Only
# these skip there, each for a reason CI cannot change.
CI_SKIPS_ALLOWED = {
    "tests/export/test_export_vllm.py": "opt-in: `make test-vllm` builds vLLM's own venv",
}
_unexpected_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and os.environ.get("CI"):
        path = report.nodeid.split("::")[0]
        if path not in CI_SKIPS_ALLOWED and not hasattr(report, "wasxfail"):
            _unexpected_skips.append(f"{report.nodeid}: {report.longrepr[-1]}")


def pytest_sessionfinish(session, exitstatus):
    if _unexpected_skips and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _unexpected_skips:
        terminalreporter.section("skips CI does not allow (CI=1)")
        for line in _unexpected_skips:
            terminalreporter.write_line(line)
