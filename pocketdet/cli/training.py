"""`pocketdet train`: options to config overrides, weight initialisation, the training run."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from .common import _fail, _setup_logging, _user_errors, app


@app.command()
def train(
    model: str = typer.Argument(..., help="zoo name (see `pocketdet zoo`) or a config YAML"),
    data: Path = typer.Option(..., "--data", help="dataset YAML (path/train/val/names)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default runs/<model>)"),
    iters: Optional[int] = typer.Option(None, help="override schedule.max_iters (the schedule is rescaled)"),
    batch_size: Optional[int] = typer.Option(None, help="images per process"),
    lr: Optional[float] = typer.Option(None, help="base LR for the reference batch"),
    workers: Optional[int] = typer.Option(None, help="data loader workers per process"),
    device: str = typer.Option("auto", help="auto (a CUDA GPU when there is one) | cpu | cuda | cuda:N"),
    resume: Optional[str] = typer.Option(None, help="checkpoint to resume from, or 'auto' for <out>/last.pt"),
    pretrained: Optional[str] = typer.Option(None, help="backbone weights: path or URL (Paddle/torchvision/pocketdet)"),
    weights: Optional[str] = typer.Option(None, "--weights", help="initialise the whole detector: coco (official "
                                          "weights, downloaded once) | CKPT.pt | FILE.pdparams; other classes: "
                                          "class layers rebuilt, classes with a trained name keep their rows"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip periodic evaluation"),
    gpu_aug: bool = typer.Option(False, "--gpu-aug", help="`augment: ssd` recipes: decode and augment each batch "
                                 "on the training device (nvJPEG + batched tensor ops; workers only read bytes), "
                                 "see docs/data_pipeline.md; off: the CPU pipeline in the workers"),
    set_: list[str] = typer.Option([], "--set", help="config override key=value, e.g. train.ema_decay=0.9998"),
):
    """Train a zoo model on a COCO-format or YOLO-txt dataset.

    SIGTERM or Ctrl-C stops at the end of the current iteration: last.pt is written, the result is printed, and
    the exit code is 143 (SIGTERM) or 130 (SIGINT); `--resume auto` then continues exactly where it stopped."""
    _setup_logging()
    from ..config import apply_overrides, load_config
    from ..convert.common import WeightConversionError
    from ..data import build_dataset, load_dataset_yaml
    from ..engine.device import resolve_device
    from ..engine.trainer import TrainOptions
    from ..engine.trainer import train as run_train

    try:
        device = resolve_device(device)
        cfg = load_config(model)
        overrides = train_overrides(cfg, set_, iters, batch_size, lr, workers)
        if overrides:
            cfg = apply_overrides(cfg, overrides)
        spec = load_dataset_yaml(data)
        train_ds = build_dataset(spec, "train")
        val_ds = None if no_eval or spec.val is None else build_dataset(spec, "val", train_ds.class_names)
        out_dir = out or Path("runs") / cfg.name
        resume_path = (out_dir / "last.pt") if resume == "auto" else (Path(resume) if resume else None)
        if resume == "auto" and not resume_path.exists():
            resume_path = None
        if weights and pretrained:
            _fail("--weights initialises the whole detector, backbone included: drop --pretrained")
        init_fn = (_weights_init(model, weights) if weights else
                   _pretrained_init(pretrained) if pretrained else _frozen_norm_init(train_ds))
        hooks = _family_hooks(cfg, gpu_aug)
        result = run_train(cfg, train_ds, TrainOptions(out_dir=out_dir, device=device, resume=resume_path,
                                                        eval_dataset=val_ds, init_fn=init_fn, **hooks))
    except _user_errors() + (WeightConversionError,) as e:
        _fail(str(e))
    from ..engine.distributed import is_main
    if is_main():
        typer.echo(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}, indent=2))
    if result.get("interrupted"):
        import signal
        raise typer.Exit(128 + getattr(signal, result["interrupted"], signal.SIGTERM))


def train_overrides(cfg, set_: list[str], iters=None, batch_size=None, lr=None, workers=None) -> list[str]:
    """`pocketdet train` options as config overrides (explicit --set values first, options after)."""
    overrides = list(set_)
    if iters is not None:
        overrides += [f"train.schedule.max_iters={iters}"]
        cos = cfg.train.schedule.cosine_iters
        if cos and not any(o.startswith("train.schedule.cosine_iters") for o in set_):
            # PicoDet-L stops at 250 of 300 cosine epochs: keep that fraction of a shorter run
            overrides.append(f"train.schedule.cosine_iters={max(1, round(cos * iters / cfg.train.schedule.max_iters))}")
        # phases of the schedule keep their fraction of a shorter run: YOLOv3 mixes up for the first 250k of 500k
        # iterations, PicoDet assigns with ATSS for the first third
        warm = cfg.train.schedule.warmup_iters
        if warm > iters // 4 and not any(o.startswith("train.schedule.warmup_iters") for o in set_):
            # a recipe's 2000-iteration warmup would fill a 500-iteration run: keep it to its first quarter
            overrides.append(f"train.schedule.warmup_iters={iters // 4}")
        for key in ("mixup_iters", "static_assigner_iters"):
            n = cfg.train.extra.get(key)
            if isinstance(n, int) and n > 0 and not any(o.startswith(f"train.extra.{key}") for o in set_):
                overrides.append(f"train.extra.{key}={min(round(n * iters / cfg.train.schedule.max_iters), iters)}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    if lr is not None:
        overrides.append(f"train.optimizer.lr={lr}")
    if workers is not None:
        overrides.append(f"train.num_workers={workers}")
    return overrides


def _pretrained_init(src: str, min_fraction: float = 1 / 3):
    """Backbone init from Paddle / torchvision / pocketdet weights (a URL goes through torch hub's cache).
    Logs how many backbone tensors loaded; refuses when fewer than `min_fraction` of them did: a checkpoint of
    another family or size fits a few stem layers by shape (SSDLite-Large into Small: 40 of 271) and would
    silently leave the rest random, while real ImageNet weights fill 60% of SSDLite-Small's backbone (its
    extra layers and halved tail are not in them) and all of YOLOv3's."""
    def init(model):
        from ..convert import load_backbone_weights
        from ..convert.common import WeightConversionError
        try:
            report = load_backbone_weights(model, src)
        except OSError as e:  # URLError, timeouts: offline machines get one line, not a urllib traceback
            raise WeightConversionError(f"--pretrained {src}: cannot read it ({getattr(e, 'reason', None) or e}); "
                                        f"offline? download the file elsewhere and pass its path") from None
        total = len(report.loaded) + len(report.not_loaded)
        logging.getLogger("pocketdet.train").info(
            "--pretrained %s: loaded %d of %d backbone tensors, %d kept their initialisation, %d file entries "
            "ignored", src, len(report.loaded), total, len(report.not_loaded), len(report.ignored))
        if len(report.loaded) < min_fraction * total:
            first = next(iter(report.not_loaded.items()), ("", ""))
            raise WeightConversionError(
                f"--pretrained {src}: only {len(report.loaded)} of {total} backbone tensors fit this model "
                f"(first left out: {first[0]}: {first[1]}); is it a checkpoint of another family or size?")
    return init


