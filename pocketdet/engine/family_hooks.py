"""Per-family training hooks: batch collates and dataset wrappers some recipes need."""
from __future__ import annotations


def hooks_for(cfg) -> dict:
    aug = cfg.train.augment
    if aug == "yolo":
        from ..data import yolo_aug
        return yolo_aug.train_hooks(cfg)
    if aug == "rcnn":
        from ..data import rcnn_aug
        return rcnn_aug.train_hooks(cfg)
    return {}
