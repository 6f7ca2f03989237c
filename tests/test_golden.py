"""Refactors change no result: scores, plan bytes and pruned logits equal the saved goldens."""

import pytest
import torch

from golden import CASES, FOLDER, compute


@pytest.mark.parametrize("name", CASES)
def test_outputs_equal_the_goldens(name):
    out = compute(name)
    assert out["scores"] == (FOLDER / f"{name}.scores.json").read_text()
    assert out["plan"] == (FOLDER / f"{name}.plan.json").read_text()
    expected = torch.load(FOLDER / f"{name}.logits.pt")
    torch.testing.assert_close(out["logits"], expected, rtol=0, atol=0)
