"""Iteration-based training: one process, or many under torchrun (DDP)."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ..config import ZooCfg
from ..data.loader import collate_detection, train_loader
from ..data.transforms import build_train_transforms
from ..models import build_model
from . import distributed as dist_utils
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_atomic, set_rng_state
from .ema import ModelEMA
from .evaluate import evaluate
from .optim import build_optimizer, lr_factor, set_lr

log = logging.getLogger("pocketdet.train")


@dataclass
class TrainOptions:
    out_dir: Path
    device: str = "cpu"
    resume: Path | None = None
    eval_dataset: object | None = None     # a DetectionDataset; None: no periodic eval
    progress: bool = True
    init_fn: Callable | None = None        # e.g. load --pretrained backbone weights into the fresh model
    collate_fn: Callable | None = None     # families with batch-level augmentation (multi-scale) set this
    dataset_wrapper: Callable | None = None  # families with sample-mixing augmentation (mixup) set this
    transform: Callable | None = None      # replaces the family's per-sample transform (data/gpu_aug.py)
    batch_transform: Callable | None = None  # (images, targets, device) -> on-device batch (data/gpu_aug.py)
    stop_after: int | None = None          # stop (with a checkpoint) at this iteration: tests, time-boxed runs


def effective_lr(cfg: ZooCfg, world_size: int) -> float:
    t = cfg.train
    lr = t.optimizer.lr
    if t.scale_lr:
        lr *= t.batch_size * world_size / t.reference_batch
    return lr


def checkpoint_state(model, cfg: ZooCfg, class_names, **extra) -> dict:
    return {"model": model.state_dict(), "config": cfg.model_dump(), "class_names": list(class_names), **extra}


def train(cfg: ZooCfg, train_dataset, opts: TrainOptions) -> dict:
    """Trains and returns {"last": path, "best": path or None, "best_ap": float, "images_per_s": float}."""
    rank, world, local = dist_utils.init_from_env(opts.device)
    device = torch.device(f"cuda:{local}" if opts.device.startswith("cuda") and world > 1 else opts.device)
    main = rank == 0
    t = cfg.train
    torch.manual_seed(t.seed)
    model = build_model(cfg.model, class_names=train_dataset.class_names).to(device)
    if opts.init_fn is not None:
        opts.init_fn(model)
    model.use_channels_last()
    if t.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    base_lr = effective_lr(cfg, world)
    optimizer = build_optimizer(model, t.optimizer, base_lr)
    use_amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = ModelEMA(model, t.ema_decay) if t.ema_decay else None
    start_iter, best_ap = 0, -1.0
    out = Path(opts.out_dir)
    if opts.resume is not None:
        ck = load_checkpoint(opts.resume, map_location=device)
        if ck.get("config", {}).get("model") != cfg.model_dump()["model"]:
            raise CheckpointError(f"{opts.resume}: its model config differs from the one being trained")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        set_rng_state(ck["rng"])
        start_iter, best_ap = int(ck["iteration"]), float(ck.get("best_ap", -1.0))
        if main:
            log.info("resumed from %s at iteration %d", opts.resume, start_iter)
    ddp_model = DDP(model, device_ids=[local] if device.type == "cuda" else None) if world > 1 else model

    dataset = opts.dataset_wrapper(train_dataset) if opts.dataset_wrapper else train_dataset
    transform = opts.transform or build_train_transforms(t.augment, model.input_size)
    loader = train_loader(dataset, transform, t.batch_size, t.seed, start_iter, t.schedule.max_iters,
                          t.num_workers, rank, world, opts.collate_fn or collate_detection)
    writer = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))
    result = {"last": out / "last.pt", "best": None, "best_ap": best_ap, "images_per_s": 0.0}

    def save(name: str, it: int, **extra):
        if not main:
            return
        state = checkpoint_state(model, cfg, train_dataset.class_names, optimizer=optimizer.state_dict(),
                                 scaler=scaler.state_dict(), ema=ema.state_dict() if ema else None,
                                 iteration=it, rng=rng_state(), best_ap=result["best_ap"], **extra)
        save_atomic(state, out / name)

    model.train()
    bar = tqdm(total=t.schedule.max_iters, initial=start_iter, desc=f"train {cfg.name}", disable=not (main and opts.progress),
               dynamic_ncols=True)
    seen, t0 = 0, time.perf_counter()
    it = start_iter
    for images, targets in loader:
        set_lr(optimizer, lr_factor(it, t.schedule))
        if opts.batch_transform is not None:
            images, targets = opts.batch_transform(images, targets, device)
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in tg.items()} for tg in targets]
        with torch.autocast(device.type, enabled=use_amp):
            losses = ddp_model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {it}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }; lower the LR or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if t.optimizer.clip_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.optimizer.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)
        it += 1
        seen += len(images) * world
        if main:
            bar.update(1)
            if it % t.log_interval == 0 or it == t.schedule.max_iters:
                ips = seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}",
                                img_s=f"{ips:.1f}")
                writer.add_scalar("train/loss", loss.item(), it)
                for k, v in losses.items():
                    writer.add_scalar(f"train/{k}", v.item(), it)
                writer.add_scalar("train/lr", optimizer.param_groups[-1]["lr"] / optimizer.param_groups[-1]["lr_mult"], it)
                writer.add_scalar("train/images_per_s", ips, it)
        stop = opts.stop_after is not None and it >= opts.stop_after
        last = it == t.schedule.max_iters
        if last or stop or it % t.checkpoint_interval == 0:
            save("last.pt", it)
        if opts.eval_dataset is not None and (last or it % t.eval_interval == 0):
            if main:
                eval_model = ema.module if ema is not None else model
                stats = evaluate(eval_model, opts.eval_dataset, device=device, progress=opts.progress)
                for k, v in stats.items():
                    writer.add_scalar(f"val/{k}", v, it)
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"iteration": it, **stats}) + "\n")
                if stats["AP"] > result["best_ap"]:
                    result["best_ap"] = stats["AP"]
                    result["best"] = out / "best.pt"
                    save("best.pt", it, metrics=stats)
                result["last_metrics"] = stats
                model.train()
            dist_utils.barrier()
        if stop:
            break
    bar.close()
    result["images_per_s"] = seen / max(time.perf_counter() - t0, 1e-9)
    if writer is not None:
        writer.close()
    dist_utils.barrier()
    return result
