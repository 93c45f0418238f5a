"""Structured filter pruning of the YOLOv3 head (spec §5.1: PaddleSlim `Pruner`, FPGM, "prune75875").

The seed prunes the 18 head convs `yolo_block.{0,1,2}.{0.0,0.1,1.0,1.1,2,tip}.conv.weights` (static Paddle names)
by output filter: 75 % in blocks 0/1 and 87.5 % in block 2. torch-pruning's `DependencyGraph` does the rewiring
(the conv's BN, the consumers' input channels); the filters to drop are ranked on the pruned conv's own weight,
as PaddleSlim's criteria do.

The result is a smaller dense model of the same class: its per-block widths land in `model.block_widths`, and
`pruned_config` writes them into the zoo config's `model.block_widths`, so `pocketdet.load` rebuilds it.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from ..models.yolov3 import PRUNE_NAME_MAP, YOLOv3

CRITERIA = ("fpgm", "l1", "l2")

# The seed's recipe (mobile README "Notes on YOLOv3 pruning"): 18 params, "75875".
SEED_PRUNE_PARAMS: list[str] = list(PRUNE_NAME_MAP)
SEED_PRUNE_RATIOS: list[float] = [0.75] * 12 + [0.875] * 6

# Output channels that must keep their width (spec §5.1): the transitions feed a concat whose layout the
# exported graph fixes, the outputs are A*(5+C) wide by definition, and the backbone is not pruned.
_PROTECTED_PREFIXES = ("backbone.", "neck.yolo_transition.", "yolo_head.")


class PruneError(ValueError):
    pass


# -- criteria ------------------------------------------------------------------------------------------
def filter_scores(weight: torch.Tensor, criterion: str) -> torch.Tensor:
    """Importance of each output filter of a conv weight [O, I, kh, kw]; the lowest are pruned.

    fpgm: summed L2 distance of a filter to all others (arXiv 1811.00250): the filters nearest the geometric
    median are the most replaceable by the rest, so they score lowest. l1 / l2: the filter's norm.
    (torch-pruning's FPGMImportance measures distances between |w| vectors and mixes in the consumers' input
    weights; PaddleSlim's `geometry_median` uses the signed filters of the pruned conv alone, which we follow.)
    """
    w = weight.detach().flatten(1).double()
    if criterion == "fpgm":
        return torch.cdist(w[None], w[None])[0].sum(1)
    if criterion == "l1":
        return w.abs().sum(1)
    if criterion == "l2":
        return w.pow(2).sum(1).sqrt()
    raise PruneError(f"unknown pruning criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")


def filters_to_prune(weight: torch.Tensor, ratio: float, criterion: str) -> list[int]:
    """Indices of the round(ratio * O) lowest-scoring filters (PaddleSlim rounds the pruned count)."""
    n_out = weight.shape[0]
    n_prune = int(round(ratio * n_out))
    if n_prune >= n_out:
        raise PruneError(f"ratio {ratio} would remove all {n_out} filters")
    if n_prune <= 0:
        return []
    # stable sort: among equal scores (exact duplicates) the earlier filter goes first, deterministically
    order = torch.sort(filter_scores(weight, criterion), stable=True).indices
    return sorted(order[:n_prune].tolist())


# -- pattern matching ----------------------------------------------------------------------------------
def _conv_name(pattern: str) -> str:
    """A static Paddle parameter name -> our conv module name; module names pass through (a `.weight`
    suffix is dropped)."""
    if pattern in PRUNE_NAME_MAP:
        return PRUNE_NAME_MAP[pattern]
    return pattern[: -len(".weight")] if pattern.endswith(".weight") else pattern


def resolve_targets(model: nn.Module, patterns: list[str], ratios: list[float]) -> dict[str, float]:
    """{conv module name: ratio}, in model order. One ratio for all patterns, or one per pattern; a pattern is
    a static Paddle name (`yolo_block.0.0.0.conv.weights`), a module name or an fnmatch glob over conv module
    names (`neck.yolo_block.2.*`)."""
    if not patterns:
        raise PruneError("no parameters to prune given")
    if len(ratios) == 1:
        ratios = list(ratios) * len(patterns)
    if len(ratios) != len(patterns):
        raise PruneError(f"{len(patterns)} patterns but {len(ratios)} ratios (give one, or one per pattern)")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    targets: dict[str, float] = {}
    for pat, ratio in zip(patterns, ratios):
        if not 0.0 <= float(ratio) < 1.0:
            raise PruneError(f"ratio for {pat!r} must be in [0, 1), got {ratio}")
        name = _conv_name(pat)
        hits = [n for n in convs if fnmatch.fnmatchcase(n, name)]
        # a ConvBNLayer name (`...conv0`) means its conv
        hits = hits or [n for n in convs if fnmatch.fnmatchcase(n, name + ".conv")]
        if not hits:
            raise PruneError(f"pattern {pat!r} matches no conv layer (expected a static name such as "
                             f"'yolo_block.0.0.0.conv.weights' or a module name/glob such as "
                             f"'neck.yolo_block.0.conv_module.conv0')")
        bad = [n for n in hits if n.startswith(_PROTECTED_PREFIXES)]
        if bad:
            raise PruneError(f"pattern {pat!r} matches {bad[0]!r}: the backbone, yolo_transition and yolo_output "
                             "keep their widths (spec §5.1)")
        for n in hits:
            targets[n] = float(ratio)
    order = {n: i for i, n in enumerate(convs)}
    return dict(sorted(targets.items(), key=lambda kv: order[kv[0]]))


# -- pruning ---------------------------------------------------------------------------------------------
class _RawForward(nn.Module):
    """Traces the dense network only (forward_raw); wraps the same module objects, so pruning it prunes
    the model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_raw(x)


@dataclass
class PruneReport:
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    block_widths: list[list[int]]
    pruned: dict[str, tuple[int, int]] = field(default_factory=dict)  # conv -> (width before, after)

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / self.flops_before

    def as_dict(self) -> dict:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "params_ratio": round(self.params_ratio, 4), "flops_before": self.flops_before,
                "flops_after": self.flops_after, "flops_ratio": round(self.flops_ratio, 4),
                "block_widths": self.block_widths,
                "pruned": {k: list(v) for k, v in self.pruned.items()}}


