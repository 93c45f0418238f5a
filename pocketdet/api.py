"""The Python API: `build` a zoo model, `load` a checkpoint, count parameters and FLOPs."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError, load_config, parse_config
from .engine.checkpoint import CheckpointError, load_checkpoint
from .models import build_model
from .models.base import DetectionModel



def coco_class_names() -> list[str]:
    from .data.coco_names import COCO_CLASSES
    return list(COCO_CLASSES)


def build(name: str, num_classes: int = 80, class_names: list[str] | None = None) -> DetectionModel:
    """A zoo model with random weights; COCO's 80 class names by default."""
    cfg = load_config(name)
    if class_names is None and num_classes == 80:
        class_names = coco_class_names()
    return build_model(cfg.model, num_classes=num_classes, class_names=class_names)


def load(path: str | Path, map_location="cpu", use_ema: bool = True) -> DetectionModel:
    """The model saved in a pocketdet checkpoint (training, converted or quantized), in eval mode, with its
    class names and post-processing settings."""
    ck = load_checkpoint(path, map_location)
    try:
        cfg = parse_config(ck["config"], f"{path} (embedded config)")
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: bad embedded config: {e}") from None
    model = build_model(cfg.model, class_names=ck.get("class_names"))
    state = ck["ema"]["module"] if use_ema and ck.get("ema") else ck["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit {cfg.name}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    if ck.get("postprocess"):
        model.postprocess_cfg.update(ck["postprocess"])
    model.zoo_config = cfg
    return model.eval()


def model_from_name_or_checkpoint(spec: str | Path) -> DetectionModel:
    p = Path(spec)
    if p.suffix in (".pt", ".pth") or p.is_file():
        return load(p)
    return build(str(spec)).eval()


def count_flops(model: DetectionModel, size: int | None = None) -> int:
    """FLOPs (2 x multiply-adds) of the dense network (`forward_raw`) on one size x size image."""
    from torch.utils.flop_counter import FlopCounterMode

    s = size or model.input_size
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.forward_raw(torch.zeros(1, 3, s, s))
    model.train(was)
    return int(fc.get_total_flops())


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
