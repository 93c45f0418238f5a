"""The Python API: `build` a zoo model, `load` a checkpoint, count parameters and FLOPs."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError, load_config, parse_config, zoo_names
from .checkpoint import CheckpointError, load_checkpoint
from .models import build_model
from .models.base import DetectionModel


def coco_class_names() -> list[str]:
    from .data.coco_names import COCO_CLASSES
    return list(COCO_CLASSES)


def split_model_spec(spec: str | Path) -> tuple[str, str | None]:
    """`NAME:WEIGHTS` -> (NAME, WEIGHTS) when NAME is a zoo name and `spec` is not an existing file;
    anything else -> (spec, None). WEIGHTS is an official tag (`coco`) or a weight file."""
    s = str(spec)
    name, sep, weights = s.partition(":")
    if sep and weights and name in zoo_names() and not Path(s).exists():
        return name, weights
    return s, None


def weights_checkpoint(name: str, weights: str | Path) -> Path:
    """A pocketdet checkpoint holding `weights` for zoo model `name`: an official tag from the zoo YAML
    (`coco`: downloaded and converted once, `pocketdet.hub`), a pocketdet checkpoint, or a Paddle weight file
    or persistables folder (converted once, cached under its hash)."""
    from . import hub

    p = Path(weights)
    if p.suffix in (".pt", ".pth") or (p.is_file() and _is_torch_file(p)):
        return p
    if p.exists() or p.suffix in (".pdparams", ".pdparam", ".tar", ".gz"):
        return hub.paddle_file_checkpoint(name, p)
    return hub.official_checkpoint(name, str(weights))


def _is_torch_file(p: Path) -> bool:
    with p.open("rb") as f:
        return f.read(2) == b"PK"  # torch.save's zip container


def build(name: str, num_classes: int = 80, class_names: list[str] | None = None,
          weights: str | Path | None = None) -> DetectionModel:
    """A zoo model; COCO's 80 class names by default. weights=None: random init. weights="coco" (a tag of
    the zoo YAML's `weights`), a checkpoint or a Paddle file: those weights, in eval mode; with other
    class_names the class-dependent layers are rebuilt (classes whose name matches keep their trained rows,
    `init_weights`)."""
    if weights is None:
        cfg = load_config(name)
        if class_names is None and num_classes == 80:
            class_names = coco_class_names()
        model = build_model(cfg.model, num_classes=num_classes, class_names=class_names)
        model.zoo_config = cfg
        return model
    model = load(weights_checkpoint(name, weights))
    arch = load_config(name).model["arch"]
    if model.zoo_config.model["arch"] != arch:
        raise CheckpointError(f"{weights}: holds a {model.zoo_config.model['arch']} model, not {name} ({arch})")
    if class_names is not None and list(class_names) != list(model.class_names):
        from .init_weights import init_from_model
        target = build_model(model.zoo_config.model, class_names=list(class_names))
        init_from_model(target, model, str(weights))
        target.zoo_config = model.zoo_config
        model = target.eval()
    return model


def load(path: str | Path, map_location="cpu", use_ema: bool = True) -> DetectionModel:
    """The model saved in a pocketdet checkpoint (training, converted or quantized), in eval mode, with its
    class names and post-processing settings. `NAME:coco` (zoo name + official weights tag) works too."""
    name, weights = split_model_spec(path)
    if weights is not None:
        return build(name, weights=weights)
    ck = load_checkpoint(path, map_location)
    try:
        cfg = parse_config(ck["config"], f"{path} (embedded config)")
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: bad embedded config: {e}") from None
    model = build_model(cfg.model, class_names=ck.get("class_names"))
    state = ck["ema"]["module"] if use_ema and ck.get("ema") else ck["model"]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes differ: weights of another model size or class count
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln] or [str(e).splitlines()[0]]
        raise CheckpointError(f"{path}: weights do not fit {cfg.name} ({len(lines)} tensors of another shape; "
                              f"first: {lines[0][:200]})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit {cfg.name}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    if ck.get("postprocess"):
        model.postprocess_cfg.update(ck["postprocess"])
    model.zoo_config = cfg
    return model.eval()


def model_from_name_or_checkpoint(spec: str | Path) -> DetectionModel:
    """THE model resolution of every CLI verb: a pocketdet checkpoint (.pt/.pth or any existing file),
    `NAME:WEIGHTS` (zoo name + official tag such as `coco`, or + a weight file), or a bare zoo name
    (random weights); in eval mode."""
    name, weights = split_model_spec(spec)
    if weights is not None:
        return build(name, weights=weights)
    p = Path(spec)
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory; expected a checkpoint file (.pt) or a zoo name")
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
