"""Calibration whose activations are all zero (every token the padding id, whose embedding is
zero) leaves nothing to fit: the ls scores and refits keep the weights instead of failing on
a singular matrix."""

import torch

import depthcut as dc
from depthcut.data import CalibData
from depthcut.refit.ls import solve
from tiny import tiny_llama


def zero_calib(n: int = 16, length: int = 16) -> CalibData:
    ids = torch.zeros(n, length, dtype=torch.long)  # tiny_llama's padding_idx: a zero embedding
    return CalibData(ids, torch.ones_like(ids))


def test_solve_keeps_the_prior_when_the_inputs_are_all_zero():
    zero = torch.zeros(3, 3, dtype=torch.float64)
    prior = torch.randn(3, 3, dtype=torch.float64)
    torch.testing.assert_close(solve(zero, zero, 0.1, prior), prior)


def test_the_default_on_all_zero_activations_prunes_without_a_refit_change():
    model = tiny_llama(layers=4)
    cfg = dc.PruneConfig(budget=dc.Budget(params=0.2, count="non_embedding"))
    pruned, plan, _ = dc.prune(model, cfg, zero_calib(), progress=False)
    plain = dc.apply(model, plan)
    for (name, a), b in zip(pruned.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)  # nothing to fit: the weights are kept
