"""Fine-tuning to a few classes from a COCO-format checkpoint, vs the same schedule from scratch and vs a head
re-initialised without name mapping (issue 14 §2). Writes the `<!-- finetune:start -->` section of BENCHMARKS.md.

    1. "COCO checkpoint trained here": SSDLite-MobileNetV3-Small trained from random init on the 80 COCO classes
       of coco128's val photos (YOLO labels; the 3 photos also in coco_mini are left out). No official weights
       can be downloaded here, so this stands in for `--weights coco`.
    2. Fine-tuning data: coco128's train photos restricted to CLASSES; held out: coco_mini's 79 val2017 photos
       with only CLASSES' boxes. The three sets of photos are disjoint.
    3. Three runs of the same schedule (pocketdet's trainer, same seed, optimizer, iterations) that differ only in
       the initialisation (`TrainOptions.init_fn`):
         from the COCO checkpoint, class rows mapped by name  (`pocketdet train --weights coco`)
         from the COCO checkpoint, class rows re-initialised  (`init_from_model(..., map_names=False)`)
         from scratch                                         (no --weights)
       and AP50 on the held-out photos and on the fine-tuning photos.

The schedule is tiny (the machine is a shared 2-core CPU): absolute AP is low and says nothing of the zoo's
accuracy; the comparison between rows is the result. Larger --pre-iters / --iters for meaningful numbers:

    OMP_NUM_THREADS=1 python benchmarks/finetune.py --pre-iters 150 --iters 50 --batch 4 --size 160
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from harness import ROOT, command_line, machine_line, parser, replace_section

import pocketdet  # noqa: E402
from pocketdet.config import apply_overrides, load_config  # noqa: E402
from pocketdet.data import load_dataset_yaml  # noqa: E402
from pocketdet.data.coco import CocoDetection  # noqa: E402
from pocketdet.data.yolo import YoloDetection  # noqa: E402
from pocketdet.engine.evaluate import evaluate  # noqa: E402
from pocketdet.init_weights import init_from_model  # noqa: E402
from pocketdet.engine.trainer import TrainOptions, train  # noqa: E402

MODEL = "ssdlite_mnv3_small_320"
CLASSES = ["person", "car", "chair", "bowl"]
DATA = ROOT / "data"


def subset_coco(src: Path, classes: list[str], out: Path, keep_empty: bool) -> Path:
    """A COCO JSON restricted to `classes` (photos without them kept only when `keep_empty`)."""
    d = json.loads(src.read_text())
    cats = [c for c in d["categories"] if c["name"] in classes]
    ids = {c["id"] for c in cats}
    anns = [a for a in d["annotations"] if a["category_id"] in ids]
    with_boxes = {a["image_id"] for a in anns}
    images = [im for im in d["images"] if keep_empty or im["id"] in with_boxes]
    out.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return out


def pretrain_dataset(work: Path) -> YoloDetection:
    """coco128 val (YOLO txt, 80 classes) without the photos that coco_mini's held-out set also holds."""
    held_out = {p.name for p in (DATA / "coco_mini/val2017").iterdir()}
    img_dir, lab_dir = work / "pre/images", work / "pre/labels"
    for d in (img_dir, lab_dir):
        d.mkdir(parents=True, exist_ok=True)
    for p in sorted((DATA / "coco128/images/val2017").glob("*.jpg")):
        if p.name in held_out:
            continue
        label = DATA / "coco128/object_detection/labels/val2017" / f"{p.stem}.txt"
        for src, dst in ((p, img_dir / p.name), (label, lab_dir / label.name)):
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    names = load_dataset_yaml(DATA / "coco128.yaml").class_names()
    return YoloDetection(img_dir, lab_dir, names)


def schedule(args, iters: int) -> list[str]:
    """The same recipe for every run: AdamW, constant LR after a short warmup, plain resize (no augmentation:
    it slows fitting at these budgets); --size below 320 scales the prior steps with the input (4x fewer FLOPs
    at 160 on a shared CPU)."""
    steps = [round(s * args.size / 320) for s in (16, 32, 64, 107, 160, 320)]
    size = [] if args.size == 320 else [f"model.input_size={args.size}", f"model.steps={steps}"]
    return size + ["train.augment=none", "train.optimizer.type=adamw", f"train.optimizer.lr={args.lr}",
            "train.optimizer.weight_decay=1e-4", "train.scale_lr=false", f"train.batch_size={args.batch}",
            "train.schedule.type=constant", f"train.schedule.max_iters={iters}", "train.schedule.warmup_iters=10",
            "train.num_workers=0", f"train.eval_interval={10**9}", f"train.checkpoint_interval={iters}",
            "train.log_interval=20"]


def run(cfg, ds, out: Path, init_fn=None):
    t = time.perf_counter()
    res = train(cfg, ds, TrainOptions(out_dir=out, init_fn=init_fn, progress=False))
    return pocketdet.load(res["last"]), time.perf_counter() - t


