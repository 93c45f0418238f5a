"""CPU inference and training speed of Cascade R-CNN MobileNetV3-Large FPN 320 and 640 (eager PyTorch).

    .venv/bin/python benchmarks/cascade_speed.py            # writes the cascade section of BENCHMARKS.md

Inference: batch 1, real coco128 photos (640 px long side, resized inside the model to a long side of 320 /
640), median over the photos x repeats, at 1 and 2 intra-op threads; "dense" is `forward_raw` alone
(backbone + FPN + RPN head: what an exporter traces), "full" is `model(images)`: resize, dense part,
proposal selection, the three RoI stages and NMS. Training: seconds per iteration at the recipe's batch of
2 images per process with the multi-scale collate (spec §6.1 short sides), forward + backward + SGD step.
Besides wall time it records the process CPU time, which on a shared machine is the steadier number for
1-thread runs.

Weights are random (backbone BN statistics calibrated on the photos, so activations are realistic); with
random heads no class passes the 0.05 score threshold, so the NMS cost of a trained model (up to 100
detections) is not included. Parameters and FLOPs do not depend on the weights.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from harness import ROOT, command_line, machine_line, parser, replace_section

SIZES = {320: "cascade_rcnn_mnv3_large_fpn_320", 640: "cascade_rcnn_mnv3_large_fpn_640"}


def load_photos(n: int):
    from pocketdet.data import CocoDetection

    ds = CocoDetection(ROOT / "data/coco128/images/train2017",
                       ROOT / "data/coco128/annotations/instances_train2017.json")
    return [ds[i] for i in range(n)]


def build(size: int):
    from pocketdet.config import load_config
    from pocketdet.models import build_model

    cfg = load_config(SIZES[size])
    return cfg, build_model(cfg.model, num_classes=80)


def median_ms(fn, inputs, repeats: int) -> tuple[float, float]:
    """(median wall ms, median process-CPU ms) per call. On a shared machine the CPU time of a 1-thread
    run approximates its wall time on an idle core."""
    fn(inputs[0])  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        for x in inputs:
            c0, t0 = time.process_time(), time.perf_counter()
            fn(x)
            wall.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


@torch.no_grad()
def bench_inference(size: int, photos, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    _, model = build(size)
    images = [im.as_subclass(torch.Tensor).float() / 255 for im, _ in photos]
    model.calibrate_frozen_norm(images)
    model.eval()
    prepped = [model.prepare([im])[0] for im in images]
    dense, dense_cpu = median_ms(model.forward_raw, prepped, repeats)
    full, full_cpu = median_ms(lambda im: model([im]), images, repeats)
    return {"dense_ms": dense, "full_ms": full, "dense_cpu_ms": dense_cpu, "full_cpu_ms": full_cpu,
            "input": tuple(prepped[0].shape[-2:])}


def bench_training(size: int, photos, threads: int, iters: int, batch: int = 2) -> dict:
    from pocketdet.data.rcnn_aug import build_rcnn_transforms, train_hooks

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg, model = build(size)
    collate = train_hooks(cfg)["collate_fn"]
    tf = build_rcnn_transforms()
    model.calibrate_frozen_norm([im.as_subclass(torch.Tensor).float() / 255 for im, _ in photos])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    model.train()
    times, cpu = [], []
    for it in range(iters + 1):
        batch_samples = [tf(*photos[(it * batch + j) % len(photos)]) for j in range(batch)]
        x, targets = collate(batch_samples)
        c0, t0 = time.process_time(), time.perf_counter()
        losses = model(list(x), targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it > 0:  # the first iteration warms up allocators
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    s = statistics.median(times)
    return {"s_per_iter": s, "images_per_s": batch / s, "cpu_s_per_iter": statistics.median(cpu)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-iters", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="intra-op thread counts to measure (on a busy shared machine, 2 threads measure "
                         "OpenMP spin-waiting more than compute: use 1)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    photos = load_photos(args.photos)
    load_before = os.getloadavg()[0]
    rows_inf, rows_train = [], []
    for size in (320, 640):
        for threads in args.threads:
            r = bench_inference(size, photos, threads, args.repeats)
            rows_inf.append((size, threads, r))
            print(size, threads, r, flush=True)
        for threads in args.threads:
            r = bench_training(size, photos, threads, args.train_iters)
            rows_train.append((size, threads, r))
            print(size, threads, "train", r, flush=True)
    load_after = os.getloadavg()[0]
    lines = [
        "## Cascade R-CNN MobileNetV3-Large FPN: CPU speed (eager PyTorch)",
        "",
        "Inference, batch 1, median ms per image (coco128 photos of 640 px long side, resized inside the model):",
        "",
        "| model | network input | threads | dense part (backbone + FPN + RPN head) | full detector "
        "| dense / full, process CPU ms |",
        "|---|---|---|---|---|---|",
    ]
    for size, threads, r in rows_inf:
        h, w = r["input"]
        lines.append(f"| {SIZES[size]} | {h}x{w} (padded) | {threads} | {r['dense_ms']:.1f} | {r['full_ms']:.1f} "
                     f"| {r['dense_cpu_ms']:.0f} / {r['full_cpu_ms']:.0f} |")
    lines += [
        "",
        "Training, batch 2 per process (the recipe's per-GPU batch), multi-scale collate, "
        "forward + backward + SGD step, median of "
        f"{args.train_iters} iterations:",
        "",
        "| model | train short sides / max long side | threads | s / iteration | images / s "
        "| process CPU s / iteration |",
        "|---|---|---|---|---|---|",
    ]
    from pocketdet.config import load_config
    for size, threads, r in rows_train:
        extra = load_config(SIZES[size]).train.extra
        lines.append(f"| {SIZES[size]} | {extra['short_sizes'][0]}-{extra['short_sizes'][-1]} / {extra['max_size']} "
                     f"| {threads} | {r['s_per_iter']:.2f} | {r['images_per_s']:.2f} | {r['cpu_s_per_iter']:.2f} |")
    lines += [
        "",
        "Random weights (frozen BN statistics calibrated on the photos): with untrained heads no class passes "
        "the 0.05 score threshold, so a trained model's NMS over up to 100 detections is not included. "
        "Dense MACs at 320x320 / 640x640: 0.787 G / 3.146 G; the RoI heads add 0.164 G for 100 RoIs (5 head passes) "
        "(tests/test_cascade_rcnn.py). Paddle-Lite reference (SD855, 1 thread): 46.2 ms (320), 189.7 ms (640).",
        "",
        f"Measured {machine_line()} The machine was shared with other jobs (1-min load average {load_before:.1f} "
        f"before, {load_after:.1f} after), so treat the wall times as upper bounds"
        + ("" if len(args.threads) > 1 else
           "; only 1-thread rows: with both vCPUs busy, a 2-thread run measures OpenMP spin-waiting "
           "(seconds per image), not compute. Re-run with `--threads 1 2` on an idle machine")
        + f". Command: `{command_line(__file__)}`.",
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        replace_section(args.md, "cascade", block)


if __name__ == "__main__":
    main()
