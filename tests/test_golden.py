"""Refactors change no result: scores, plans and pruned logits equal the saved goldens.

Everything but floating-point values must match exactly (unit ids, kinds, chosen units,
channel lists, parameter counts); floats match to 1e-5 relative, because another CPU's
kernels round differently in the last bits (the goldens were written on one machine and CI
runs on another). A changed selection or a changed score formula still fails.
"""

import json
import math

import pytest
import torch

from golden import CASES, FOLDER, compute

RTOL = 1e-5


def assert_same(found, expected, where="$"):
    """JSON trees equal: same keys, lengths, strings, ints; floats to ``RTOL``."""
    if isinstance(expected, float) or isinstance(found, float):
        assert isinstance(found, (int, float)), f"{where}: {found!r} is not a number"
        assert math.isclose(found, expected, rel_tol=RTOL, abs_tol=1e-12), (
            f"{where}: {found} != {expected}"
        )
    elif isinstance(expected, dict):
        assert isinstance(found, dict) and sorted(found) == sorted(expected), f"{where}: keys"
        for key in expected:
            assert_same(found[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(found, list) and len(found) == len(expected), f"{where}: length"
        for i, (a, b) in enumerate(zip(found, expected, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert found == expected, f"{where}: {found!r} != {expected!r}"


def test_assert_same_catches_a_changed_choice():
    assert_same({"a": [1, 2.0000001]}, {"a": [1, 2.0]})
    with pytest.raises(AssertionError):
        assert_same({"a": [1, 2.0]}, {"a": [3, 2.0]})
    with pytest.raises(AssertionError):
        assert_same({"a": "block:1"}, {"a": "block:2"})
    with pytest.raises(AssertionError):
        assert_same(1.001, 1.0)


@pytest.mark.parametrize("name", CASES)
def test_outputs_equal_the_goldens(name):
    out = compute(name)
    for part in ("scores", "plan"):
        text = (FOLDER / f"{name}.{part}.json").read_text()
        assert bool(out[part]) == bool(text), part  # the CNN case has no scores file
        if text:
            assert_same(json.loads(out[part]), json.loads(text), part)
    expected = torch.load(FOLDER / f"{name}.logits.pt")
    torch.testing.assert_close(out["logits"], expected, rtol=1e-4, atol=1e-5)
