"""Prune + distil report for YOLOv3-MobileNetV3 (spec §5): params, FLOPs, 1-thread torch latency and AP50 on
the demo data (data/demo.yaml: train coco128, eval coco_mini), for

  1. the baseline (briefly trained from random init: no trained weights ship with pocketdet),
  2. the same weights after FPGM pruning with the seed recipe ("75875", 18 head convs),
  3. the pruned model after plain fine-tuning,
  4. the pruned model after distillation for the same iterations.

Deviation: the seed's teacher is a trained YOLOv3-ResNet34; training one is out of reach here, so the teacher is
the unpruned baseline of row 1 (self-distillation from the model before pruning). `--teacher CKPT` uses a real one.
The default schedule is tiny (minutes on one CPU core), so AP50 only shows whether anything was learned;
run with larger --base-iters / --iters for meaningful accuracy. Only the `<!-- prune:start -->` ...
`<!-- prune:end -->` section of BENCHMARKS.md is replaced.

    OMP_NUM_THREADS=1 python benchmarks/prune_distill.py --base-iters 30 --iters 20
"""
from __future__ import annotations

import copy
import json
import time

import torch

from harness import ROOT, command_line, machine_line, medians_ms, parser, replace_section, today

import pocketdet  # noqa: E402
from pocketdet.api import count_flops, count_params  # noqa: E402
from pocketdet.compress.distill import distill_train  # noqa: E402
from pocketdet.compress.prune import prune  # noqa: E402
from pocketdet.config import apply_overrides, load_config  # noqa: E402
from pocketdet.data import build_dataset, load_dataset_yaml  # noqa: E402
from pocketdet.engine.evaluate import evaluate  # noqa: E402

SEED_MS = {"baseline": 155.948, "pruned": 48.2856}  # SD855, 1 thread (mobile README)


def latency_ms(model, size: int, runs: int, warmup: int = 3) -> float:
    torch.set_num_threads(1)
    model.eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        return medians_ms({"forward": lambda: model.forward_raw(x)}, runs, warmup)["forward"]


def row(name, model, val_ds, runs, eval_images):
    stats = (evaluate(model, val_ds, batch_size=4, progress=False) if eval_images
             else {"AP50": float("nan"), "AP": float("nan")})
    return {"model": name, "params": count_params(model), "flops": count_flops(model),
            "latency_ms": latency_ms(model, model.input_size, runs), "AP50": stats["AP50"], "AP": stats["AP"]}


def to_markdown(rows, args, seconds) -> str:
    base = rows[0]
    lines = ["## Pruning + distillation: YOLOv3-MobileNetV3 (spec §5)", "",
             f"`{command_line(__file__, prefix='OMP_NUM_THREADS=1 python')}` "
             f"({seconds / 60:.1f} min, CPU, torch eager, batch 1 at 320, 1 thread; median of {args.runs} runs). "
             f"Baseline trained {args.base_iters} iterations from random init (batch {args.batch}); fine-tuning "
             f"and distillation {args.iters} iterations each, same loop, LR and batches. Teacher: "
             f"{args.teacher or 'the unpruned baseline (self-distillation; the seed uses a trained YOLOv3-ResNet34)'}. "
             f"AP on data/demo.yaml val (coco_mini, 79 images). {machine_line()} On a shared machine rows of "
             "the same architecture differ by noise only.", "",
             "| model | params (M) | GFLOPs | latency (ms) | vs baseline | AP50 | AP |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.2f} | {r['latency_ms']:.1f} | "
                     f"{r['latency_ms'] / base['latency_ms']:.3f} | {r['AP50'] * 100:.1f} | {r['AP'] * 100:.1f} |")
    p = rows[1]
    fr = p["flops"] / base["flops"]
    lines += ["", f"Pruned / baseline: params {p['params'] / base['params']:.3f}, "
              f"FLOPs {fr:.3f} ({1 - fr:.0%} of the FLOPs removed: the "
              f"seed's \"prune86\" matches FLOPs), latency {p['latency_ms'] / base['latency_ms']:.3f} here vs "
              f"{SEED_MS['pruned']:.1f} / {SEED_MS['baseline']:.1f} ms = {SEED_MS['pruned'] / SEED_MS['baseline']:.3f} "
              "for the seed on SD855 (1 thread, Paddle Lite).", "",
              "With this tiny schedule the AP columns only show the pipeline runs end to end; they say nothing about "
              "the seed's 27.1 -> 24.6 AP."]
    return "\n".join(lines)


