"""The dataset YAML: `path`, `train`, `val`, `names`, as users know it from other tools.

```yaml
path: ../data/coco128            # root, relative to this file
names: [person, bicycle, ...]    # or {0: person, 1: bicycle}; optional for COCO JSON (taken from categories)
train:                           # COCO JSON split
  images: images/train2017
  annotations: annotations/instances_train2017.json
val: images/val2017              # YOLO split: labels in the sibling 'labels' folder (images -> labels)
# val: {images: images/val2017, labels: object_detection/labels/val2017}   # or an explicit label folder
```
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .base import DetectionDataset
from .coco import CocoDetection
from .errors import DataError
from .yolo import YoloDetection


class SplitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: str
    annotations: str | None = None  # COCO JSON
    labels: str | None = None       # YOLO txt folder


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = "."
    names: list[str] | dict[int, str] | None = None
    train: str | SplitSpec | None = None
    val: str | SplitSpec | None = None
    test: str | SplitSpec | None = None
    source: str = ""  # filled in by the loader: the YAML's path, for messages

    def class_names(self) -> list[str] | None:
        if self.names is None or isinstance(self.names, list):
            return self.names
        keys = sorted(self.names)
        if keys != list(range(len(keys))):
            raise DataError(f"{self.source}: names must be numbered 0..N-1, got {keys}")
        return [self.names[k] for k in keys]


def load_dataset_yaml(path: str | Path) -> DatasetSpec:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset YAML not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"invalid YAML in {p}: {e}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{p}: expected a mapping with path/train/val/names")
    raw.pop("nc", None)  # tolerated for compatibility; the count comes from names
    _check_keys(raw, p)
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as e:
        msgs = "; ".join(f"{_user_loc(er['loc'])}: {er['msg']}" for er in e.errors())
        raise DataError(f"invalid dataset YAML {p}: {msgs}") from None
    root = (p.parent / spec.path).resolve()
    spec.path = str(root)
    spec.source = str(p)
    return spec


def _check_keys(raw: dict, p: Path) -> None:
    """Unknown keys named as the user wrote them, with the allowed ones (pydantic would report them per member
    of the `str | SplitSpec` union: "train.str: ...; train.SplitSpec.annotation: Extra inputs ...")."""
    top = [k for k in DatasetSpec.model_fields if k != "source"]
    for key, value in raw.items():
        if key not in top:
            raise DataError(f"{p}: unknown key {key!r} (allowed: {', '.join(top)}, nc)")
        if key in ("train", "val", "test") and isinstance(value, dict):
            bad = [k for k in value if k not in SplitSpec.model_fields]
            if bad:
                raise DataError(f"{p}: unknown key {bad[0]!r} in {key!r} (allowed: "
                                f"{', '.join(SplitSpec.model_fields)}; or give {key!r} as an image folder)")
            if "images" not in value:
                raise DataError(f"{p}: {key!r} needs 'images' (the image folder, relative to 'path')")


def _user_loc(loc: tuple) -> str:
    """pydantic's error location without the union member names it inserts (str, SplitSpec, list[str], ...)."""
    keep = [str(x) for x in loc if not (isinstance(x, str) and (x in ("str", "SplitSpec", "int") or "[" in x))]
    return ".".join(keep)


def build_dataset(spec: DatasetSpec, split: str, class_names: list[str] | None = None) -> DetectionDataset:
    entry = getattr(spec, split, None)
    if entry is None:
        raise DataError(f"{spec.source}: no '{split}' split")
    root = Path(spec.path)
    names = class_names or spec.class_names()
    if isinstance(entry, str):
        entry = SplitSpec(images=entry)
    images = root / entry.images
    if entry.annotations:
        return CocoDetection(images, root / entry.annotations, names)
    if names is None:
        raise DataError(f"{spec.source}: 'names' is required for YOLO txt labels")
    labels = root / entry.labels if entry.labels else _sibling_labels(images)
    return YoloDetection(images, labels, names)


def _sibling_labels(images: Path) -> Path:
    parts = list(images.parts)
    if "images" not in parts:
        raise DataError(f"cannot find labels for {images}: give 'labels:' for this split")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts)
