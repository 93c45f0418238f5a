"""Fit a detector to a handful of photos until it reaches a target AP50, with a step cap.

The overfit tests and the fitted-fixture tools all ask the same question -- does this model learn these photos? --
and must not depend on how many optimizer steps a CPU needs (AVX2 and AVX-512 float kernels change the trajectory):
so they train full-batch to a target, evaluating every `eval_every` steps, and stop at the target or at the cap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .evaluate import evaluate


@dataclass
class FitResult:
    steps: int
    stats: dict = field(default_factory=dict)     # the last evaluation's COCO stats ({} if none ran)
    losses: dict = field(default_factory=dict)    # the last step's named losses (floats)
    reached: bool = False                          # stopped at the target, not at the cap


def fit_to_ap50(model, images, targets, dataset, target_ap50: float, max_steps: int, eval_every: int = 25,
                lr: float = 3e-3, iteration_hook: Callable | None = None, eval_batch: int = 8,
                log: Callable[[str], None] | None = None) -> FitResult:
    """AdamW (lr, no weight decay) on the whole batch (`images`, `targets` as the model's training call takes
    them) until `dataset`'s AP50 >= target_ap50 or max_steps; `iteration_hook(model, step)` runs before each
    step (PicoDet's assigner switch). Evaluation is in eval mode, so BN running statistics are what is judged."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    result = FitResult(steps=0)
    while result.steps < max_steps:
        model.train()
        if iteration_hook is not None:
            iteration_hook(model, result.steps)
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        result.steps += 1
        result.losses = {k: float(v) for k, v in losses.items()}
        if result.steps % eval_every == 0:
            result.stats = dict(evaluate(model, dataset, batch_size=eval_batch, progress=False))
            if log is not None:
                log(f"step {result.steps}: loss {float(loss):.3f} AP50 {result.stats['AP50']:.3f} "
                    f"AP {result.stats['AP']:.3f}")
            if result.stats["AP50"] >= target_ap50:
                result.reached = True
                break
    model.eval()
    return result
