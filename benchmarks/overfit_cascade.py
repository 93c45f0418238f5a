"""Overfit check for Cascade R-CNN MobileNetV3-Large FPN 320: train from random init on a few real coco128
photos with no augmentation, then evaluate on the same photos:

- COCO AP / AP50 (faster-coco-eval) of the final detections (must reach AP50 >= 0.8);
- per-stage localisation: for every RPN proposal with IoU >= 0.5 to a GT box, the IoU of each cascade
  stage's decoded box with that GT box, averaged. A working cascade keeps or improves it stage by stage.

A model that fits a handful of images and finds them again through `postprocess` shows that anchors, the
RPN/RoI target assignment, the three box coders and the inference decode agree with each other.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overfit_cascade.py --images 6 --iters 80

writes the result to docs/overfit.md (section between `<!-- cascade:start -->` / `<!-- cascade:end -->`).
`tests/test_cascade_rcnn.py` runs a shorter version (fewer images and iterations) through `run_overfit`.

Training setup (not the Paddle recipe, which starts from ImageNet weights with SGD at batch 16): AdamW at
LR 1e-3 with min(20, iters/4) warmup iterations and cosine decay, gradient norm clipped at 10, all images
in one batch, the zoo model's own eval resize (long side 320), 128 sampled RoIs per image instead of 512
(RoIAlign's CPU backward dominates the step time). The frozen backbone BN gets data-calibrated statistics first
(`CascadeRCNN.calibrate_frozen_norm`): with identity statistics a randomly initialised MobileNetV3's
activations vanish.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py, also when tests load this file by path
from harness import ROOT, command_line, machine_line, parser, replace_section  # noqa: E402

COCO128 = ROOT / "data" / "coco128"


def load_subset(num_images: int, min_box_side: float = 32.0, max_boxes: int = 8):
    """The first `num_images` coco128 train images (by id) with 1..max_boxes non-crowd boxes whose shorter
    side is >= min_box_side px (>= 16 px after the 320 resize). Returns (dataset, images float 0..1,
    targets, image ids)."""
    from pocketdet.data import CocoDetection

    ds = CocoDetection(COCO128 / "images" / "train2017", COCO128 / "annotations" / "instances_train2017.json")
    chosen = [i for i, r in enumerate(ds.records)
              if 1 <= len(r.boxes) <= max_boxes and (r.boxes[:, 2:] - r.boxes[:, :2]).min() >= min_box_side]
    chosen = chosen[:num_images]
    images, targets, ids = [], [], []
    for i in chosen:
        img, t = ds[i]
        images.append(img.as_subclass(torch.Tensor).float() / 255.0)
        targets.append({"boxes": t["boxes"].as_subclass(torch.Tensor).float(), "labels": t["labels"]})
        ids.append(int(t["image_id"]))
    return ds, images, targets, ids


@torch.no_grad()
def stage_ious(model, images, targets, match_iou: float = 0.5) -> list[float]:
    """Mean IoU with the matched GT of [RPN proposals, stage-1 boxes, stage-2 boxes, stage-3 boxes], over
    the proposals that overlap a GT box by >= match_iou (the matched GT is the one it overlaps most)."""
    from torchvision.ops import box_iou

    from pocketdet.models.pixel_boxes import to_continuous

    was = model.training
    model.eval()
    x, sizes = model.prepare(images)
    outs = model.cascade_outputs(model.forward_raw(x), sizes)
    model.train(was)
    per_stage: list[list[torch.Tensor]] = [[] for _ in range(1 + model.roi_heads.num_stages)]
    for o, t, (h, w) in zip(outs, targets, sizes):
        s = model.test_scale(h, w)
        gt = t["boxes"] * s
        # the model's internal boxes are inclusive (static +1 convention): compare their continuous form
        props = to_continuous(o["stage_rois"][0])
        best, gi = box_iou(props, gt).max(1)
        sel = best >= match_iou
        matched = gt[gi[sel]]
        for k, boxes in enumerate([props] + [to_continuous(b) for b in o["stage_boxes"]]):
            b = boxes[sel]
            per_stage[k].append(box_iou(b, matched).diagonal() if len(b) else b.new_zeros(0))
    return [float(torch.cat(v).mean()) if sum(len(a) for a in v) else float("nan") for v in per_stage]


def run_overfit(num_images: int = 6, iters: int = 80, lr: float = 1e-3, seed: int = 0,
                roi_batch_size_per_image: int = 128, max_boxes: int = 8, log_every: int = 0) -> dict:
    from pocketdet.config import load_config
    from pocketdet.engine.evaluate import coco_eval, to_coco_results
    from pocketdet.models import build_model

    torch.manual_seed(seed)
    ds, images, targets, ids = load_subset(num_images, max_boxes=max_boxes)
    cfg = load_config("cascade_rcnn_mnv3_large_fpn_320")
    model = build_model({**cfg.model, "roi_batch_size_per_image": roi_batch_size_per_image}, num_classes=80)
    model.calibrate_frozen_norm(images)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = min(20, max(1, iters // 4))
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    first = last = None
    for it in range(iters):
        factor = min(1.0, (it + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * it / iters))
        for g in opt.param_groups:
            g["lr"] = lr * factor
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        first = float(loss.detach()) if first is None else first
        last = float(loss.detach())
        if log_every and (it % log_every == 0 or it == iters - 1):
            print(f"iter {it:4d} {time.perf_counter() - t0:6.1f}s loss {last:8.3f} "
                  + " ".join(f"{k}={float(v.detach()):.3f}" for k, v in losses.items()), flush=True)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    with torch.no_grad():
        outs = model(images)
    stats = coco_eval(ds.coco_gt(), to_coco_results(outs, ids, ds.label_to_category_id), ids)
    return {"images": num_images, "boxes": sum(len(t["boxes"]) for t in targets), "iters": iters, "lr": lr,
            "roi_batch_size_per_image": roi_batch_size_per_image, "first_loss": first, "last_loss": last,
            "ap": stats["AP"], "ap50": stats["AP50"], "stage_ious": stage_ious(model, images, targets),
            "train_s": train_s, "train_cpu_s": train_cpu_s, "threads": torch.get_num_threads(), "image_ids": ids}


def write_doc(res: dict, path: Path = ROOT / "docs" / "overfit.md") -> None:
    rpn, s1, s2, s3 = res["stage_ious"]
    command = command_line(__file__, ["--images", str(res["images"]), "--iters", str(res["iters"])],
                           prefix=f"OMP_NUM_THREADS={res['threads']} python")
    body = "\n".join([
        "## Cascade R-CNN MobileNetV3-Large FPN 320: overfit check",
        "",
        f"Random init (frozen BN statistics calibrated on the images), {res['images']} coco128 train images "
        f"(ids {res['image_ids']}, {res['boxes']} boxes), no augmentation, long side 320, AdamW (max LR "
        f"{res['lr']}, warmup + cosine), {res['iters']} iterations at batch {res['images']}, "
        f"{res['roi_batch_size_per_image']} RoIs/image, {res['threads']} CPU thread(s); evaluated on the same "
        "images with faster-coco-eval.",
        "",
        "| total loss first / last | AP | AP50 | AP50 required | train wall time | train process CPU time |",
        "|---|---|---|---|---|---|",
        f"| {res['first_loss']:.2f} / {res['last_loss']:.3f} | {res['ap']:.3f} | {res['ap50']:.3f} | >= 0.8 "
        f"| {res['train_s']:.0f} s | {res['train_cpu_s']:.0f} s |",
        "",
        "Localisation per cascade stage: mean IoU with the matched GT box of the RPN proposals that overlap "
        "a GT box by >= 0.5, and of the boxes each stage decodes from them.",
        "",
        "| RPN proposals | stage 1 | stage 2 | stage 3 |",
        "|---|---|---|---|",
        f"| {rpn:.3f} | {s1:.3f} | {s2:.3f} | {s3:.3f} |",
        "",
        f"Measured {machine_line()} The machine was shared with other processes "
        "(under load the wall time exceeds the process CPU time, which is what the run needs). "
        f"Command: `{command}`.",
    ])
    replace_section(path, "cascade", body, title="# Overfit checks")


def main() -> None:
    ap = parser(__doc__, md=False)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--iters", type=int, default=80)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--no-write", action="store_true", help="print only, do not update docs/overfit.md")
    args = ap.parse_args()
    res = run_overfit(args.images, args.iters, args.lr, log_every=10)
    print(json.dumps(res, indent=1))
    if not args.no_write:
        write_doc(res)


if __name__ == "__main__":
    main()
