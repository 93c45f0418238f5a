"""CPU training speed: images/s of one training step (forward + loss + backward + SGD step) at batch 8,
320x320, for YOLOv3-MobileNetV3-Large and SSDLite-MobileNetV3-Large/Small, at 1 and 2 threads.

    .venv/bin/python benchmarks/train_speed.py            # writes BENCHMARKS.md "Training speed (CPU)"
    .venv/bin/python benchmarks/train_speed.py --no-write --iters 3

Random images with three fixed boxes each, so every step does the same work. Reports the median step.
Only the section between `<!-- train_speed:start -->` and `<!-- train_speed:end -->` of BENCHMARKS.md
is replaced.
"""
from __future__ import annotations

import statistics
import time

import torch

from harness import command_line, machine_line, parser, replace_section

MODELS = ("yolov3_mnv3_large_320", "ssdlite_mnv3_large_320", "ssdlite_mnv3_small_320")


def synthetic_batch(batch: int, size: int, num_classes: int):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)
    boxes = torch.tensor([[0.10, 0.10, 0.45, 0.60], [0.50, 0.20, 0.95, 0.90], [0.30, 0.55, 0.42, 0.70]]) * size
    targets = [{"boxes": boxes.clone(), "labels": torch.randint(num_classes, (3,), generator=g)} for _ in range(batch)]
    return images, targets


def step_times(name: str, threads: int, batch: int, size: int, iters: int, warmup: int) -> list[float]:
    from pocketdet.config import load_config
    from pocketdet.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(load_config(name).model).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    images, targets = synthetic_batch(batch, size, model.num_classes)
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def render(rows: list[dict], batch: int, size: int, iters: int, machine: str, command: str) -> str:
    lines = ["## Training speed (CPU)", "",
             f"One training step (forward, loss, backward, SGD step) at batch {batch}, {size}x{size}, random images "
             f"with 3 boxes each; median of {iters} steps after warm-up; torch {torch.__version__}. "
             f"Measured {machine} The load average says whether other "
             "processes shared the machine: a busy machine gives pessimistic, noisy numbers, and there a second "
             "torch thread makes a step slower, not faster. Compare rows of one run.",
             "", "| model | threads | step (s) | images/s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['threads']} | {r['step_s']:.2f} | {r['images_per_s']:.2f} |")
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    machine = machine_line()
    rows = []
    for name in args.models:
        for th in args.threads:
            times = step_times(name, th, args.batch, args.size, args.iters, args.warmup)
            med = statistics.median(times)
            rows.append({"model": name, "threads": th, "step_s": med, "images_per_s": args.batch / med})
            print(f"{name:28s} threads={th} step {med:.2f} s  {args.batch / med:.2f} img/s", flush=True)
    text = render(rows, args.batch, args.size, args.iters, machine, command_line(__file__))
    print(text)
    if not args.no_write:
        replace_section(args.md, "train_speed", text)


if __name__ == "__main__":
    main()