def fit_recovery(args):
    """Does distillation recover a pruned model faster than fine-tuning? Measured where AP is not ~0 on a CPU:

    1. the unpruned YOLOv3-MobileNetV3 is fitted to N coco128 photos (benchmarks/overfit_yolov3.py's recipe:
       Adam one-cycle, no augmentation, full batch) until its AP50 on them is high: it is the teacher;
    2. a copy is FPGM-pruned with the seed recipe (AP50 collapses);
    3. two copies of the pruned model train for the same iterations, batches and optimizer (Adam, constant LR):
       plain fine-tuning (YOLOv3 loss) vs distillation (YOLOv3 loss + split-distill loss x1000 from the teacher);
       AP50 on the N photos is recorded along the way.
    Every evaluation first recomputes BN statistics on the training batch (the overfit check's precise BN), for
    every row alike. Deviation from the seed: the teacher is the unpruned MobileNetV3 model, not a ResNet-34."""
    from overfit_yolov3 import coco_ap50, load_coco_subset, recalibrate_bn

    from pocketdet.compress.distill import distill_step_losses

    t0 = time.perf_counter()
    log = lambda *a: print(f"[{time.perf_counter() - t0:6.0f}s]", *a, flush=True)  # noqa: E731
    torch.manual_seed(0)
    images, targets, gt, cat_ids = load_coco_subset(args.fit_images, skip=args.fit_skip)
    size = 320
    x = torch.stack([torch.nn.functional.interpolate(im[None].float() / 255, size=(size, size), mode="bilinear",
                                                     align_corners=False, antialias=True)[0] for im in images])
    train_t = [{"boxes": t["boxes"] * torch.tensor([size / im.shape[-1], size / im.shape[-2]] * 2),
                "labels": t["labels"]} for im, t in zip(images, targets)]

    def ap50(model) -> float:
        recalibrate_bn(model, x)
        model.eval()
        with torch.no_grad():
            outs = model([im.float() / 255 for im in images])
        dets = [{"image_id": t["image_id"], "category_id": cat_ids[lab], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                 "score": s} for t, o in zip(targets, outs)
                for b, s, lab in zip(o["boxes"].tolist(), o["scores"].tolist(), o["labels"].tolist())]
        model.train()
        return coco_ap50(gt, dets) if dets else 0.0

    base = pocketdet.build("yolov3_mnv3_large_320")
    with torch.no_grad():  # the overfit check's aid: objectness starts at p = 0.01
        for conv, mask in zip(base.yolo_head.yolo_output, base.anchor_masks):
            conv.bias.view(len(mask), -1)[:, 4] = -4.6
    opt = torch.optim.Adam(base.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.base_iters, pct_start=0.1)
    base.train()
    log(f"fit the teacher: {args.base_iters} iterations on {len(images)} photos")
    for _ in range(args.base_iters):
        loss = sum(base(x, train_t).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    rows = [{"model": "unpruned (teacher)", "curve": {0: ap50(base)}}]
    base.eval()
    log(rows[-1])
    pruned = copy.deepcopy(base)
    rep = prune(pruned)
    rows.append({"model": "FPGM-pruned, no training", "curve": {0: ap50(pruned)}})
    log(rows[-1], rep.block_widths)
    eval_at = sorted(set(args.eval_at if args.eval_at is not None else [args.iters // 4, args.iters // 2])
                     | {args.iters})
    for label, teacher in (("pruned + fine-tuned", None), ("pruned + distilled", base)):
        student = copy.deepcopy(pruned).train()
        opt = torch.optim.Adam(student.parameters(), lr=args.lr)
        curve = {}
        for it in range(1, args.iters + 1):
            loss = sum(distill_step_losses(student, teacher, x, train_t).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if it in eval_at:
                curve[it] = ap50(student)
                log(label, it, curve[it])
        rows.append({"model": label, "curve": curve})
    body = fit_markdown(rows, args, rep, time.perf_counter() - t0, count_params(base), count_params(pruned))
    replace_section(args.md, f"prune-fit-{args.fit_skip}" if args.fit_skip else "prune-fit", body)
    print(body)


def fit_markdown(rows, args, rep, seconds, base_params, pruned_params) -> str:
    its = sorted({k for r in rows[2:] for k in r["curve"]})
    photo_set = f", photos {args.fit_skip + 1}-{args.fit_skip + args.fit_images}" if args.fit_skip else ""
    lines = [f"## Pruning + distillation: recovery on fitted photos{photo_set} (`benchmarks/prune_distill.py "
             "--fit-images`)", "",
             f"`{command_line(__file__, prefix='OMP_NUM_THREADS=1 python')}` "
             f"({seconds / 60:.1f} min on CPU, {today()}). Teacher: YOLOv3-MobileNetV3-Large 320 fitted "
             f"{args.base_iters} iterations (Adam one-cycle 2e-3, full batch, no augmentation) to "
             f"{args.fit_images} annotated coco128 train photos (after skipping {args.fit_skip}); student: the same weights FPGM-pruned with the seed "
             f"recipe (widths {rep.block_widths}; params {pruned_params / 1e6:.2f} M of {base_params / 1e6:.2f} M); "
             f"then the same iterations, batch and optimizer (Adam {args.lr}) with the YOLOv3 loss alone or plus the "
             "split-distill loss (x1000) from the teacher. AP50 (COCO, faster-coco-eval) on those photos, BN "
             "statistics recomputed on them before every evaluation. The seed's teacher is a YOLOv3-ResNet34 "
             "trained on COCO; no such model exists offline, so the unpruned model is the teacher here.", "",
             "| model | " + " | ".join(f"AP50 after {i} it" for i in its) + " |",
             "|---|" + "---|" * len(its)]
    for r in rows[:2]:
        lines.append(f"| {r['model']} | {r['curve'][0] * 100:.1f} (before training) |" + " |" * (len(its) - 1))
    for r in rows[2:]:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r['curve'][i] * 100:.1f}" for i in its) + " |")
    ft, kd = rows[2]["curve"], rows[3]["curve"]
    lines += ["", "Distillation minus fine-tuning, AP50 points: "
              + ", ".join(f"{(kd[i] - ft[i]) * 100:+.1f} after {i} it" for i in its) + "."]
    return "\n".join(lines)


def main():
    ap = parser(__doc__, full_doc=True)
    ap.add_argument("--base-iters", type=int, default=30)
    ap.add_argument("--iters", type=int, default=20, help="fine-tuning and distillation iterations")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--runs", type=int, default=10, help="timed forward passes per latency")
    ap.add_argument("--teacher", default=None, help="teacher checkpoint (default: the unpruned baseline)")
    ap.add_argument("--data", default=str(ROOT / "data/demo.yaml"))
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--fit-images", type=int, default=0,
                    help="recovery experiment on N fitted photos instead (see fit_recovery); 0: the demo-data run")
    ap.add_argument("--fit-skip", type=int, default=0, help="with --fit-images: skip this many photos first "
                    "(another photo set; its table goes to section prune-fit-SKIP)")
    ap.add_argument("--eval-at", type=int, nargs="*", default=None,
                    help="with --fit-images: also evaluate after these iterations (default: iters/4, iters/2)")
    args = ap.parse_args()
    if args.fit_images:
        return fit_recovery(args)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    # fixed-size plain augmentation: the recipe's multi-scale 320..608 batches would cost minutes per step here
    cfg = apply_overrides(load_config("yolov3_mnv3_large_320"), ["train.augment=none"])
    spec = load_dataset_yaml(args.data)
    base = pocketdet.build("yolov3_mnv3_large_320")
    train_ds = build_dataset(spec, "train", base.class_names)
    val_ds = build_dataset(spec, "val", base.class_names)
    log = lambda *a: print(f"[{time.perf_counter() - t0:6.0f}s]", *a, flush=True)  # noqa: E731
    log("train baseline", args.base_iters)
    distill_train(base, None, train_ds, args.base_iters, cfg, args.batch, args.lr, log_every=0)
    rows = [row("baseline (yolov3_mnv3_large_320)", base, val_ds, args.runs, not args.no_eval)]
    log(rows[-1])
    pruned = copy.deepcopy(base)
    rep = prune(pruned)
    pruned.zoo_config = apply_overrides(cfg, [f"model.block_widths={json.dumps(pruned.block_widths)}"])
    rows.append(row("FPGM-pruned 75875, no fine-tuning", pruned, val_ds, args.runs, not args.no_eval))
    log(rows[-1], rep.block_widths)
    teacher = pocketdet.load(args.teacher) if args.teacher else base
    for label, t in (("pruned + fine-tuned", None), ("pruned + distilled", teacher)):
        student = copy.deepcopy(pruned)
        log("train", label)
        distill_train(student, t, train_ds, args.iters, pruned.zoo_config, args.batch, args.lr, log_every=0)
        rows.append(row(label, student, val_ds, args.runs, not args.no_eval))
        log(rows[-1])
    text = to_markdown(rows, args, time.perf_counter() - t0)
    replace_section(args.md, "prune", text)
    print(text)


if __name__ == "__main__":
    main()