def _weights_init(model_spec: str, weights: str):
    """Whole-detector init from `weights` (resolved, downloaded and converted now, before training starts);
    class layers rebuilt when the dataset's classes differ (pocketdet/init_weights.py)."""
    from ..api import load, weights_checkpoint
    ckpt = weights_checkpoint(model_spec, weights)

    def init(model):
        from ..init_weights import init_from_model
        report = init_from_model(model, load(ckpt), weights)
        logging.getLogger("pocketdet.train").info("%s", report.summary())
    return init


def _frozen_norm_init(dataset, n: int = 16):
    """Without --pretrained, a model with frozen BN (Cascade R-CNN's backbone) gets its frozen statistics from
    the first `n` training photos (`calibrate_frozen_norm`): identity statistics on random weights make the
    activations vanish. Other models are left alone."""
    def init(model):
        if hasattr(model, "calibrate_frozen_norm"):
            model.calibrate_frozen_norm([dataset[i][0].float() / 255 for i in range(min(n, len(dataset)))])
    return init


def _family_hooks(cfg, gpu_aug: bool = False) -> dict:
    """Per-family hooks: data (ssd: undecoded photos for the reduced decode, or with `gpu_aug` the batched device
    pipeline; YOLOv3 multi-scale + mixup; R-CNN and PicoDet multi-scale) and per-iteration model state (PicoDet:
    which assigner)."""
    from ..engine.family_hooks import hooks_for
    return hooks_for(cfg, gpu_aug=gpu_aug)
