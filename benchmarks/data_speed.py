"""Training input speed per core: images/s of each family's augmentation, from JPEG files to the collated batch,
next to torchvision's detection reference presets, with where the time goes (decode, augment, collate).

    .venv/bin/python benchmarks/data_speed.py              # writes BENCHMARKS.md "Training input speed (CPU)"
    .venv/bin/python benchmarks/data_speed.py --no-write --rounds 4

One process, one torch thread (what one DataLoader worker gets), the 128 coco128 training photos, batch 8.
The pipelines take turns batch by batch (A, B, C, A, B, C, ...) so that a load change on a shared machine
hits all of them alike; per-image times are medians over the batches. Decode is the dataset's own (PIL, whole
photo) for every pipeline but the `ssd` one on PhotoFiles, whose transform decodes (at 1/2-1/8 where its window
allows): its decode is timed inside the transform and left out of its augment column. "augment" is the
per-sample transform (for YOLO also the mixup blend), "collate" the batch function (YOLO: random-size resize;
R-CNN: multi-scale resize + padding; others: to float 0..1). A last line times the JPEG decoders alone
(PIL whole, PIL at 1/2, torchvision.io.decode_jpeg) on the same photos, interleaved.

torchvision presets (references/detection/presets.py, tensor backend, transforms.v2): `ssd` =
RandomPhotometricDistort, RandomZoomOut, RandomIoUCrop, RandomHorizontalFlip; `ssdlite` = RandomIoUCrop,
RandomHorizontalFlip; both then ToDtype(float), SanitizeBoundingBoxes, and here the 320x320 bilinear resize
that torchvision's SSDLite does inside the model (GeneralizedRCNNTransform), so all rows end at the same
batch.
"""
from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

import io
import warnings

from harness import ROOT, command_line, machine_info, machine_line, medians_ms, parser, replace_section
from PIL import Image

from pocketdet.data import CocoDetection  # noqa: E402
from pocketdet.data import gpu_aug, rcnn_aug, yolo_aug  # noqa: E402
from pocketdet.data.picodet_aug import build_picodet_transforms, multiscale_sizes  # noqa: E402
from pocketdet.data.base import PhotoFile, PhotoFiles  # noqa: E402
from pocketdet.data.loader import SeededTransformDataset, collate_detection  # noqa: E402
from pocketdet.data.transforms import ssd_reference_transforms, ssd_train_transforms  # noqa: E402

SIZE, BATCH = 320, 8


