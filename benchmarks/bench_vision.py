"""Fine-grained depth pruning of the real packaged CIFAR-10 CNN (cifar-10-model 7.4.0).

Top-1 on held-out CIFAR-10 test images (9,000; the other 1,000 calibrate and fine-tune): the
dense model, each fine unit removed alone, Algorithm 9 (iterative Taylor) at 30%, and each of
those after a short full fine-tune on the 1,000 calibration images (3 epochs, Adam 1e-3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import depthcut as dc
from depthcut.inspect import search_space_text
from depthcut.vision import cifar_test_set, load_cifar_cnn, split_calibration, top1


def finetune(model, images, labels, epochs: int = 3, batch: int = 50):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            F.cross_entropy(model(images[idx]), labels[idx]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = load_cifar_cnn()
    images, labels = cifar_test_set()
    (cx, cy), (ex, ey) = split_calibration(images, labels)
    example = images[:2]
    print(search_space_text(model, example))
    print(f"\ndense top-1: {top1(model, images, labels):.2%} on all 10,000 test images\n")
    print("| model | params removed | top-1 (9,000 held out) | after 3-epoch fine-tune |")
    print("|---|---:|---:|---:|")
    print(f"| dense | 0% | {top1(model, ex, ey):.2%} | |")
    batches = [(cx[i : i + 250], cy[i : i + 250]) for i in range(0, len(cx), 250)]
    plans = {
        f"{u.path} alone": dc.plan_units(model, [u.path], example)
        for u in dc.fine_units(model, example)
    }
    plans["Algorithm 9, 30%"] = dc.cnn_plan(
        model, example, batches, F.cross_entropy, 0.3, progress=False
    )
    for name, plan in plans.items():
        pruned = dc.apply(model, plan)
        before = top1(pruned, ex, ey)
        after = top1(finetune(pruned, cx, cy), ex, ey)
        print(f"| {name} | {plan.fraction():.1%} | {before:.2%} | {after:.2%} |", flush=True)


if __name__ == "__main__":
    main()
