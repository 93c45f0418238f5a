"""Parameter groups (per-stage LR multipliers, per-kind weight decay) and the LR schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimizerCfg, ScheduleCfg


def _lr_mult(name: str, model: nn.Module) -> float:
    if hasattr(model, "param_lr_mults"):  # full-name prefixes (Cascade: backbone stages + 1/stage-weight heads)
        for prefix, m in model.param_lr_mults().items():
            if name.startswith(prefix if prefix.endswith(".") else prefix + "."):
                return m
        return 1.0
    mults = getattr(getattr(model, "backbone", None), "lr_mults", {}) or {}
    if name.startswith("backbone."):
        rest = name[len("backbone."):]
        for prefix, m in mults.items():
            if rest == prefix or rest.startswith(prefix + "."):
                return m
    return 1.0


def param_groups(model: nn.Module, cfg: OptimizerCfg, base_lr: float) -> list[dict]:
    """One group per (lr multiplier, weight decay) pair. BN parameters get `norm_decay`; biases get
    `bias_decay` and `bias_lr_mult`; backbone weights get `backbone_weight_decay` (Paddle applies these
    per parameter, which overrides the optimizer's global L2, spec §2.3)."""
    norm_params = set()
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            norm_params.update(id(p) for p in m.parameters(recurse=False))
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_backbone = name.startswith("backbone.")
        w_decay = cfg.backbone_weight_decay if (in_backbone and cfg.backbone_weight_decay is not None) \
            else cfg.weight_decay
        mult = _lr_mult(name, model)
        if id(p) in norm_params:
            decay = cfg.norm_decay
        elif name.endswith(".bias"):
            decay = w_decay if cfg.bias_decay is None else cfg.bias_decay
            mult *= cfg.bias_lr_mult
        else:
            decay = w_decay
        groups.setdefault((mult, decay), []).append(p)
    return [{"params": ps, "lr": base_lr * mult, "initial_lr": base_lr * mult, "lr_mult": mult,
             "weight_decay": decay} for (mult, decay), ps in sorted(groups.items())]


def build_optimizer(model: nn.Module, cfg: OptimizerCfg, base_lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, base_lr)
    if cfg.type == "momentum":
        return torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=base_lr)


def lr_factor(it: int, cfg: ScheduleCfg) -> float:
    """LR multiplier at iteration `it` (0-based): warmup (linear from warmup_factor) then cosine / piecewise.

    Like Paddle's LinearWarmup, warmup ramps towards the value the main schedule has at the end of warmup."""
    if cfg.type == "cosine":
        period = cfg.cosine_iters or cfg.max_iters
        main = 0.5 * (1.0 + math.cos(math.pi * min(it, period) / period))
    elif cfg.type == "piecewise":
        main = cfg.gamma ** sum(it >= m for m in cfg.milestones)
    else:
        main = 1.0
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        return (cfg.warmup_factor * (1 - alpha) + alpha) * lr_factor(cfg.warmup_iters, cfg)
    return main


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
