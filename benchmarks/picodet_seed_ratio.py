"""PP-PicoDet against the seed models, every model interleaved in one round-robin: predict latency ratios.

`pocketdet bench` interleaves the runtimes of one model, but times the models one after another, so on a shared
machine a load change between two models moves their ratio (measured: the seeds' ONNX Runtime times doubled
between two bench runs 5 minutes apart). Here every (model, runtime) `predict` on one photo is a candidate of
the same round-robin, so each ratio to a seed model sees the same load. The models are the files a `pocketdet
bench` run exported (`--out` folder: trained-like weights, `NAME.onnx` and `NAME.ncnn.param`).

    python benchmarks/picodet_seed_ratio.py runs/bench-picodet --runs 20
"""
from __future__ import annotations

from pathlib import Path

from harness import ROOT, command_line, machine_line, parser, replace_section, stats_ms, time_interleaved
from pocketdet.config import load_config
from pocketdet.deploy import npops
from pocketdet.deploy.runtime import Detector

PHOTO = ROOT / "data" / "coco128" / "images" / "val2017" / "000000000139.jpg"
SEEDS = ("ssdlite_mnv3_large_320", "yolov3_mnv3_large_320")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("folder", type=Path, help="a `pocketdet bench --out` folder with NAME.onnx / NAME.ncnn.param")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    from pocketdet.deploy.mobile import NcnnDetector

    names = sorted(p.stem for p in args.folder.glob("*.onnx") if not p.stem.endswith(".int8"))
    missing = [s for s in SEEDS if s not in names]
    if missing:
        raise SystemExit(f"{args.folder}: no export of the seed model(s) {', '.join(missing)}")
    rgb = npops.load_rgb(PHOTO)
    fns = {}
    for n in names:
        fns[(n, "onnxruntime")] = (lambda d: lambda: d.predict(rgb))(Detector(args.folder / f"{n}.onnx", threads=1))
        param = args.folder / f"{n}.ncnn.param"
        if param.is_file():
            fns[(n, "ncnn")] = (lambda d: lambda: d.predict(rgb))(NcnnDetector(param, threads=1))
    ms = {k: stats_ms(v)["median_ms"] for k, v in time_interleaved(fns, args.runs, args.warmup).items()}
    lines = ["### PP-PicoDet / seed latency ratios, all models interleaved (`benchmarks/picodet_seed_ratio.py`)", "",
             f"Command: `{command_line(__file__)}`; {machine_line()}",
             "Batch 1, 1 thread, `predict` on a decoded 640x427 photo (resize, network, decode, NMS), median of "
             f"{args.runs} round-robin rounds over every (model, runtime) below. Ratio < 1: faster than the seed "
             "model in the same runtime. Absolute times move with the shared machine's load; the ratios are what "
             "this measures. AP: published (Paddle).", "",
             "| model | AP | runtime | predict ms | / " + " | / ".join(SEEDS) + " |", "|---|---|---|---|---|---|"]
    for n in names:
        ap_pub = load_config(n).reference.get("box_ap", "—")
        for rt in ("onnxruntime", "ncnn"):
            if (n, rt) in ms:
                ratios = " | ".join(f"{ms[(n, rt)] / ms[(s, rt)]:.2f}" for s in SEEDS)
                lines.append(f"| {n} | {ap_pub} | {rt} | {ms[(n, rt)]:.1f} | {ratios} |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        replace_section(args.md, "deploy-zoo-picodet-ratio", text, parent="deploy")


if __name__ == "__main__":
    main()
