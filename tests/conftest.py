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