class Timed:
    """Wraps a dataset or a callable and adds the seconds spent inside it to `bucket[key]`."""

    def __init__(self, inner, bucket: dict, key: str):
        self.inner, self.bucket, self.key = inner, bucket, key
        for attr in ("records", "class_names", "stream_keys"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    def __len__(self):
        return len(self.inner)

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.bucket[self.key] += time.perf_counter() - t0
        return out

    def __getitem__(self, key):
        return self._timed(self.inner.__getitem__, key)

    def __call__(self, *args):
        return self._timed(self.inner, *args)


@dataclass(frozen=True)
class TimedPhotoFile(PhotoFile):
    """A PhotoFile whose decode (done inside the transform) adds its seconds to bucket["lazy decode"]."""
    bucket: dict | None = None

    def decode(self, reduce: int = 1):
        t0 = time.perf_counter()
        out = super().decode(reduce)
        self.bucket["lazy decode"] += time.perf_counter() - t0
        return out


class TimedPhotoFiles(PhotoFiles):
    """PhotoFiles whose items time their decode (the "decode" column of pipelines that decode late)."""
    bucket: dict = {}

    def __getitem__(self, i: int):
        photo, target = super().__getitem__(i)
        return TimedPhotoFile(photo.path, photo.width, photo.height, self.bucket), target


def torchvision_preset(kind: str):
    """references/detection/presets.py DetectionPresetTrain(data_augmentation=kind, backend="tensor", use_v2)."""
    steps = [v2.RandomIoUCrop(), v2.RandomHorizontalFlip(0.5)]
    if kind == "ssd":
        steps = [v2.RandomPhotometricDistort(), v2.RandomZoomOut(fill={tv_tensors.Image: (123.0, 117.0, 104.0),
                                                                       "others": 0})] + steps
    steps += [v2.ToDtype(torch.float, scale=True), v2.ConvertBoundingBoxFormat("XYXY"), v2.SanitizeBoundingBoxes()]
    return v2.Compose(steps)


def collate_model_resize(batch):
    """What torchvision's SSDLite does in GeneralizedRCNNTransform: bilinear to 320x320, then batch."""
    images = [F.interpolate(img.as_subclass(torch.Tensor)[None], size=(SIZE, SIZE), mode="bilinear",
                            align_corners=False)[0] for img, _ in batch]
    return torch.stack(images), [t for _, t in batch]


def family_rows(yolo, rcnn, ds, tag: str) -> dict:
    """The YOLO and R-CNN rows, for the given modules (this tree's, or an earlier version's)."""
    yolo_ds = yolo.MixupDataset(ds, 1.5, 1.5, until_position=10**12)
    return {
        f"yolo{tag} (mixup + distort/expand/crop + multi-scale)": (yolo_ds, yolo.build_yolo_transforms(),
                                                                   yolo.RandomShapeCollate()),
        f"rcnn{tag} (flip + multi-scale 224-384, max 512)": (
            ds, rcnn.build_rcnn_transforms(), rcnn.RCNNMultiScaleCollate([224, 256, 288, 320, 352, 384], 512)),
    }


def earlier_version(path: str):
    """(yolo_aug, rcnn_aug) of an earlier pocketdet tree, e.g. `git archive <commit> pocketdet | tar -x -C DIR`
    and then DIR/pocketdet renamed DIR/pocketdet_before."""
    import importlib

    sys.path.insert(0, path)
    yolo = importlib.import_module("pocketdet_before.data.yolo_aug")
    # its KeepFirstBoxes crashed the next step on photos with > 50 boxes: today's fixed one stands in
    yolo.KeepFirstBoxes = yolo_aug.KeepFirstBoxes
    return yolo, importlib.import_module("pocketdet_before.data.rcnn_aug")


def pipelines(ds, before: str | None = None) -> dict:
    """name -> (dataset, per-sample transform, collate). Datasets index by (stream position, photo)."""
    old_families = family_rows(*earlier_version(before), ds, " (before)") if before else {}
    return {
        "ssd (before: torchvision v2 steps)": (ds, ssd_reference_transforms(SIZE), collate_detection),
        "ssd (now: ssd_aug.FastSSDAugment on PhotoFiles)": (TimedPhotoFiles(ds), ssd_train_transforms(SIZE),
                                                            collate_detection),
        "ssd (same, photos decoded in full first)": (ds, ssd_train_transforms(SIZE), collate_detection),
        "ssd, device path: worker part": (gpu_aug.EncodedImages(ds), gpu_aug.DrawSSDParams(SIZE),
                                          gpu_aug.collate_encoded),
        "torchvision preset `ssd`": (ds, torchvision_preset("ssd"), collate_model_resize),
        "torchvision preset `ssdlite`": (ds, torchvision_preset("ssdlite"), collate_model_resize),
        **old_families,
        **family_rows(yolo_aug, rcnn_aug, ds, " (now)" if before else ""),
        "yolo (same draws, step by step with the zoom-out canvas)": (
            yolo_aug.MixupDataset(ds, 1.5, 1.5, until_position=10**12), yolo_aug.yolo_reference_transforms(),
            yolo_aug.RandomShapeCollate()),
        "picodet (IoU crop + flip + distort + multi-scale 256-384; new this stop)": (
            ds, build_picodet_transforms(), yolo_aug.RandomShapeCollate(multiscale_sizes(SIZE))),
    }


def decoder_medians(ds, order: list[int], rounds: int) -> dict[str, float]:
    """ms per photo of the JPEG decoders alone (file bytes in memory), interleaved."""
    from torchvision.io import decode_jpeg

    blobs = [ds.records[i].path.read_bytes() for i in order[:16]]

    def pil(reduce: int):
        def run():
            for b in blobs:
                with Image.open(io.BytesIO(b)) as im:
                    if reduce > 1:
                        im.draft("RGB", (im.width // reduce, im.height // reduce))
                    im.load()
        return run

    def tv():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecated since torchvision 0.29
            for b in blobs:
                decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))

    fns = {"PIL": pil(1), "PIL at 1/2 (draft)": pil(2), "torchvision.io.decode_jpeg": tv}
    return {k: v / len(blobs) for k, v in medians_ms(fns, max(rounds, 3), warmup=1).items()}


def run(rounds: int, only: list[str] | None, before: str | None) -> dict[str, dict[str, float]]:
    ds = CocoDetection(ROOT / "data/coco128/images/train2017",
                       ROOT / "data/coco128/annotations/instances_train2017.json")
    # photos without boxes are left out: torchvision's RandomIoUCrop loops for ever on them (its references
    # drop such images from the training set)
    order = [i for i in torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
             if len(ds.records[i].boxes)]
    per_batch: dict[str, list[dict]] = defaultdict(list)
    made = {}
    for name, (base, transform, collate) in pipelines(ds, before).items():
        if only and not any(o in name for o in only):
            continue
        bucket: dict = defaultdict(float)
        if isinstance(base, TimedPhotoFiles):
            base.bucket = bucket
        mixup = hasattr(base, "alpha")  # a MixupDataset (this tree's or an earlier one's)
        inner = Timed(base.base if mixup else base, bucket, "decode")
        if mixup:
            base.base = inner
            outer = Timed(base, bucket, "decode+mixup")
        else:
            outer = inner
        made[name] = (SeededTransformDataset(outer, Timed(transform, bucket, "augment"), seed=0),
                      Timed(collate, bucket, "collate"), bucket)
    for r in range(rounds + 1):  # round 0 warms up
        for name, (seeded, collate, bucket) in made.items():
            bucket.clear()
            t0 = time.perf_counter()
            keys = [(r * BATCH + k, order[(r * BATCH + k) % len(order)]) for k in range(BATCH)]
            collate([seeded[key] for key in keys])
            total = time.perf_counter() - t0
            if r:
                decode, late = bucket["decode"], bucket.get("lazy decode", 0.0)  # late: inside the transform
                mixup = bucket.get("decode+mixup", decode) - decode
                per_batch[name].append({"decode": decode + late, "augment": bucket["augment"] - late + mixup,
                                        "collate": bucket["collate"], "total": total})
    out = {"decoders": decoder_medians(ds, order, rounds)}
    for name, rows in per_batch.items():
        out[name] = {k: statistics.median(row[k] for row in rows) / BATCH * 1e3 for k in rows[0]}
        out[name]["images_per_s"] = 1e3 / out[name]["total"]
    return out


def load_sentence(info: dict) -> str:
    """Whether others shared the machine, from the 1-minute load average at the start (< 1 on 2 cores: this
    benchmark ran alone)."""
    load = (info.get("load_avg") or [None])[0]
    if load is not None and load < 1.0:
        return f"The machine ran only this benchmark (load {load:.1f} at start)."
    return "**The machine was shared with other jobs**, so absolute figures are pessimistic and noisy."


def render(res: dict, rounds: int, info: dict, command: str) -> str:
    tv = res.get("torchvision preset `ssd`", {}).get("images_per_s")
    lines = ["## Training input speed (CPU, one worker)", "",
             f"Command: `{command}`; {machine_line(info)} {load_sentence(info)} Compare rows (the "
             "pipelines took turns batch by batch). One process, one torch thread, batch "
             f"{BATCH}, {rounds} batches each, the coco128 training photos; milliseconds per image (medians over "
             "batches), from the JPEG file to the collated batch.", "",
             "| pipeline | decode | augment | collate | total | images/s | vs torchvision `ssd` |",
             "|---|---|---|---|---|---|---|"]
    decoders = res.pop("decoders", None)
    for name, r in res.items():
        rel = f"{r['images_per_s'] / tv:.2f}x" if tv else "-"
        lines.append(f"| {name} | {r['decode']:.1f} | {r['augment']:.1f} | {r['collate']:.1f} | {r['total']:.1f} | "
                     f"{r['images_per_s']:.1f} | {rel} |")
    before = res.get("ssd (before: torchvision v2 steps)")
    now = res.get("ssd (now: ssd_aug.FastSSDAugment on PhotoFiles)")
    full = res.get("ssd (same, photos decoded in full first)")
    lite = res.get("torchvision preset `ssdlite`")
    if before and now:
        lines += ["", f"`ssd` now vs before: **{before['total'] / now['total']:.2f}x per image**, "
                  f"{before['augment'] / now['augment']:.2f}x on the augmentation alone"
                  + (f"; vs torchvision's `ssdlite` preset (crop + flip only): {lite['total'] / now['total']:.2f}x"
                     if lite else "")
                  + (f"; the reduced decode alone (vs the same pipeline on whole decodes): "
                     f"{full['decode'] / now['decode']:.2f}x on the decode, {full['total'] / now['total']:.2f}x "
                     "per image" if full else "")
                  + f". The decode is still {now['decode'] / now['total']:.0%} of the new pipeline's time."]
    for family in ("yolo", "rcnn"):
        old = next((r for n, r in res.items() if n.startswith(f"{family} (before)")), None)
        new = next((r for n, r in res.items() if n.startswith(f"{family} (now)")), None)
        if old and new:
            lines += ["", f"`{family}` now vs before: {old['total'] / new['total']:.2f}x per image "
                      f"(augment {old['augment'] / new['augment']:.2f}x, collate "
                      f"{old['collate'] / new['collate']:.2f}x)."]
    if decoders:
        lines += ["", "JPEG decoders alone, ms per photo (coco128, bytes in memory, interleaved): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in decoders.items())
                  + ". torchvision.io's decoders are deprecated since 0.29 (every call warns; TorchCodec "
                  "replaces them) and have no DCT scaling, so the pipelines use PIL."]
    if any("(before)" in name for name in res):
        lines += ["", "*(before)* rows: the YOLO and R-CNN pipelines of the tree before this work "
                  "(`git archive <commit> pocketdet`, passed with `--before`), with today's KeepFirstBoxes "
                  "(the earlier one crashed on photos with more than 50 boxes). The YOLO batch size and "
                  "interpolation are drawn per batch, and the two versions consume the random stream "
                  "differently, so their collate columns compare different draws."]
    lines += ["", "*device path: worker part*: what a DataLoader worker does when the `ssd` augmentation runs on the "
              "GPU (data/gpu_aug.py): read the file's bytes, draw the sample's parameters and move its boxes; "
              "the decode column is the file read. The pixels are decoded and augmented batched on the device."]
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rounds", type=int, default=12, help="batches per pipeline (after one warm-up batch)")
    ap.add_argument("--only", nargs="*", help="substrings of the pipeline names to run")
    ap.add_argument("--before", help="folder holding an earlier tree as `pocketdet_before` (see earlier_version): "
                                     "adds its YOLO and R-CNN pipelines as 'before' rows")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    res = run(args.rounds, args.only, args.before)
    text = render(res, args.rounds, info, command_line(__file__))
    print(text)
    if not args.no_write:
        replace_section(args.md, "data_speed", text)


if __name__ == "__main__":
    main()
