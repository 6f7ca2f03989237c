import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)
from depthcut.quantize import quiet_torchao  # noqa: E402

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


@pytest.fixture(scope="module")
def pattern_file(tmp_path_factory):
    """Learnable tiny-vocabulary text (tiny.pattern_text) as a local text source."""
    from tiny import pattern_text

    path = tmp_path_factory.mktemp("t") / "pattern.txt"
    path.write_text(pattern_text(articles=40, length=120))
    return path
