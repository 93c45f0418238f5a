"""Official weights by name: `NAME:coco` -> the file the zoo YAML names, downloaded once, checked, converted once.

    zoo YAML `weights.coco` (url, format, sha256/size when known)
      -> download into $POCKETDET_HOME/downloads (default: torch hub's dir + /pocketdet), with a progress bar,
         into a temp file renamed only once complete and checked (Content-Length, size, sha256)
      -> convert (pocketdet.convert.paddle) into $POCKETDET_HOME/converted/NAME-TAG-<source sha256>-c<converter
         version>.pt, an ordinary pocketdet checkpoint
      -> later calls find both files and make no request.

`$POCKETDET_MIRROR` (a base URL) replaces the scheme and host of every official URL: a local mirror, or the
loopback server of the tests. Every failure is one line naming the URL or file, the problem and how to place
the file by hand; nothing half-written is left in the cache.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.parse
from pathlib import Path

from .config import ConfigError, WeightsCfg, load_config
from .convert.common import WeightConversionError, save_converted
from .convert.paddle import convert_paddle
from .convert.paddle_io import PaddleFormatError
from .checkpoint import CheckpointError
from .download import DownloadError, check_file, fetch, sha256_of

log = logging.getLogger("pocketdet.hub")

# Part of the converted file's cache key: bump when convert_paddle would write a different checkpoint for
# the same source file (a fixed mapping bug, a new transform), so stale conversions are not reused.
CONVERTER_VERSION = 1
TIMEOUT_S = 30.0


class WeightsError(CheckpointError):
    """Weights that cannot be fetched or used; one line naming the URL or file and the fix. A CheckpointError,
    so every CLI verb that takes a model reports it as a user error."""


def home() -> Path:
    env = os.environ.get("POCKETDET_HOME")
    if env:
        return Path(env).expanduser()
    import torch
    return Path(torch.hub.get_dir()) / "pocketdet"


def weights_entry(name: str, tag: str) -> WeightsCfg:
    cfg = load_config(name)
    if tag not in cfg.weights:
        known = ", ".join(cfg.weights) or "none"
        raise WeightsError(f"{name}: no official weights tagged {tag!r} (known: {known}); "
                           f"pass a weight file instead: --weights PATH")
    return cfg.weights[tag]


def source_url(url: str) -> str:
    """The URL actually requested: `$POCKETDET_MIRROR` replaces scheme and host, keeping the path."""
    mirror = os.environ.get("POCKETDET_MIRROR")
    if not mirror:
        return url
    return mirror.rstrip("/") + urllib.parse.urlsplit(url).path


def _hand_placement(dst: Path) -> str:
    return f"download it elsewhere and pass --weights PATH, or copy it to {dst}"


def _check(path: Path, entry: WeightsCfg, what: str) -> str:
    """sha256 of `path`, after the size and hash checks the entry allows; raises WeightsError."""
    try:
        return check_file(path, entry.size, entry.sha256, what)
    except DownloadError as e:
        raise WeightsError(str(e)) from None


def download(url: str, dst: Path, entry: WeightsCfg, progress: bool = True) -> str:
    """Fetch `url` into `dst` (all or nothing, see pocketdet/download.py) and return its sha256."""
    try:
        return fetch(url, dst, size=entry.size, sha256=entry.sha256, progress=progress, timeout=TIMEOUT_S)
    except DownloadError as e:
        raise WeightsError(f"{e}; {_hand_placement(dst)}") from None


def official_source(name: str, tag: str = "coco", progress: bool = True) -> tuple[Path, str]:
    """(local path, sha256) of the official file: cached, or downloaded now."""
    entry = weights_entry(name, tag)
    dst = home() / "downloads" / entry.url.rstrip("/").rsplit("/", 1)[-1]
    if dst.is_file():  # downloaded earlier (complete: only renamed after the checks) or placed by hand
        return dst, _check(dst, entry, str(dst))
    url = source_url(entry.url)
    log.info("downloading %s weights %r from %s", name, tag, url)
    return dst, download(url, dst, entry, progress)


def converted_checkpoint(name: str, source: Path, digest: str, label: str) -> Path:
    """The pocketdet checkpoint of a Paddle file, converted once and cached under its sha256."""
    out = home() / "converted" / f"{load_config(name).name}-{label}-{digest[:16]}-c{CONVERTER_VERSION}.pt"
    if out.is_file():
        return out
    try:
        model, report = convert_paddle(source, name)
    except (WeightConversionError, PaddleFormatError, ConfigError) as e:
        first = str(e).splitlines()[0]
        raise WeightsError(f"{first} (is {source} the {name} weights? pass the right file with --weights PATH)") \
            from None
    log.info("%s", report.summary())
    save_converted(model, out)  # atomic: temp file + rename
    return out


def official_checkpoint(name: str, tag: str = "coco", progress: bool = True) -> Path:
    """A pocketdet checkpoint holding `name`'s official `tag` weights (download + convert on first use)."""
    src, digest = official_source(name, tag, progress)
    try:
        return converted_checkpoint(name, src, digest, tag)
    except WeightsError as e:  # e.g. an error page served as the file: drop it, the next call fetches again
        src.unlink(missing_ok=True)
        raise WeightsError(f"{e}; removed {src} from the cache") from None


def paddle_file_checkpoint(name: str, path: str | Path) -> Path:
    """A user's Paddle weight file (.pdparams, persistables folder or .tar) converted for zoo model `name`."""
    p = Path(path)
    if p.is_dir():  # a persistables folder: keyed by its files' names, sizes and times (hashing all is slow)
        stamp = sorted((f.relative_to(p).as_posix(), f.stat().st_size, f.stat().st_mtime_ns)
                       for f in p.rglob("*") if f.is_file())
        return converted_checkpoint(name, p, hashlib.sha256(repr(stamp).encode()).hexdigest(), "dir")
    if not p.is_file():
        raise WeightsError(f"{p}: no such weight file")
    return converted_checkpoint(name, p, sha256_of(p), "file")
