"""Per-family training hooks: the batch collates and dataset wrappers some recipes need, configured from the zoo
config (the data pieces themselves live in `data/`, which knows nothing of configs)."""
from __future__ import annotations

import torch

from ..config import ConfigError
from ..data.base import DetectionDataset, PhotoFiles
from ..data.gpu_aug import train_hooks as gpu_train_hooks
from ..data.picodet_aug import multiscale_sizes
from ..data.rcnn_aug import RCNNMultiScaleCollate
from ..data.yolo_aug import MixupDataset, RandomShapeCollate


def hooks_for(cfg, gpu_aug: bool = False) -> dict:
    """TrainOptions fields for a config: those of its augmentation, plus its model family's per-iteration hook.
    `gpu_aug`: the `ssd` augmentation batched on the training device (data/gpu_aug.py) instead of in the workers."""
    aug = cfg.train.augment
    if gpu_aug and aug != "ssd":
        raise ConfigError(f"config {cfg.name}: --gpu-aug runs the `ssd` augmentation on the device; this recipe "
                          f"uses train.augment={aug}")
    ssd = (lambda c: gpu_train_hooks(int(c.model.get("input_size", 320)))) if gpu_aug else (lambda c: ssd_hooks())
    hooks = {"yolo": yolo_hooks, "rcnn": rcnn_hooks, "picodet": picodet_aug_hooks,
             "ssd": ssd}.get(aug, lambda c: {})(cfg)
    if cfg.model["arch"] == "picodet":
        hooks["iteration_hook"] = picodet_assigner_hook(cfg)
    return hooks


def _extra_iters(cfg, key: str) -> int:
    value = cfg.train.extra.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"config {cfg.name}: train.extra.{key} must be an integer >= 0, got {value!r}")
    return value


def ssd_hooks() -> dict:
    """TrainOptions fields for `augment: ssd`: the transform gets the image files undecoded (PhotoFiles), so it
    decodes each JPEG at the DCT reduction its drawn window allows (data/ssd_aug.py). Datasets without
    image records (any torch dataset of decoded images) stay as they are: the transform takes both."""
    return {"dataset_wrapper": lambda ds: PhotoFiles(ds) if isinstance(ds, DetectionDataset) else ds}


def yolo_hooks(cfg) -> dict:
    """TrainOptions fields for `augment: yolo`: the mixup dataset wrapper (on for `train.extra.mixup_iters`
    iterations, spec §4.5) and the multi-scale batch collate."""
    mixup_iters = _extra_iters(cfg, "mixup_iters")
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


def picodet_aug_hooks(cfg) -> dict:
    """TrainOptions fields for `augment: picodet`: the BatchRandomResize collate over `train.extra.multiscale_sizes`
    (default: the model's input size -64..+64, step 32, as the PicoDet readers)."""
    sizes = cfg.train.extra.get("multiscale_sizes") or multiscale_sizes(int(cfg.model.get("input_size", 320)))
    if not isinstance(sizes, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 and s % 32 == 0
                                              for s in sizes):
        # multiples of 32: the model trains such batches at their own size (others would be stretched back)
        raise ConfigError(f"config {cfg.name}: train.extra.multiscale_sizes must be a list of positive multiples of "
                          f"32, got {sizes!r}")
    return {"collate_fn": RandomShapeCollate(sizes)}


def picodet_assigner_hook(cfg):
    """PicoHeadV2 assigns with ATSS (static_assigner) for the first `train.extra.static_assigner_iters`
    iterations (the recipe's first 100 of 300 epochs), with the task-aligned assigner after. The iteration comes
    from the trainer, so a resumed run switches at the same step."""
    static_iters = _extra_iters(cfg, "static_assigner_iters")

    def hook(model, iteration: int) -> None:
        model.use_static_assigner = iteration < static_iters

    return hook
