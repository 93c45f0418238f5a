"""Knowledge distillation of a (pruned) YOLOv3 student from a frozen YOLOv3 teacher (spec §5.2).

The seed distils the FPGM-pruned YOLOv3-MobileNetV3 from YOLOv3-ResNet34 with PaddleDetection's "split distill"
loss (after arXiv 1805.06361), weight 1000, added to the student's own YOLOv3 loss. Both models see the same
(augmented, multi-scale) batch; the teacher runs in eval mode without gradients.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.yolov3 import YOLOv3

log = logging.getLogger("pocketdet.distill")

DISTILL_WEIGHT = 1000.0  # `distill_loss *= 1000` in the static script and DistillYOLOv3Loss(weight=1000)


class DistillError(ValueError):
    pass


def _split(raw: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """[N, A*(5+C), H, W] -> [N, A, 5+C, H, W]: per anchor x, y, w, h, obj, cls..."""
    n, ch, h, w = raw.shape
    if ch % num_anchors:
        raise DistillError(f"head map with {ch} channels does not split into {num_anchors} anchors")
    return raw.view(n, num_anchors, ch // num_anchors, h, w)


def split_distill_loss(student_raw: list[torch.Tensor], teacher_raw: list[torch.Tensor],
                       anchors_per_level: list[int], weight: float = DISTILL_WEIGHT) -> dict[str, torch.Tensor]:
    """Spec §5.2, per level (means over every cell and anchor, and class for cls), summed over levels:

    reg = mean[(BCE(s_x, σt_x) + BCE(s_y, σt_y) + |s_w - t_w| + |s_h - t_h|) · σ(t_obj)]
    cls = mean[BCE(s_cls, σt_cls) · σ(t_obj)]
    obj = mean[BCE(s_obj, 1[t_obj > 0])]
    Each returned term is already multiplied by `weight`.
    """
    if len(student_raw) != len(teacher_raw) or len(student_raw) != len(anchors_per_level):
        raise DistillError(f"{len(student_raw)} student levels, {len(teacher_raw)} teacher levels, "
                           f"{len(anchors_per_level)} anchor groups")
    bce = F.binary_cross_entropy_with_logits
    reg = cls = obj = student_raw[0].new_zeros(())
    for s_map, t_map, a_n in zip(student_raw, teacher_raw, anchors_per_level):
        if s_map.shape != t_map.shape:
            raise DistillError(f"student map {tuple(s_map.shape)} and teacher map {tuple(t_map.shape)} differ: "
                               "they need the same input size, anchors and classes")
        s, t = _split(s_map.float(), a_n), _split(t_map.float().detach(), a_n)
        t_obj_w = t[:, :, 4].sigmoid()
        r = (bce(s[:, :, 0], t[:, :, 0].sigmoid(), reduction="none")
             + bce(s[:, :, 1], t[:, :, 1].sigmoid(), reduction="none")
             + (s[:, :, 2] - t[:, :, 2]).abs() + (s[:, :, 3] - t[:, :, 3]).abs())
        reg = reg + (r * t_obj_w).mean()
        c = bce(s[:, :, 5:], t[:, :, 5:].sigmoid(), reduction="none")
        cls = cls + (c * t_obj_w[:, :, None]).mean()
        obj = obj + bce(s[:, :, 4], (t[:, :, 4] > 0).to(s.dtype))
    return {"distill_reg": reg * weight, "distill_cls": cls * weight, "distill_obj": obj * weight}


def distill_step_losses(student: YOLOv3, teacher: YOLOv3 | None, images, targets,
                        weight: float = DISTILL_WEIGHT) -> dict[str, torch.Tensor]:
    """The student's YOLOv3 loss terms plus (with a teacher) the three distillation terms."""
    x, tg = student.training_batch(images, targets)
    s_raw = student.forward_raw(student.normalize(x))
    losses = student.yolo_loss(s_raw, tg, (int(x.shape[-2]), int(x.shape[-1])))
    if teacher is not None:
        with torch.no_grad():
            t_raw = teacher.forward_raw(teacher.normalize(x))
        losses.update(split_distill_loss(s_raw, t_raw, [len(m) for m in student.anchor_masks], weight))
    return losses


def check_compatible(student: YOLOv3, teacher: YOLOv3) -> None:
    for m, role in ((student, "student"), (teacher, "teacher")):
        if not isinstance(m, YOLOv3):
            raise DistillError(f"the {role} must be a YOLOv3 model, got {type(m).__name__}")
    if (student.num_classes != teacher.num_classes or student.anchor_masks != teacher.anchor_masks
            or student.downsample_ratios != teacher.downsample_ratios):
        raise DistillError(f"student and teacher heads differ (classes {student.num_classes}/{teacher.num_classes}, "
                           f"anchor masks {student.anchor_masks}/{teacher.anchor_masks}): split distillation "
                           "compares their raw outputs cell by cell")


