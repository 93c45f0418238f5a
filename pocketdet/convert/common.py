"""What every converter shares: the error type, the report, strict loading and the checkpoint writer."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn


class WeightConversionError(ValueError):
    """Weights that cannot be converted; the message names the file and every offending key."""


@dataclass
class ConversionReport:
    source: str
    layout: str                 # how the file was stored (pickle, persistables folder, tar, torch file)
    naming: str                 # which naming convention was recognised
    target: str                 # zoo model / module the weights went into
    loaded: list[str] = field(default_factory=list)                 # pocketdet keys that received weights
    transformed: dict[str, str] = field(default_factory=dict)       # pocketdet key -> what was changed
    ignored: dict[str, str] = field(default_factory=dict)           # source key -> why it was not used
    not_loaded: dict[str, str] = field(default_factory=dict)        # pocketdet key -> why it kept its init
    notes: list[str] = field(default_factory=list)

    def summary(self, max_items: int = 12) -> str:
        lines = [f"{self.source} ({self.layout}, {self.naming} names) -> {self.target}",
                 f"  loaded {len(self.loaded)} tensors"]
        for title, d in (("transformed", self.transformed), ("not loaded (kept initialisation)", self.not_loaded),
                         ("ignored from the file", self.ignored)):
            if d:
                lines.append(f"  {title}: {len(d)}")
                lines += [f"    {k}: {v}" for k, v in list(d.items())[:max_items]]
                if len(d) > max_items:
                    lines.append(f"    ... {len(d) - max_items} more")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def model_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict entries that carry weights (BN's num_batches_tracked is bookkeeping, not a weight)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _listing(keys, limit: int = 25) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_and_load(model: nn.Module, tensors: dict[str, np.ndarray | torch.Tensor], source: str,
                   unmapped: list[str], strict: bool = True) -> list[str]:
    """Copy `tensors` (pocketdet key -> value) into `model`.

    strict: every model key must be provided. Always refused: `unmapped` source keys, keys the model does not
    have, shape mismatches. One error lists every problem, so a user sees the whole picture at once."""
    target = model_keys(model)
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} key(s) in the file have no counterpart in the model: {_listing(unmapped)}")
    unknown = [k for k in tensors if k not in target]
    if unknown:
        problems.append(f"{len(unknown)} converted key(s) do not exist in the model: {_listing(unknown)}")
    shape_bad = [f"{k} (file {tuple(np.shape(v))}, model {tuple(target[k].shape)})"
                 for k, v in tensors.items() if k in target and tuple(np.shape(v)) != tuple(target[k].shape)]
    if shape_bad:
        problems.append(f"{len(shape_bad)} shape mismatch(es): {_listing(shape_bad, 15)}")
    if strict:
        missing = [k for k in target if k not in tensors]
        if missing:
            problems.append(f"{len(missing)} model key(s) missing from the file: {_listing(missing)}")
    if problems:
        raise WeightConversionError(f"{source}: cannot convert:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for k, v in tensors.items():
            dst = target[k]
            src = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            dst.copy_(src.to(dst.dtype))  # float16 files widen to float32 exactly
    return list(tensors)


def save_converted(model: nn.Module, out_path: str | Path, config: dict | None = None) -> Path:
    """Write a pocketdet checkpoint: {"model": state_dict, "config": zoo config dict, "class_names": [...]},
    readable by `pocketdet.load` with torch.load(weights_only=True). The write is atomic (temp file + rename)."""
    cfg = config if config is not None else getattr(model, "zoo_config", None)
    if cfg is None:
        raise ValueError("save_converted needs the zoo config: pass config= or use a model from convert_*()")
    if hasattr(cfg, "model_dump"):
        cfg = cfg.model_dump()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    obj = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "config": cfg,
           "class_names": list(getattr(model, "class_names", []))}
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
