"""COCO box AP with faster-coco-eval (pycocotools-compatible numbers, much faster)."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import time

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from tqdm import tqdm

from ..data.loader import eval_loader
from .device import loader_workers

logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # it prints the AP table at INFO

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def coco_eval(gt: dict, detections: list[dict], image_ids: list[int] | None = None) -> dict[str, float]:
    """Box AP of `detections` (COCO result dicts) against a COCO GT dict. Crowd GT boxes are 'ignore'
    regions, as in the official evaluation. Returns zeros when there are no detections at all."""
    gt = copy.deepcopy(gt)
    gt.setdefault("info", {})
    gt.setdefault("licenses", [])
    if not detections:
        return {k: 0.0 for k in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}


def to_coco_results(outputs: list[dict], image_ids: list[int], label_to_cat) -> list[dict]:
    """Per-image detections (torch tensors or numpy arrays; boxes xyxy pixels) -> COCO result dicts."""
    res = []
    for out, img_id in zip(outputs, image_ids):
        boxes = np.asarray(_numpy(out["boxes"]), dtype=np.float64).reshape(-1, 4)
        wh = boxes[:, 2:] - boxes[:, :2]
        for b, s, lab, (w, h) in zip(boxes.tolist(), _numpy(out["scores"]).tolist(), _numpy(out["labels"]).tolist(),
                                     wh.tolist()):
            res.append({"image_id": int(img_id), "category_id": int(label_to_cat(int(lab))),
                        "bbox": [b[0], b[1], w, h], "score": float(s)})
    return res


def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@torch.no_grad()
def evaluate(model, dataset, batch_size: int = 8, num_workers: int = 0, device="cpu",
             progress: bool = True) -> dict[str, float]:
    """Runs the model over `dataset` (original image sizes; the model resizes inside) and returns COCO stats
    plus `images_per_s`."""
    was_training = model.training
    model.eval()
    outputs, ids = [], []
    t0 = time.perf_counter()
    for images, targets in tqdm(eval_loader(dataset, batch_size, loader_workers(num_workers)), desc="eval", disable=not progress,
                                leave=False):
        outs = model([im.to(device) for im in images])
        outputs += [{k: v.cpu() for k, v in o.items()} for o in outs]
        ids += [t["image_id"] for t in targets]
    elapsed = time.perf_counter() - t0
    model.train(was_training)
    stats = coco_eval(dataset.coco_gt(), to_coco_results(outputs, ids, dataset.label_to_category_id), ids)
    stats["images_per_s"] = len(ids) / max(elapsed, 1e-9)
    return stats


def evaluate_predictor(predict, dataset, progress: bool = True) -> dict[str, float]:
    """COCO stats of a deployed model: `predict(image_path)` -> numpy `boxes` (xyxy pixels of the stored
    image), `scores`, `labels` (indices into `dataset.class_names`), called on each image *file*, so the
    runtime decodes, resizes and post-processes it exactly as a deployment does (`Detector.predict`,
    `NcnnDetector.predict`). Same COCO evaluation and stats as `evaluate`."""
    outputs, ids = [], []
    t0 = time.perf_counter()
    for rec in tqdm(dataset.records, desc="eval", disable=not progress, leave=False):
        outputs.append(predict(rec.path))
        ids.append(rec.image_id)
    elapsed = time.perf_counter() - t0
    stats = coco_eval(dataset.coco_gt(), to_coco_results(outputs, ids, dataset.label_to_category_id), ids)
    stats["images_per_s"] = len(ids) / max(elapsed, 1e-9)
    return stats
