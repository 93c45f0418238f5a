"""Overfit check for YOLOv3-MobileNetV3-Large 320: train from random init on a few real coco128 images with
no augmentation, then evaluate COCO AP50 (faster-coco-eval) on those same images.

It shows that the loss, the target assignment and the decode agree with each other: a model that can fit
a handful of images and then find them again through `postprocess` has consistent train/eval geometry.

    .venv/bin/python benchmarks/overfit_yolov3.py --images 4 --iters 80 --threads 2

writes the result to docs/overfit.md (section between `<!-- overfit_yolov3:start/end -->`).
`tests/test_yolov3.py` runs a shorter version (2 images) through `run_overfit`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py, also when tests load this file by path
from harness import ROOT, command_line, machine_info, machine_line, parser, replace_section  # noqa: E402

COCO128 = ROOT / "data" / "coco128"


def load_coco_subset(num_images: int, root: Path = COCO128, skip: int = 0):
    """The first `num_images` train2017 images (JSON order) that have non-crowd boxes.
    Returns (images uint8 [3,H,W] list, targets with xyxy pixel boxes / 0-based labels, gt dict, cat ids)."""
    ann_file = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    cat_ids = sorted(c["id"] for c in data["categories"])
    cat_to_label = {c: i for i, c in enumerate(cat_ids)}
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        if not a.get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(a)
    chosen = [im for im in data["images"] if by_image.get(im["id"])][skip:skip + num_images]
    images, targets = [], []
    for im in chosen:
        with Image.open(root / "images" / "train2017" / im["file_name"]) as f:
            arr = np.asarray(f.convert("RGB"))
        images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        anns = by_image[im["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        targets.append({"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                        "labels": torch.tensor([cat_to_label[a["category_id"]] for a in anns]),
                        "image_id": im["id"]})
    ids = {im["id"] for im in chosen}
    gt = {"images": chosen, "categories": data["categories"],
          "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    return images, targets, gt, cat_ids


def coco_ap50(gt: dict, detections: list[dict]) -> float:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt)
    if not detections:
        return 0.0
    coco_dt = coco_gt.loadRes(detections)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[1])


@torch.no_grad()
def recalibrate_bn(model, x: torch.Tensor) -> None:
    """Set every BN's running statistics to the exact statistics of the training batch ("precise BN").
    From random init the early activations are huge, and after ~100 steps their trace in the exponential
    running averages (momentum 0.1) still dominates, so eval-mode BN would not match what was trained."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass = this batch's statistics
    model.train()
    model.forward_raw(model.normalize(x))
    for m, mom in zip(bns, saved):
        m.momentum = mom


def run_overfit(num_images: int = 4, iters: int = 80, lr: float = 2e-3, size: int = 320, seed: int = 0,
                log_every: int = 0) -> dict:
    from pocketdet.models.yolov3 import YOLOv3

    torch.manual_seed(seed)
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    images, targets, gt, cat_ids = load_coco_subset(num_images)
    model = YOLOv3("mobilenet_v3_large", num_classes=80, input_size=size)
    # Training aid for a 150-step run, not part of the Paddle recipe: start objectness at p = 0.01 so the
    # thousands of negatives do not dominate the first steps (the model itself keeps Paddle's zero bias).
    with torch.no_grad():
        for conv, mask in zip(model.yolo_head.yolo_output, model.anchor_masks):
            conv.bias.view(len(mask), -1)[:, 4] = -4.6
    # no augmentation: every image stretched to size x size once (as the model's own eval resize does)
    x = torch.stack([F.interpolate(im[None].float() / 255, size=(size, size), mode="bilinear",
                                   align_corners=False, antialias=True)[0] for im in images])
    train_t = []
    for im, t in zip(images, targets):
        h, w = im.shape[-2:]
        train_t.append({"boxes": t["boxes"] * torch.tensor([size / w, size / h] * 2), "labels": t["labels"]})
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters, pct_start=0.1)
    model.train()
    t0 = time.perf_counter()
    first = last = None
    for it in range(iters):
        losses = model(x, train_t)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        first = first if first is not None else loss.item()
        last = loss.item()
        if log_every and (it % log_every == 0 or it == iters - 1):
            print(f"iter {it:4d} loss {last:9.3f} " + " ".join(f"{k}={v.item():.3f}" for k, v in losses.items()),
                  flush=True)
    train_s = time.perf_counter() - t0
    recalibrate_bn(model, x)
    model.eval()
    dets = []
    with torch.no_grad():
        outs = model([im.float() / 255 for im in images])
    for t, o in zip(targets, outs):
        for b, s, lab in zip(o["boxes"].tolist(), o["scores"].tolist(), o["labels"].tolist()):
            dets.append({"image_id": t["image_id"], "category_id": cat_ids[lab],
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    ap50 = coco_ap50(gt, dets)
    return {"images": num_images, "boxes": sum(len(t["boxes"]) for t in targets), "iters": iters, "lr": lr,
            "first_loss": first, "last_loss": last, "ap50": ap50, "train_s": train_s,
            "threads": torch.get_num_threads(), "image_ids": [t["image_id"] for t in targets],
            "load_avg": load_at_start}


def write_doc(res: dict, path: Path = ROOT / "docs" / "overfit.md") -> None:
    command = command_line(__file__, ["--images", str(res["images"]), "--iters", str(res["iters"]),
                                      "--threads", str(res["threads"])])
    body = "\n".join([
        "## YOLOv3-MobileNetV3-Large 320: overfit check",
        "",
        f"Random init, {res['images']} coco128 train images (ids {res['image_ids']}, {res['boxes']} boxes), "
        f"no augmentation, Adam (one-cycle, max LR {res['lr']}), {res['iters']} iterations at batch "
        f"{res['images']}, 320x320, torch threads: {res['threads']}; evaluated on the same images with "
        "faster-coco-eval. Two aids of the check, not of the recipe: objectness biases start at -4.6 "
        "(p = 0.01), and BN statistics are recomputed on the training batch before evaluation (from random "
        "init, 80 steps of momentum-0.1 running averages still carry the huge first activations).",
        "",
        "| total loss first / last | AP50 | AP50 required | train time |",
        "|---|---|---|---|",
        f"| {res['first_loss']:.1f} / {res['last_loss']:.2f} | {res['ap50']:.3f} | >= 0.8 | {res['train_s']:.0f} s |",
        "",
        f"Measured {machine_line({**machine_info(), 'load_avg': res['load_avg']})} The machine was "
        "shared with other processes, so the train time "
        "is an upper bound: the run is ~10 TFLOP (80 steps x 4 images x ~32 GFLOP forward+backward at 320). "
        f"Command: `{command}`.",
    ])
    replace_section(path, "overfit_yolov3", body, title="# Overfit checks")


def main() -> None:
    ap = parser(__doc__, md=False)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--iters", type=int, default=80)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update docs/overfit.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = run_overfit(args.images, args.iters, args.lr, log_every=10)
    print(json.dumps(res, indent=1))
    if not args.no_write:
        write_doc(res)


if __name__ == "__main__":
    main()
