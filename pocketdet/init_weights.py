"""Initialise a whole detector from a trained one whose classes may differ: fine-tuning to the user's classes.

    trained model (e.g. `NAME:coco`, 80 classes) + freshly built model (the dataset's classes, standard init)
      -> every tensor that does not depend on the classes is copied (shapes must agree, else one error)
      -> the class-dependent tensors (SSD score predictors, YOLO outputs, Cascade classifiers) are rebuilt row
         by row: per prior/anchor group the class-independent rows (background, box + objectness) are copied,
         a dataset class whose name equals a trained class gets that class's trained row, the other rows keep
         the family's standard init (the fresh model's).

Row layouts (dim 0 of each class-dependent tensor = groups x (fixed + classes)):
    SSDLite   ssd_head.scores{i}.pw_conv.weight       groups = priors per location, fixed = 1 (background first)
    YOLOv3    yolo_head.yolo_output.{i}.weight / bias groups = anchors of the level,  fixed = 5 (x y w h obj)
    Cascade   roi_heads.stages.{s}.cls_score.weight / bias   groups = 1, fixed = 1 (background first)
    PicoDet   head.head_cls_list.{i}.weight / bias    groups = 1, fixed = 0 (sigmoid classes, no background);
              its align head (cls_align, one output channel) and the box distributions are class-free
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .checkpoint import CheckpointError

log = logging.getLogger("pocketdet.init")


@dataclass(frozen=True)
class ClassRows:
    groups: int  # priors / anchors sharing the tensor, each with its own block of rows
    fixed: int   # class-independent rows at the start of each block


@dataclass
class InitReport:
    source: str
    loaded: int = 0                                          # tensors copied whole
    mapped: dict[str, int] = field(default_factory=dict)     # dataset class -> index of the trained class
    reinitialised: list[str] = field(default_factory=list)   # dataset classes that kept the standard init
    rebuilt: list[str] = field(default_factory=list)         # class-dependent tensors rebuilt row by row

    def summary(self) -> str:
        lines = [f"initialised from {self.source}: {self.loaded} tensors loaded"]
        if self.rebuilt:
            mapped = ", ".join(f"{k} <- #{v}" for k, v in self.mapped.items()) or "none"
            lines += [f"  class-dependent tensors rebuilt: {len(self.rebuilt)} ({', '.join(self.rebuilt[:3])}"
                      f"{', ...' if len(self.rebuilt) > 3 else ''})",
                      f"  classes mapped by name (trained rows copied): {mapped}",
                      f"  classes re-initialised (standard init): {', '.join(self.reinitialised) or 'none'}"]
        return "\n".join(lines)


def class_rows(model: nn.Module) -> dict[str, ClassRows]:
    """State-dict key -> row layout of every class-dependent tensor of `model`."""
    arch = getattr(model, "arch", None)
    out = {}
    if arch == "ssdlite":
        for i in range(model.ssd_head.levels):
            priors = getattr(model.ssd_head, f"boxes{i}").pw_conv.out_channels // 4
            out[f"ssd_head.scores{i}.pw_conv.weight"] = ClassRows(priors, 1)
    elif arch == "yolov3":
        for i, mask in enumerate(model.anchor_masks):
            for p in ("weight", "bias"):
                out[f"yolo_head.yolo_output.{i}.{p}"] = ClassRows(len(mask), 5)
    elif arch == "cascade_rcnn":
        for s in range(len(model.roi_heads.stages)):
            for p in ("weight", "bias"):
                out[f"roi_heads.stages.{s}.cls_score.{p}"] = ClassRows(1, 1)
    elif arch == "picodet":  # sigmoid class maps per level, no background row
        for i in range(len(model.head.head_cls_list)):
            for p in ("weight", "bias"):
                out[f"head.head_cls_list.{i}.{p}"] = ClassRows(1, 0)
    else:
        raise CheckpointError(f"fine-tuning initialisation does not know the class layout of arch {arch!r}")
    return out


def _rebuild_rows(dst: torch.Tensor, src: torch.Tensor, rows: ClassRows, n_dst: int, n_src: int,
                  src_index: list[int | None]) -> torch.Tensor:
    out = dst.clone()  # the fresh model's standard init for every row not copied below
    bd, bs = rows.fixed + n_dst, rows.fixed + n_src
    for g in range(rows.groups):
        out[g * bd:g * bd + rows.fixed] = src[g * bs:g * bs + rows.fixed]
        for j, i in enumerate(src_index):
            if i is not None:
                out[g * bd + rows.fixed + j] = src[g * bs + rows.fixed + i]
    return out


def init_from_model(target: nn.Module, source: nn.Module, label: str, map_names: bool = True) -> InitReport:
    """Copy `source`'s weights into the freshly built `target` (see the module docstring); returns the report.
    map_names=False re-initialises every class row even where the names match (the benchmark's baseline)."""
    if getattr(target, "arch", None) != getattr(source, "arch", None):
        raise CheckpointError(f"{label}: holds a {getattr(source, 'arch', '?')} model; cannot initialise a "
                              f"{getattr(target, 'arch', '?')} model from it")
    report = InitReport(source=label)
    layouts = class_rows(target)
    same_classes = list(target.class_names) == list(source.class_names)
    src_names = list(source.class_names)
    src_index = [src_names.index(n) if map_names and n in src_names else None for n in target.class_names]
    sd_t, sd_s = target.state_dict(), source.state_dict()
    missing = [k for k in sd_t if k not in sd_s]
    extra = [k for k in sd_s if k not in sd_t]
    bad = [f"{k} (file {tuple(sd_s[k].shape)}, model {tuple(v.shape)})" for k, v in sd_t.items()
           if k in sd_s and (same_classes or k not in layouts) and sd_s[k].shape != v.shape]
    if missing or extra or bad:
        what = "; ".join(p for p in (f"{len(bad)} shape mismatch(es): {', '.join(bad[:3])}" if bad else "",
                                     f"missing {', '.join(missing[:3])}" if missing else "",
                                     f"unexpected {', '.join(extra[:3])}" if extra else "") if p)
        raise CheckpointError(f"{label}: its weights do not fit this model configuration ({what}); "
                              "same zoo model and widths required, only the classes may differ")
    new = {}
    for k, v in sd_t.items():
        if k in layouts and not same_classes:
            new[k] = _rebuild_rows(v, sd_s[k], layouts[k], len(target.class_names), len(src_names), src_index)
            report.rebuilt.append(k)
        else:
            new[k] = sd_s[k]
            report.loaded += 1
    target.load_state_dict(new)
    if not same_classes:
        report.mapped = {n: i for n, i in zip(target.class_names, src_index) if i is not None}
        report.reinitialised = [n for n, i in zip(target.class_names, src_index) if i is None]
    return report
