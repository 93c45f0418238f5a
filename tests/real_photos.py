"""Small sets of real coco128 photos for the overfit tests of every family (a helper module, like loopback.py)."""
from __future__ import annotations

from pocketdet.data import CocoDetection


def few_real_photos(data_dir, n=4) -> CocoDetection:
    """The first `n` coco128 training photos with 1-4 boxes, none smaller than 32x32 px: learnable in a few dozen
    full-batch steps, so a model that cannot reach AP50 0.8 on them has a bug, not too little training."""
    ds = CocoDetection(data_dir / "coco128/images/train2017", data_dir / "coco128/annotations/instances_train2017.json")
    area = lambda r: ((r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])).min()  # noqa: E731
    ds.records = [r for r in ds.records if 1 <= len(r.boxes) <= 4 and area(r) > 32 * 32][:n]
    return ds