def main():
    ap = parser(__doc__, full_doc=True)
    ap.add_argument("--pre-iters", type=int, default=300, help="iterations of the 80-class 'COCO' checkpoint")
    ap.add_argument("--iters", type=int, default=100, help="fine-tuning iterations of each of the three runs")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--size", type=int, default=320, help="input size (320: the recipe's)")
    ap.add_argument("--pretrained", type=Path, default=None, help="reuse this 80-class checkpoint for step 1")
    ap.add_argument("--work", type=Path, default=ROOT / "runs/finetune")
    args = ap.parse_args()
    t0 = time.perf_counter()
    log = lambda *a: print(f"[{time.perf_counter() - t0:6.0f}s]", *a, flush=True)  # noqa: E731
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    coco_cfg = apply_overrides(load_config(MODEL), schedule(args, args.pre_iters))
    if args.pretrained:
        coco, pre_s = pocketdet.load(args.pretrained), 0.0
        coco_path = args.pretrained
    else:
        log(f"1. 80-class checkpoint: {args.pre_iters} iterations on coco128 val")
        coco, pre_s = run(coco_cfg, pretrain_dataset(args.work), args.work / "coco")
        coco_path = args.work / "coco/last.pt"
    ft_json = subset_coco(DATA / "coco128/annotations/instances_train2017.json", CLASSES,
                          args.work / "ft_train.json", keep_empty=False)
    ho_json = subset_coco(DATA / "coco_mini/annotations/instances_val2017.json", CLASSES,
                          args.work / "ft_heldout.json", keep_empty=True)
    ft_ds = CocoDetection(DATA / "coco128/images/train2017", ft_json, CLASSES)
    ho_ds = CocoDetection(DATA / "coco_mini/val2017", ho_json, CLASSES)
    ft_cfg = apply_overrides(load_config(MODEL), schedule(args, args.iters))

    def from_coco(map_names: bool):
        def init(model):
            log(init_from_model(model, coco, str(coco_path), map_names=map_names).summary())
        return init

    runs = [("from the COCO checkpoint, class rows mapped by name (`--weights`)", from_coco(True)),
            ("from the COCO checkpoint, class rows re-initialised (no name mapping)", from_coco(False)),
            ("from scratch (random init)", None)]
    rows = []
    for i, (label, init_fn) in enumerate(runs):
        log(f"2. {label}: {args.iters} iterations on {len(ft_ds)} photos")
        torch.manual_seed(0)
        model, secs = run(ft_cfg, ft_ds, args.work / f"ft{i}", init_fn)
        ho = evaluate(model, ho_ds, progress=False)
        tr = evaluate(model, ft_ds, progress=False)
        rows.append((label, ho["AP50"], ho["AP"], tr["AP50"], secs))
        log(label, rows[-1][1:])
    # the COCO checkpoint itself, projected onto the classes by name (build(..., class_names=, weights=))
    mapped = pocketdet.build(MODEL, class_names=CLASSES, weights=coco_path)
    ho, tr = evaluate(mapped, ho_ds, progress=False), evaluate(mapped, ft_ds, progress=False)
    rows.insert(0, ("the COCO checkpoint, classes mapped by name, no fine-tuning", ho["AP50"], ho["AP"], tr["AP50"], 0))
    body = markdown(args, rows, pre_s, len(ft_ds), len(ho_ds), time.perf_counter() - t0)
    replace_section(args.md, "finetune", body)
    print(body)


def markdown(args, rows, pre_s, n_ft, n_ho, seconds) -> str:
    lines = [
        "## Fine-tuning to a few classes (`benchmarks/finetune.py`)",
        "",
        f"`{command_line(__file__)}`, {torch.get_num_threads()} torch thread(s), total {seconds / 60:.0f} min; "
        f"{machine_line()} A shared, loaded machine.",
        "",
        f"{MODEL} at input {args.size}; classes {', '.join(CLASSES)}. The \"COCO checkpoint\" is "
        + (f"{args.pretrained} (reused)" if args.pretrained else
           f"trained here from random init for {args.pre_iters} iterations (batch {args.batch}, {pre_s / 60:.0f} "
           "min) on coco128's val photos with all 80 classes")
        + f"; each fine-tuning row then trains {args.iters} "
        f"iterations (batch {args.batch}, AdamW lr {args.lr}, no augmentation, same seed) on the {n_ft} coco128 "
        f"train photos holding these classes. Held out: coco_mini's {n_ho} val2017 photos. Only the "
        "initialisation differs.",
        "",
        "| initialisation | held-out AP50 | held-out AP | fine-tuning photos AP50 | train time |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {label} | {ap50:.3f} | {ap:.3f} | {tr50:.3f} | {secs / 60:.1f} min |"
              for label, ap50, ap, tr50, secs in rows]
    lines += ["", "Budgets this small leave absolute AP near the floor; the rows compare initialisations under "
              "one schedule, not the zoo's accuracy (the official `NAME:coco` weights are the real starting point)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
