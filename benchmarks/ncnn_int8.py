"""ncnn int8 (issue 15 item 4): AP drop on a fitted model and int8/fp32 latency per zoo arch in ncnn.

    python benchmarks/ncnn_int8.py [--fitted tests/fixtures/fitted/ssdlite_small_fit.pt] [--runs 30]

* AP: the fitted SSDLite-MNV3-Small fixture (fitted to 8 coco128 photos), exported to fp32 ncnn, quantized with
  `pocketdet.deploy.ncnn_int8` (calibration on 32 other coco128 photos), both run through `NcnnDetector.predict`
  on the 8 photos and scored with COCO AP. Also with depthwise convs kept fp32.
* latency: the dense graph (`forward`, batch 1, 1 thread) of fp32, int8 and int8-with-fp32-depthwise,
  interleaved round-robin (the machine is shared); for SSDLite-S/L, YOLOv3 (+ pruned) with trained-like weights
  (latency does not depend on the weights' values) and Cascade R-CNN 320 (dense net + stage heads, predict()).
Writes BENCHMARKS.md section `ncnn-int8`.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from harness import ROOT, command_line, machine_line, medians_ms, parser, replace_section

from pocketdet.api import load  # noqa: E402
from pocketdet.config import load_config  # noqa: E402
from pocketdet.data import build_dataset, load_dataset_yaml  # noqa: E402
from pocketdet.deploy.trained_like import make_trained_like  # noqa: E402
from pocketdet.deploy.mobile import NcnnDetector, export_ncnn  # noqa: E402
from pocketdet.deploy.ncnn_int8 import quantize_ncnn  # noqa: E402
from pocketdet.engine.evaluate import coco_eval  # noqa: E402
from pocketdet.models import build_model  # noqa: E402

TRAIN = sorted((ROOT / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))
ARCHS = ["ssdlite_mnv3_small_320", "ssdlite_mnv3_large_320", "yolov3_mnv3_large_320",
         "yolov3_mnv3_large_320_prune_fpgm", "cascade_rcnn_mnv3_large_fpn_320"]


def ap_of(det, ds) -> dict:
    results = []
    for rec in ds.records:
        out = det.predict(rec.path)
        for b, s, lab in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            results.append({"image_id": rec.image_id, "category_id": ds.label_to_category_id(lab),
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    return coco_eval(ds.coco_gt(), results)


def variants(fp32_param: Path, calib: list, tmp: Path) -> dict[str, Path]:
    out = {"fp32": fp32_param}
    out["int8"] = Path(quantize_ncnn(fp32_param, calib, tmp / (fp32_param.name.replace(".ncnn.param", ".int8.ncnn.param")))["param"])
    out["int8 (dw fp32)"] = Path(quantize_ncnn(fp32_param, calib, tmp / fp32_param.name.replace(".ncnn.param", ".int8dw.ncnn.param"),
                                               skip_types=("ConvolutionDepthWise",))["param"])
    return out


def latency(paths: dict[str, Path], runs: int, photo: Path) -> dict[str, float]:
    dets = {k: NcnnDetector(p, threads=1) for k, p in paths.items()}
    first = next(iter(dets.values()))
    if first.heads_net is not None:  # two nets and host RoIAlign: time the whole predict()
        rgb = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(photo).convert("RGB"))
        fns = {k: (lambda d=d: d.predict(rgb)) for k, d in dets.items()}
    else:
        x, _ = first.preprocess(photo)
        fns = {k: (lambda d=d: d.forward(x)) for k, d in dets.items()}
    return medians_ms(fns, runs, warmup=3)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--fitted", type=Path, default=ROOT / "tests" / "fixtures" / "fitted" / "ssdlite_small_fit.pt")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--archs", nargs="*", default=ARCHS)
    ap.add_argument("--calib", type=int, default=32, help="calibration photos (coco128 train, not the fitted ones)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="ncnn-int8-"))
    fit_yaml = args.fitted.with_name("fit.yaml")
    fit_photos = {p["file_name"] if isinstance(p, dict) else p for p in json.loads(args.fitted.with_name("fit.json").read_text())["photos"]}
    calib = [p for p in TRAIN if p.name not in fit_photos][:args.calib]

    lines = []
    model = load(args.fitted).eval()
    paths = variants(export_ncnn(model, tmp / "fitted", name="ssdlite_small_fit"), calib, tmp)
    ds = build_dataset(load_dataset_yaml(fit_yaml), "val", model.class_names)
    aps = {k: ap_of(NcnnDetector(p, threads=1), ds) for k, p in paths.items()}
    torch_ap = None
    try:
        from pocketdet.engine.evaluate import evaluate
        torch_ap = evaluate(model, ds, batch_size=4, progress=False)
    except Exception as e:  # noqa: BLE001 - reported, not fatal for the ncnn numbers
        print(f"torch AP skipped: {e}")
    lines += ["### AP on the fitted SSDLite-MNV3-Small (its 8 coco128 training photos)", "",
              f"int8 calibration: `max` on {len(calib)} other coco128 photos.", "",
              "| model | AP | AP50 | AP drop vs fp32 ncnn |", "|---|---|---|---|"]
    if torch_ap:
        lines.append(f"| torch fp32 | {torch_ap['AP']:.4f} | {torch_ap['AP50']:.4f} | |")
    for k, s in aps.items():
        lines.append(f"| ncnn {k} | {s['AP']:.4f} | {s['AP50']:.4f} | {aps['fp32']['AP'] - s['AP']:+.4f} |")
    print("\n".join(lines))

    rows = []
    for name in args.archs:
        torch.manual_seed(0)
        m = make_trained_like(build_model(load_config(name).model), TRAIN[:8])
        p = variants(export_ncnn(m, tmp / name, name=name), calib[:8], tmp)
        t = latency(p, args.runs, TRAIN[0])
        f = t["fp32"]
        sizes = {k: sum(f.stat().st_size for f in (v.with_name(v.name.replace(".ncnn.param", ".ncnn.bin")),
                                                    v.with_name(v.name.replace(".ncnn.param", ".heads.ncnn.bin")))
                        if f.is_file()) for k, v in p.items()}
        rows.append(f"| {name} | {f:.1f} | {t['int8']:.1f} ({t['int8'] / f:.2f}x) | "
                    f"{t['int8 (dw fp32)']:.1f} ({t['int8 (dw fp32)'] / f:.2f}x) | "
                    f"{sizes['fp32'] / 1e6:.1f} / {sizes['int8'] / 1e6:.1f} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        "## ncnn int8 (issue 15 item 4)", "",
        f"`{command_line(__file__)}`, {machine_line()} The machine was shared and loaded (2 cores, ~9 sessions): "
        "latencies are medians of interleaved runs; read the ratios, not the absolute values.",
        "int8 files written by `pocketdet quantize MODEL.ncnn.param --format ncnn` (pocketdet.deploy.ncnn_int8: "
        "KL calibration, per-channel int8 weights; ncnn's ncnn2table/ncnn2int8 are not in its PyPI sdist).", "",
        *lines, "",
        "### Latency, ncnn 1 thread (dense graph forward; Cascade: whole predict())", "",
        "| model | fp32 ms | int8 ms | int8, depthwise fp32, ms | weights MB fp32 / int8 |", "|---|---|---|---|---|",
        *rows])
    replace_section(args.md, "ncnn-int8", body)
    print(f"-> {args.md} (section ncnn-int8)")


if __name__ == "__main__":
    main()