def _flops(model, size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.forward_raw(torch.zeros(1, 3, size, size))
    return int(fc.get_total_flops())


def read_block_widths(model: YOLOv3) -> list[list[int]]:
    """The actual [conv0, conv1, conv2, conv3, route, tip] output widths of each detection block."""
    out = []
    for blk in model.neck.yolo_block:
        cm = blk.conv_module
        out.append([cm.conv0.conv.out_channels, cm.conv1.conv.out_channels, cm.conv2.conv.out_channels,
                    cm.conv3.conv.out_channels, cm.route.conv.out_channels, blk.tip.conv.out_channels])
    return out


def prune(model: YOLOv3, patterns: list[str] = SEED_PRUNE_PARAMS, ratios: list[float] = SEED_PRUNE_RATIOS,
          criterion: str = "fpgm", example_input: torch.Tensor | None = None) -> PruneReport:
    """Remove output filters of the matched head convs in place; returns widths, params and FLOPs.

    Convs are pruned one after another in model order, each ranked on its weight as it is at that moment
    (earlier prunes have already cut its input channels), as PaddleSlim's Pruner walks its param list."""
    if not isinstance(model, YOLOv3):
        raise PruneError(f"pruning supports YOLOv3 models (spec §5.1), got {type(model).__name__}")
    if criterion not in CRITERIA:
        raise PruneError(f"unknown pruning criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
    targets = resolve_targets(model, list(patterns), list(ratios))
    was_training = model.training
    model.eval()
    size = model.input_size
    if example_input is None:
        example_input = torch.zeros(1, 3, size, size)
    params_before = sum(p.numel() for p in model.parameters())
    flops_before = _flops(model, size)

    modules = dict(model.named_modules())
    wrapper = _RawForward(model)
    with torch.enable_grad():  # torch-pruning traces the graph through autograd
        graph = tp.DependencyGraph().build_dependency(wrapper, example_inputs=example_input)
    pruned = {}
    for name, ratio in targets.items():
        conv = modules[name]
        before = conv.out_channels
        idxs = filters_to_prune(conv.weight, ratio, criterion)
        if idxs:
            group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs)
            if not graph.check_pruning_group(group):
                raise PruneError(f"cannot prune {name}: torch-pruning rejects the group")
            for dep, _ in group:  # defence in depth: the group may only touch allowed layers' outputs
                layer_name = next((n for n, m in modules.items() if m is dep.target.module), "")
                if dep.pruning_fn == tp.prune_conv_out_channels and layer_name.startswith(_PROTECTED_PREFIXES):
                    raise PruneError(f"pruning {name} would change the output width of {layer_name}")
            group.prune()
        pruned[name] = (before, conv.out_channels)

    model.block_widths = read_block_widths(model)
    model.neck.out_channels = [w[5] for w in model.block_widths]
    model.train(was_training)
    return PruneReport(params_before, sum(p.numel() for p in model.parameters()), flops_before,
                       _flops(model, size), model.block_widths, pruned)


def pruned_config(cfg_dict: dict, model: YOLOv3, suffix: str = "_pruned") -> dict:
    """The zoo config (a `ZooCfg.model_dump()`) with `model.block_widths` set to the pruned widths."""
    out = {**cfg_dict, "model": {**cfg_dict["model"], "block_widths": [list(w) for w in model.block_widths]}}
    if suffix and not out["name"].endswith(suffix):
        out["name"] = out["name"] + suffix
    return out


def prune_checkpoint(source: str, out_path, patterns: list[str], ratios: list[float], criterion: str = "fpgm") -> dict:
    """CLI backend: prune a zoo model (random init) or a checkpoint and save a loadable checkpoint."""
    from ..api import model_from_name_or_checkpoint
    from ..checkpoint import save_atomic

    model = model_from_name_or_checkpoint(source)  # a checkpoint, NAME:coco, or a zoo name (random init)
    cfg = model.zoo_config.model_dump()
    report = prune(model, patterns, ratios, criterion)
    save_atomic({"model": model.state_dict(), "config": pruned_config(cfg, model, f"_prune_{criterion}"),
                 "class_names": list(model.class_names), "prune": report.as_dict()}, out_path)
    return {"out": str(out_path), **report.as_dict()}