def scaled_schedule(cfg, iters: int):
    """The student recipe's schedule squeezed into `iters` (milestones and warmup scaled in proportion): the
    seed keeps the student config's schedule (spec §5.2), far longer than a fine-tuning run here."""
    s = cfg.train.schedule
    f = iters / s.max_iters
    return s.model_copy(update={"max_iters": iters, "milestones": [max(1, int(m * f)) for m in s.milestones],
                                "warmup_iters": int(s.warmup_iters * f)})


def distill_train(student: YOLOv3, teacher: YOLOv3 | None, dataset, iters: int, cfg=None, batch_size: int | None = None,
                  lr: float | None = None, device: str = "cpu", num_workers: int = 0, seed: int = 0,
                  mixup: bool = False, weight: float = DISTILL_WEIGHT, log_every: int = 10) -> dict:
    """Fine-tune `student` in place for `iters` steps with its YOLOv3 loss plus, when `teacher` is given, the
    split distillation loss; `teacher=None` is plain fine-tuning with the same loop (a fair baseline).

    `cfg` is the student's ZooCfg (default: `student.zoo_config`, or the yolov3_mnv3_large_320 recipe): its
    optimizer (param groups, decay), augmentation and schedule (scaled to `iters`) are reused. `lr` is the LR
    actually used (no batch scaling). Mixup is off by default: over a short run the recipe would apply it to
    every batch, while the seed's fine-tuning from trained weights ends long after mixup_iters."""
    from ..config import load_config
    from ..data.loader import collate_detection, train_loader
    from ..data.transforms import build_train_transforms
    from ..engine.family_hooks import hooks_for
    from ..engine.optim import build_optimizer, lr_factor, set_lr

    if iters <= 0:
        raise DistillError(f"iters must be > 0, got {iters}")
    if teacher is not None:
        check_compatible(student, teacher)
    cfg = cfg or getattr(student, "zoo_config", None) or load_config("yolov3_mnv3_large_320")
    t = cfg.train
    bs = batch_size or t.batch_size
    base_lr = lr if lr is not None else t.optimizer.lr * (bs / t.reference_batch if t.scale_lr else 1.0)
    sched = scaled_schedule(cfg, iters)
    dev = torch.device(device)
    student.to(dev).train()
    if teacher is not None:
        teacher.to(dev).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    torch.manual_seed(seed)
    optimizer = build_optimizer(student, t.optimizer, base_lr)
    hooks = hooks_for(cfg)
    ds = hooks["dataset_wrapper"](dataset) if "dataset_wrapper" in hooks else dataset
    if hasattr(ds, "set_enabled"):
        ds.set_enabled(mixup)
    loader = train_loader(ds, build_train_transforms(t.augment, student.input_size), bs, seed, 0, iters,
                          num_workers, collate_fn=hooks.get("collate_fn", collate_detection))
    history, t0 = [], time.perf_counter()
    for it, (images, targets) in enumerate(loader):
        set_lr(optimizer, lr_factor(it, sched))
        images = [im.to(dev) for im in images] if isinstance(images, (list, tuple)) else images.to(dev)
        targets = [{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in tg.items()} for tg in targets]
        losses = distill_step_losses(student, teacher, images, targets, weight)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise DistillError(f"non-finite loss at iteration {it}: "
                               f"{ {k: float(v) for k, v in losses.items()} }; lower the LR")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.optimizer.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(student.parameters(), t.optimizer.clip_grad_norm)
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
        if log_every and (it + 1) % log_every == 0:
            log.info("iter %d/%d loss %.3f %s", it + 1, iters, float(loss),
                     " ".join(f"{k}={float(v):.3f}" for k, v in losses.items()))
    student.eval()
    return {"iters": iters, "seconds": time.perf_counter() - t0, "first": history[0], "last": history[-1]}


def distill_checkpoint(teacher_src: str, student_src: str, data: Path, iters: int, out_path: Path,
                       batch_size: int | None = None, lr: float | None = None, device: str = "cpu",
                       num_workers: int = 0) -> dict:
    """CLI backend: load both checkpoints (or zoo names), distil on the dataset YAML's train split, save."""
    from ..api import model_from_name_or_checkpoint
    from ..config import load_config
    from ..data import build_dataset, load_dataset_yaml
    from ..checkpoint import save_atomic

    student = model_from_name_or_checkpoint(student_src)
    teacher = model_from_name_or_checkpoint(teacher_src)
    cfg = getattr(student, "zoo_config", None) or load_config(student_src)
    ds = build_dataset(load_dataset_yaml(data), "train", student.class_names)
    summary = distill_train(student, teacher, ds, iters, cfg, batch_size, lr, device, num_workers)
    save_atomic({"model": student.cpu().state_dict(), "config": cfg.model_dump(),
                 "class_names": list(student.class_names)}, out_path)
    return {"out": str(out_path), **summary}
