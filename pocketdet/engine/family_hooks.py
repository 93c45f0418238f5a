"""Per-family training hooks: the batch collates and dataset wrappers some recipes need, configured from the zoo
config (the data pieces themselves live in `data/`, which knows nothing of configs)."""
from __future__ import annotations

import torch

from ..config import ConfigError
from ..data.base import DetectionDataset, PhotoFiles
from ..data.rcnn_aug import RCNNMultiScaleCollate
from ..data.yolo_aug import MixupDataset, RandomShapeCollate


def hooks_for(cfg) -> dict:
    aug = cfg.train.augment
    if aug == "yolo":
        return yolo_hooks(cfg)
    if aug == "rcnn":
        return rcnn_hooks(cfg)
    if aug == "ssd":
        return ssd_hooks()
    return {}


def ssd_hooks() -> dict:
    """TrainOptions fields for `augment: ssd`: the transform gets the image files undecoded (PhotoFiles), so it
    decodes each JPEG at the DCT reduction its drawn window allows (data/ssd_aug.py). Datasets without
    image records (any torch dataset of decoded images) stay as they are: the transform takes both."""
    return {"dataset_wrapper": lambda ds: PhotoFiles(ds) if isinstance(ds, DetectionDataset) else ds}


def yolo_hooks(cfg) -> dict:
    """TrainOptions fields for `augment: yolo`: the mixup dataset wrapper (on for `train.extra.mixup_iters`
    iterations, spec §4.5) and the multi-scale batch collate."""
    mixup_iters = cfg.train.extra.get("mixup_iters", 0)
    if not isinstance(mixup_iters, int) or isinstance(mixup_iters, bool) or mixup_iters < 0:
        raise ConfigError(f"config {cfg.name}: train.extra.mixup_iters must be an integer >= 0, got {mixup_iters!r}")
    batch = cfg.train.batch_size

    def wrap(dataset):
        world = torch.distributed.get_world_size() if (torch.distributed.is_available()
                                                       and torch.distributed.is_initialized()) else 1
        ds = MixupDataset(dataset, 1.5, 1.5, until_position=mixup_iters * batch * world, until_iter=mixup_iters)
        ds.set_enabled(mixup_iters > 0)
        return ds

    return {"dataset_wrapper": wrap, "collate_fn": RandomShapeCollate()}


def rcnn_hooks(cfg) -> dict:
    """TrainOptions fields for the `rcnn` augmentation: the multi-scale collate, configured from
    `train.extra.short_sizes` and `train.extra.max_size` of the zoo config."""
    extra = cfg.train.extra
    for key in ("short_sizes", "max_size"):
        if key not in extra:
            raise ConfigError(f"config {cfg.name}: train.extra.{key} is required for augment: rcnn")
    sizes = extra["short_sizes"]
    if not isinstance(sizes, list) or not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ConfigError(f"config {cfg.name}: train.extra.short_sizes must be a non-empty list of positive ints")
    return {"collate_fn": RCNNMultiScaleCollate(sizes, int(extra["max_size"]))}
