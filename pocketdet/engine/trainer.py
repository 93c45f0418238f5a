"""Iteration-based training: one process, or many under torchrun (DDP)."""
from __future__ import annotations

import json
import logging
import signal
import threading
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
from ..checkpoint import CheckpointError, load_checkpoint, rng_state, save_atomic, set_rng_state
from .device import loader_workers
from .ema import ModelEMA
from .evaluate import evaluate
from .optim import build_optimizer, lr_factor, set_lr

log = logging.getLogger("pocketdet.train")

# A run stopped by SIGTERM / SIGINT writes last.pt and returns {"interrupted": signal name}; the CLI then exits
# with 128 + the signal number (143 for SIGTERM, 130 for Ctrl-C), as a shell reports a killed process.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, ...); the message says where and why, in one line."""


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
    iteration_hook: Callable | None = None  # (model, iteration) before each step: schedule-dependent model state
    stop_after: int | None = None          # stop (with a checkpoint) at this iteration: tests, time-boxed runs


def effective_lr(cfg: ZooCfg, world_size: int) -> float:
    t = cfg.train
    lr = t.optimizer.lr
    if t.scale_lr:
        lr *= t.batch_size * world_size / t.reference_batch
    return lr


class _StopSignals:
    """Turns the first SIGTERM / SIGINT into a request to stop at the end of the current iteration (with a
    checkpoint); the default handler is restored at once, so a second signal stops the process immediately.
    Installed only in the main thread (Python allows signal handlers nowhere else)."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM / SIGINT: a signal sent to the whole process group (Ctrl-C, a
    cluster's `scancel`) would otherwise kill them, and torch would raise "worker killed" in the main process
    before it could write its checkpoint. The main process shuts them down when it stops."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _any_rank(flag: bool, world: int, device) -> bool:
    """True on every rank when any rank says so (a signal reaches the ranks at different iterations)."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t)
    return bool(t.item())


def _nonfinite(losses: dict, loss: torch.Tensor, model, clip: float | None) -> str | None:
    """None when the step may be applied, else what is not finite (loss terms or gradient norm). With
    clipping, the norm is that of the unclipped gradients, which `clip_grad_norm_` returns anyway."""
    if not torch.isfinite(loss):
        return "loss terms " + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
    params = [p for p in model.parameters() if p.grad is not None]
    norm = (torch.nn.utils.clip_grad_norm_(params, clip) if clip else
            torch.nn.utils.get_total_norm([p.grad for p in params]))
    if not torch.isfinite(norm):
        return f"gradient norm {float(norm)} (loss {float(loss.detach()):.4g})"
    return None


def checkpoint_state(model, cfg: ZooCfg, class_names, **extra) -> dict:
    return {"model": model.state_dict(), "config": cfg.model_dump(), "class_names": list(class_names), **extra}


def train(cfg: ZooCfg, train_dataset, opts: TrainOptions) -> dict:
    """Trains and returns {"last": path, "best": path or None, "best_ap": float, "images_per_s": float,
    "skipped_nonfinite": int}, plus "interrupted": signal name when SIGTERM / SIGINT stopped it early
    (after writing last.pt). Raises TrainingError on a non-finite loss or gradient (unless
    train.skip_nonfinite allows skipping the step) and CheckpointError when a checkpoint cannot be written."""
    with _StopSignals() as signals:
        return _train(cfg, train_dataset, opts, signals)


