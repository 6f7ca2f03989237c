"""Run by test_two_processes.py, alone or under ``torchrun --nproc_per_node 2``: recovers a
tiny pruned Llama on fixed windows and (rank 0) saves the loss curve and the final weights."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

import depthcut as dc  # noqa: E402
from depthcut.data import pack_tokens  # noqa: E402
from depthcut.recovery.config import RecoverConfig, rank  # noqa: E402
from depthcut.recovery.run import recover  # noqa: E402
from support import make_plan  # noqa: E402
from tiny import VOCAB, tiny_llama  # noqa: E402


def main(out: str, method: str) -> None:
    torch.set_num_threads(1)
    model = tiny_llama(layers=6)
    plan, _, _ = make_plan(model, [("block", 2), ("mlp", 3)])
    pruned = dc.apply(model, plan)
    ids = [3 + (7 * i) % (VOCAB - 3) for i in range(3000)]
    data = pack_tokens(ids[:2400], 80, 30, 4), pack_tokens(ids[2400:], 8, 30, 4)
    lr = 1e-2 if method == "lora" else 3e-3
    cfg = RecoverConfig(method=method, lr=lr, max_steps=8, eval_every=4, lora_dropout=0.0)
    recovered, history = recover(pruned, None, cfg, progress=False, data=data)
    if rank() == 0:
        torch.save({"history": history, "state": recovered.state_dict()}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
