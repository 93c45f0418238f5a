"""`--device` as users type it (auto, cpu, cuda, cuda:1, gpu), checked before any work starts; the CPUs this
process may use, which cap data loader workers (training and evaluation)."""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("pocketdet.data")


class DeviceError(ValueError):
    """The requested device does not exist on this machine; the message says what is available."""


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a CUDA GPU is visible, else 'cpu'; 'gpu' is read as 'cuda'. Raises DeviceError
    (one line) for an unknown name or a GPU that is not there, instead of a CUDA traceback mid-run."""
    spec = name.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "gpu" or spec.startswith("gpu:"):
        spec = "cuda" + spec[3:]
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"--device {name!r}: unknown device (auto | cpu | cuda | cuda:N)") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise DeviceError(f"--device {name!r}: only cpu and cuda are supported (auto | cpu | cuda | cuda:N)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f"--device {name!r}: no CUDA GPU is visible on this machine "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                          f"use --device cpu or --device auto")
    if dev.index is not None and dev.index >= count:
        raise DeviceError(f"--device {name!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    return spec


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_workers(requested: int) -> int:
    """The requested worker count (8 in most zoo recipes, tuned for 8-GPU servers; `val --workers`), capped at
    the CPUs this process may use: more workers than cores only add contention and a torch warning per run."""
    n = min(requested, available_cpus())
    if n < requested:
        log.info("data loader workers: %d (%d requested, capped at this machine's %d CPUs)", n, requested, n)
    return n