def _train(cfg: ZooCfg, train_dataset, opts: TrainOptions, signals: _StopSignals) -> dict:
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
    out = Path(opts.out_dir)
    result = {"last": out / "last.pt", "best": None, "best_ap": -1.0, "images_per_s": 0.0, "skipped_nonfinite": 0}
    start_iter = 0
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
        start_iter = int(ck["iteration"])
        # the best AP and best.pt as of the checkpoint's own iteration (evaluation runs before last.pt is saved)
        result["best_ap"] = float(ck.get("best_ap", -1.0))
        result["best"] = Path(ck["best"]) if ck.get("best") else None
        result["skipped_nonfinite"] = int(ck.get("skipped_nonfinite", 0))
        if main:
            log.info("resumed from %s at iteration %d (best AP so far %.4f)", opts.resume, start_iter,
                     result["best_ap"])
    ddp_model = DDP(model, device_ids=[local] if device.type == "cuda" else None) if world > 1 else model

    dataset = opts.dataset_wrapper(train_dataset) if opts.dataset_wrapper else train_dataset
    transform = opts.transform or build_train_transforms(t.augment, model.input_size)
    loader = train_loader(dataset, transform, t.batch_size, t.seed, start_iter, t.schedule.max_iters,
                          loader_workers(t.num_workers), rank, world, opts.collate_fn or collate_detection)
    loader.worker_init_fn = _ignore_stop_signals
    writer = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.pt.*.tmp"):  # a save cut short by SIGKILL / power loss (see save_atomic)
            log.info("removing %s, left by an interrupted checkpoint save", stale)
            stale.unlink(missing_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))

    def save(name: str, it: int, **extra):
        if not main:
            return
        state = checkpoint_state(model, cfg, train_dataset.class_names, optimizer=optimizer.state_dict(),
                                 scaler=scaler.state_dict(), ema=ema.state_dict() if ema else None,
                                 iteration=it, rng=rng_state(), best_ap=result["best_ap"],
                                 best=str(result["best"]) if result["best"] else None,
                                 skipped_nonfinite=result["skipped_nonfinite"], **extra)
        save_atomic(state, out / name)

    model.train()
    bar = tqdm(total=t.schedule.max_iters, initial=start_iter, desc=f"train {cfg.name}", disable=not (main and opts.progress),
               dynamic_ncols=True)
    seen, t0 = 0, time.perf_counter()
    it, skipped_in_a_row = start_iter, 0
    for images, targets in loader:
        set_lr(optimizer, lr_factor(it, t.schedule))
        if opts.iteration_hook is not None:
            opts.iteration_hook(model, it)
        if opts.batch_transform is not None:
            images, targets = opts.batch_transform(images, targets, device)
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in tg.items()} for tg in targets]
        with torch.autocast(device.type, enabled=use_amp):
            losses = ddp_model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        bad = None
        if not torch.isfinite(loss):
            bad = _nonfinite(losses, loss, model, None)
        else:
            scaler.scale(loss).backward()
            if not use_amp:  # with AMP, GradScaler already skips steps whose gradients are not finite
                bad = _nonfinite(losses, loss, model, t.optimizer.clip_grad_norm)
            elif t.optimizer.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.optimizer.clip_grad_norm)
        if _any_rank(bad is not None, world, device):
            skipped_in_a_row += 1
            result["skipped_nonfinite"] += 1
            what = bad or "not finite on another rank"
            if skipped_in_a_row > t.skip_nonfinite:
                raise TrainingError(
                    f"non-finite training step at iteration {it}: {what}; nothing was applied, last.pt holds "
                    f"the last checkpoint. Lower the LR, check the data, or allow skipping with "
                    f"--set train.skip_nonfinite=N" + (f" (already skipped {skipped_in_a_row - 1} in a row)"
                                                       if t.skip_nonfinite else ""))
            log.warning("iteration %d: skipped the step, %s (%d in a row, %d in this run; limit %d in a row)",
                        it, what, skipped_in_a_row, result["skipped_nonfinite"], t.skip_nonfinite)
            optimizer.zero_grad(set_to_none=True)
        else:
            skipped_in_a_row = 0
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model)
        it += 1
        seen += len(images) * world
        if main:
            bar.update(1)
            if bad is None and (it % t.log_interval == 0 or it == t.schedule.max_iters):
                ips = seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}",
                                img_s=f"{ips:.1f}")
                writer.add_scalar("train/loss", loss.item(), it)
                for k, v in losses.items():
                    writer.add_scalar(f"train/{k}", v.item(), it)
                writer.add_scalar("train/lr", optimizer.param_groups[-1]["lr"] / optimizer.param_groups[-1]["lr_mult"], it)
                writer.add_scalar("train/images_per_s", ips, it)
        signalled = _any_rank(signals.received is not None, world, device)
        stop = signalled or (opts.stop_after is not None and it >= opts.stop_after)
        last = it == t.schedule.max_iters
        # evaluate first, then save last.pt: the checkpoint then holds the best AP / best.pt as of its iteration
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
        if last or stop or it % t.checkpoint_interval == 0:
            save("last.pt", it)
        if signalled:
            name = signal.Signals(signals.received).name if signals.received else "a signal on another rank"
            result["interrupted"] = name
            if main:
                log.warning("%s at iteration %d: saved %s; continue with --resume %s", name, it, out / "last.pt",
                            out / "last.pt")
        if stop:
            break
    bar.close()
    result["images_per_s"] = seen / max(time.perf_counter() - t0, 1e-9)
    if writer is not None:
        writer.close()
    dist_utils.barrier()
    return result
