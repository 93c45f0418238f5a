"""YOLO txt label folders: one `class cx cy w h` line (normalised 0..1) per box, one file per image."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DetectionDataset, ImageRecord, log, read_image_size
from .errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class YoloDetection(DetectionDataset):
    """An image without a label file is a background image (kept). Label files without an image are
    counted and logged. A malformed line or an unknown class id is an error naming file and line."""

    def __init__(self, img_dir: str | Path, label_dir: str | Path, class_names: list[str]):
        super().__init__()
        self.img_dir, self.label_dir = Path(img_dir), Path(label_dir)
        self.source = str(self.label_dir)
        self.class_names = list(class_names)
        if not self.img_dir.is_dir():
            raise DataError(f"image folder not found: {self.img_dir}")
        if not self.label_dir.is_dir():
            raise DataError(f"label folder not found: {self.label_dir}")
        images = sorted(p for p in self.img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        stems = {p.stem for p in images}
        orphans = [p for p in self.label_dir.glob("*.txt") if p.stem not in stems]
        if orphans:
            self.skipped["label files without an image ignored"] += len(orphans)
        for idx, path in enumerate(images):
            w, h = read_image_size(path)
            image_id = int(path.stem) if path.stem.isdigit() else idx
            rec = ImageRecord(path, image_id, w, h)
            label_file = self.label_dir / f"{path.stem}.txt"
            if label_file.exists():
                self._read_labels(label_file, rec)
            else:
                self.skipped["images without a label file kept as background"] += 1
            self.records.append(rec)
        ids = [r.image_id for r in self.records]
        if len(set(ids)) != len(ids):  # numeric stems may collide with indices: fall back to indices
            for i, r in enumerate(self.records):
                r.image_id = i
        self.check_not_empty()
        self.report_skips()

    def _read_labels(self, label_file: Path, rec: ImageRecord) -> None:
        boxes, labels = [], []
        for n, line in enumerate(label_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            where = f"{label_file}:{n}"
            try:
                cls, cx, cy, w, h = int(parts[0]), *map(float, parts[1:5])
                if len(parts) != 5:
                    raise ValueError
            except (ValueError, IndexError):
                raise DataError(f"{where}: expected 'class cx cy w h', got {line!r}") from None
            if not 0 <= cls < len(self.class_names):
                raise DataError(f"{where}: unknown class id {cls} (dataset has {len(self.class_names)} names)")
            x0, y0 = (cx - w / 2) * rec.width, (cy - h / 2) * rec.height
            box = self.sanitize_box([x0, y0, x0 + w * rec.width, y0 + h * rec.height], rec.width, rec.height, where)
            if box is not None:
                boxes.append(box)
                labels.append(cls)
        if boxes:
            rec.boxes = np.array(boxes, np.float32)
            rec.labels = np.array(labels, np.int64)
        log.debug("%s: %d boxes", label_file, len(boxes))
