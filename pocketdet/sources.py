"""What `pocketdet predict` reads: image files, folders, globs, `.txt` lists of images, video files and camera
indices, each item with an output name that is unique across all sources.

    items = collect_sources(["photos/", "more/*.jpg", "list.txt", "clip.mp4", "0"])
    for frame in frames(items, stride=1, max_frames=None): ...   # Frame(rgb, source, out_name, index, ...)

Output names keep the sources apart: an item's name is its file name without suffix (folders are read one level
deep), and a name already taken gets `_1`, `_2`, ... (`unique_names`): `dupA/img.jpg` and `dupB/img.jpg` given
as `dupA/ dupB/` -> `img` and `img_1`, so two sources never write to the same file. Videos and cameras come from PyAV (`pip install pocketdet[video]`,
FFmpeg inside the wheel). No torch here: the CLI combines this with either runtime.
"""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}


class SourceError(ValueError):
    """A source matches nothing or cannot be opened; the message names it."""


@dataclass
class Item:
    """One image file, video file or camera to read. `out_name`: unique output stem (may contain '/')."""
    kind: str  # "image" | "video" | "camera"
    location: str  # path, or the camera's device (index or /dev/videoN)
    out_name: str


@dataclass
class Frame:
    """A decoded image or video frame (`rgb` HxWx3 uint8), or the reason it could not be read (`error`)."""
    item: Item
    rgb: np.ndarray | None
    index: int = 0  # frame number in its video (0 for images)
    time_s: float | None = None  # presentation time in its video
    error: str | None = None


def collect_sources(sources: list[str]) -> list[Item]:
    """Resolve every source into items; raises SourceError naming a source that yields nothing."""
    found: list[tuple[str, Path | str, Path | None]] = []  # (kind, location, base folder for the output name)
    for src in sources:
        items = _resolve(src)
        if not items:
            raise SourceError(f"no images found for {src!r} (nor videos: {', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})")
        found += items
    names = unique_names([_stem(kind, loc, base) for kind, loc, base in found])
    return [Item(kind, str(loc), name) for (kind, loc, _), name in zip(found, names)]


def _resolve(src: str) -> list[tuple[str, Path | str, Path | None]]:
    if re.fullmatch(r"\d+|/dev/video\d+", src):
        return [("camera", src, None)]
    p = Path(src)
    if p.is_dir():  # images and videos directly in it, sorted; the output keeps names relative to it
        return [(_kind(q), q, p) for q in sorted(p.iterdir()) if q.is_file() and _kind(q)]
    if p.is_file() and p.suffix.lower() == ".txt":
        return _read_list(p)
    if p.is_file():
        return [(_kind(p) or "image", p, None)]  # unknown suffix: let the decoder decide (clear error if not)
    return [(_kind(Path(q)), Path(q), None) for q in sorted(glob.glob(src, recursive=True))
            if Path(q).is_file() and _kind(Path(q))]


def _read_list(path: Path) -> list[tuple[str, Path | str, Path | None]]:
    """A `.txt` list: one image/video path per line (relative to the list's folder), '#' comments. Every
    listed file must exist: a list that names missing files is an error, not '0 images'."""
    out, missing = [], []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        q = Path(line) if Path(line).is_absolute() else path.parent / line
        if not q.is_file():
            missing.append(line)
        else:
            out.append((_kind(q) or "image", q, None))
    if missing:
        raise SourceError(f"{path}: {len(missing)} listed file(s) not found, e.g. {missing[0]!r}")
    return out


def _kind(p: Path) -> str | None:
    s = p.suffix.lower()
    return "image" if s in IMAGE_SUFFIXES else "video" if s in VIDEO_SUFFIXES else None


def _stem(kind: str, loc, base: Path | None) -> str:
    if kind == "camera":
        return f"camera{re.sub(r'[^0-9]', '', str(loc))}"
    p = Path(loc)
    rel = p.relative_to(base) if base is not None else Path(p.name)
    return str(rel.with_suffix(""))


def unique_names(stems: list[str]) -> list[str]:
    """Suffix `_1`, `_2`, ... onto repeated stems (case-insensitively: some file systems ignore case), in
    order, so `a/img.jpg` and `b/img.png` become `img` and `img_1`."""
    taken: set[str] = set()
    out = []
    for stem in stems:
        name, k = stem, 0
        while name.lower() in taken:
            k += 1
            name = f"{stem}_{k}"
        taken.add(name.lower())
        out.append(name)
    return out


# -- reading ---------------------------------------------------------------------------------------------------
def frames(items: list[Item], stride: int = 1, max_frames: int | None = None) -> Iterator[Frame]:
    """Decoded images and video/camera frames in order. Videos: every `stride`-th frame, at most `max_frames`
    per video (cameras run until `max_frames` or the stream ends). Unreadable images come back with `error`."""
    for item in items:
        if item.kind == "image":
            yield _read_image(item)
        else:
            yield from video_frames(item, stride, max_frames)


def _read_image(item: Item) -> Frame:
    from .deploy import npops

    try:
        return Frame(item, npops.load_rgb(item.location))
    except (OSError, ValueError) as e:
        return Frame(item, None, error=str(e))


def _av():
    try:
        import av
    except ImportError:
        raise SourceError("video and camera sources need PyAV: pip install 'pocketdet[video]' (or: pip install av)") from None
    return av


def open_video(item: Item):
    """A PyAV container for a video file or camera (Linux: V4L2 device, index N -> /dev/videoN)."""
    av = _av()
    try:
        if item.kind == "camera":
            dev = item.location if item.location.startswith("/dev/") else f"/dev/video{item.location}"
            return av.open(dev, format="v4l2")
        return av.open(item.location)
    except (av.FFmpegError, OSError) as e:
        raise SourceError(f"cannot open {item.kind} {item.location}: {e}") from None


def video_frames(item: Item, stride: int = 1, max_frames: int | None = None) -> Iterator[Frame]:
    if stride < 1:
        raise SourceError(f"--stride must be >= 1, got {stride}")
    av = _av()
    container = open_video(item)
    try:
        if not container.streams.video:
            raise SourceError(f"{item.location}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's own frame threads
        taken = 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i % stride:
                    continue
                yield Frame(item, frame.to_ndarray(format="rgb24"), index=i,
                            time_s=float(frame.time) if frame.time is not None else None)
                taken += 1
                if max_frames is not None and taken >= max_frames:
                    break
        except av.FFmpegError as e:
            if taken == 0:
                raise SourceError(f"cannot decode {item.location}: {e}") from None
            yield Frame(item, None, index=-1, error=f"stopped after {taken} frames: {e}")
    finally:
        container.close()


def video_rate(item: Item) -> float:
    """Frames per second of a video/camera (25 when the container does not say)."""
    container = open_video(item)
    try:
        rate = container.streams.video[0].average_rate
        return float(rate) if rate else 25.0
    finally:
        container.close()
