"""Exponential moving average of the weights (BN buffers copied), used when a recipe asks for it."""
from __future__ import annotations

import copy

import torch


class ModelEMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        # warm-up of the decay so early weights are not dominated by the random init
        d = self.decay * (1 - pow(2.718281828, -self.updates / 2000))
        msd = model.state_dict()
        for k, v in self.module.state_dict(keep_vars=True).items():  # the tensors themselves: resize_ sticks
            src = msd[k].detach()
            if v.shape != src.shape:  # shaped at the first forward: QAT observers' per-channel scales start as [1]
                v.resize_(src.shape).copy_(src)
            elif v.dtype.is_floating_point:
                v.mul_(d).add_(src, alpha=1 - d)
            else:
                v.copy_(src)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
