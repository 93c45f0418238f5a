"""Zoo / training configuration: YAML files validated by pydantic, with errors that name file and key."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ZOO_DIR = Path(__file__).parent / "zoo"


class ConfigError(ValueError):
    """A configuration file (or override) is invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimizerCfg(_Strict):
    type: Literal["momentum", "adamw"] = "momentum"
    lr: float = Field(gt=0, description="base LR for the reference total batch (train.reference_batch)")
    momentum: float = 0.9
    weight_decay: float = 0.0        # conv / linear weights outside the backbone
    backbone_weight_decay: float | None = None  # None: same as weight_decay
    norm_decay: float = 0.0          # BN scale/shift
    bias_decay: float | None = None  # None: same as the weights of the same part
    bias_lr_mult: float = 1.0
    clip_grad_norm: float | None = None


class ScheduleCfg(_Strict):
    type: Literal["cosine", "piecewise", "constant"] = "cosine"
    max_iters: int = Field(gt=0)
    cosine_iters: int | None = Field(None, gt=0, description="cosine period when training stops before its end "
                                     "(ppdet CosineDecay max_epochs > epoch); None: max_iters")
    warmup_iters: int = 0
    warmup_factor: float = 1.0 / 3.0
    milestones: list[int] = []
    gamma: float = 0.1


class TrainCfg(_Strict):
    batch_size: int = Field(gt=0, description="images per GPU (per process)")
    reference_batch: int = Field(gt=0, description="total batch the LR was tuned for")
    scale_lr: bool = True            # linear LR scaling when the total batch differs from reference_batch
    optimizer: OptimizerCfg
    schedule: ScheduleCfg
    augment: Literal["ssd", "yolo", "rcnn", "none"] = "ssd"
    num_workers: int = 2             # data loader workers per process, capped at the CPUs the process may use
    ema_decay: float | None = None
    amp: bool = True                 # used on CUDA only
    sync_bn: bool = False
    eval_interval: int = 5000
    checkpoint_interval: int = 5000
    log_interval: int = 20
    seed: int = 0
    skip_nonfinite: int = Field(0, ge=0, description="consecutive non-finite steps (loss or gradient) skipped "
                                "with a warning before training stops; 0: stop at the first")
    extra: dict[str, Any] = {}       # family-specific training knobs (e.g. mixup_iters for YOLOv3)


class WeightsCfg(_Strict):
    """An official weight file of a zoo model (the timm pattern: the builder knows nothing of downloads;
    `pocketdet.hub` fetches, checks and converts the file named here)."""
    url: str
    format: Literal["pdparams", "persistables-tar"]   # pickled fluid.save / paddle.save, or a tar of LoDTensors
    converter: Literal["paddle"] = "paddle"
    sha256: str | None = None        # None: not known (recorded offline); checked when given
    size: int | None = None          # bytes; checked when given
    box_ap: float | None = None      # the publisher's COCO val2017 box AP for this file
    source: str = ""                 # where the URL is published
    note: str = ""


class ZooCfg(_Strict):
    name: str
    description: str = ""
    model: dict[str, Any]
    train: TrainCfg
    reference: dict[str, Any] = {}   # published numbers (AP, latency) for reports
    weights: dict[str, WeightsCfg] = {}  # tag (e.g. "coco") -> official file: `pocketdet.load("NAME:coco")`

    @model_validator(mode="after")
    def _arch(self):
        if "arch" not in self.model:
            raise ValueError("model.arch is required")
        return self


def _fmt(e: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<dict>") -> ZooCfg:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at top level, got {type(data).__name__}")
    try:
        cfg = ZooCfg.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_fmt(e, source)) from None
    check_model_keys(cfg.model, source)
    return cfg


def check_model_keys(model_cfg: dict, source: str) -> None:
    from .models import MODEL_CLASSES

    arch = model_cfg["arch"]
    if arch not in MODEL_CLASSES:
        raise ConfigError(f"invalid config {source}: model.arch: unknown architecture {arch!r} "
                          f"(known: {', '.join(sorted(MODEL_CLASSES))})")
    params = inspect.signature(MODEL_CLASSES[arch].__init__).parameters
    for key in model_cfg:
        if key != "arch" and key not in params:
            raise ConfigError(f"invalid config {source}: model.{key}: unknown key for arch {arch!r}")


def load_config(path_or_name: str | Path) -> ZooCfg:
    """A zoo name (`ssdlite_mnv3_large_320`) or a path to a YAML file."""
    p = Path(path_or_name)
    if not p.suffix:
        p = ZOO_DIR / f"{path_or_name}.yaml"
        if not p.exists():
            raise ConfigError(f"unknown zoo model {str(path_or_name)!r}; known: {', '.join(zoo_names())}")
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {p}: {e}") from None
    return parse_config(data, str(p))


def zoo_names() -> list[str]:
    return sorted(p.stem for p in ZOO_DIR.glob("*.yaml"))


def apply_overrides(cfg: ZooCfg, overrides: list[str]) -> ZooCfg:
    """`key.sub=value` overrides (value parsed as YAML), validated like the file itself."""
    data = cfg.model_dump()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: unknown key {key!r}")
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return parse_config(data, "overrides " + " ".join(overrides))
