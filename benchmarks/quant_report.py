"""int8 quantization report: float vs PTQ vs QAT SSDLite-Small on the demo data, into BENCHMARKS.md.

    python benchmarks/quant_report.py                      # trains a float model with the demo recipe first
    python benchmarks/quant_report.py --checkpoint runs/demo/best.pt --qat-iters 100

All three models are evaluated the same way: exported ONNX run by `pocketdet.Detector` (ONNX Runtime, numpy
NMS) over the held-out split and over the training photos, COCO AP50 with faster-coco-eval. Latency: ORT at 1
thread, batch 1, the sessions interleaved round-robin so that load from other processes hits all alike;
median and p10-p90 over `--runs` x `--rounds`. An ORT profile (per-op time, fp32 vs int8) shows what bounds the
int8 speed-up. Only the section between `<!-- quant:start -->` and `<!-- quant:end -->` is replaced.
"""
from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, machine_line, parser, replace_section, time_interleaved

RECIPE = ["res_conv1", "se_block"]


def ort_eval(det, dataset) -> dict:
    from pocketdet.engine.evaluate import coco_eval

    res, ids = [], []
    for rec in dataset.records:
        out = det.predict(rec.path)
        for b, s, lab in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            res.append({"image_id": int(rec.image_id), "category_id": int(dataset.label_to_category_id(int(lab))),
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
        ids.append(rec.image_id)
    return coco_eval(dataset.coco_gt(), res, ids)


def latency(paths: dict, runs: int, rounds: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    from pocketdet.deploy import npops

    x = npops.resize_chw(npops.load_rgb(ROOT / "data/coco128/images/train2017/000000000009.jpg"), 320)
    sess = {}
    for k, p in paths.items():
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
        sess[k] = ort.InferenceSession(str(p), o, providers=["CPUExecutionProvider"])
    # round-robin: each variant sees the same background load
    times = time_interleaved({k: (lambda s: lambda: s.run(None, {"images": x}))(s) for k, s in sess.items()},
                             runs * rounds, warmup=5)
    times = {k: np.asarray(v) * 1e3 for k, v in times.items()}
    return {k: {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)),
                "min": float(np.min(v))} for k, v in times.items()}


def profile(path, runs: int = 30) -> dict:
    """ORT profiler: ms per run by op type, and by conv kind (depthwise/grouped vs dense)."""
    import onnx
    import onnxruntime as ort

    from pocketdet.deploy import npops

    grouped = {n.name for n in onnx.load(str(path)).graph.node
               if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    x = npops.resize_chw(npops.load_rgb(ROOT / "data/coco128/images/train2017/000000000009.jpg"), 320)
    with tempfile.TemporaryDirectory() as tmp:
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
        o.enable_profiling = True
        o.profile_file_prefix = str(Path(tmp) / "p")
        s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            s.run(None, {"images": x})
        events = json.loads(Path(s.end_profiling()).read_text())
    by_op, by_kind = collections.defaultdict(float), collections.defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op, ms = e["args"]["op_name"], e["dur"] / 1e3 / runs
        by_op[op] += ms
        node = e["name"][: -len("_kernel_time")]
        if op in ("Conv", "FusedConv", "QLinearConv", "NhwcFusedConv"):
            dw = any(node.startswith(g) or g.startswith(node) for g in grouped) or "bottleneck_conv" in node \
                or "dw_conv" in node or "depthwise_conv" in node
            by_kind["depthwise/grouped conv" if dw else "dense conv (1x1, stem)"] += ms
    return {"by_op": dict(sorted(by_op.items(), key=lambda t: -t[1])), "by_kind": dict(by_kind)}


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--checkpoint", type=Path, help="float checkpoint (default: train with the demo recipe)")
    ap.add_argument("--train-iters", type=int, default=400, help="demo-recipe iterations when training")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--fit-images", type=int, default=0,
                    help="train (float and QAT) on only the first N train photos, so that a short CPU run fits "
                         "them and AP on them is non-trivial; 0: all 128 (the demo recipe)")
    ap.add_argument("--qat-iters", type=int, default=100)
    ap.add_argument("--qat-batch", type=int, default=8)
    ap.add_argument("--qat-lr", type=float, default=0.005)
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "quant_report")
    ap.add_argument("--render", type=Path, help="only re-render the section from a quant_report.json")
    args = ap.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        replace_section(args.md, "quant", render(result, result.get("args", "")))
        return

    import torch

    torch.set_num_threads(1)
    from pocketdet import api
    from pocketdet.compress import quant as Q
    from pocketdet.data import build_dataset, load_dataset_yaml
    from pocketdet.deploy.export import export_onnx
    from pocketdet.deploy.runtime import Detector

    args.out.mkdir(parents=True, exist_ok=True)
    data = ROOT / "data" / "demo.yaml"
    t0 = time.perf_counter()
    spec = load_dataset_yaml(data)
    train_ds = build_dataset(spec, "train")
    if args.fit_images:
        train_ds.records = train_ds.records[: args.fit_images]
    val_ds = build_dataset(spec, "val", train_ds.class_names)
    ckpt = args.checkpoint
    if ckpt is None and not args.fit_images:
        from pocketdet import demo
        ckpt = Path(demo.main(["--iters", str(args.train_iters), "--batch-size", str(args.train_batch),
                               "--out", str(args.out / "float")])["checkpoint"])
    elif ckpt is None:  # demo.py's recipe (LR 0.05, short warmup, cosine), on the subset
        from pocketdet.config import apply_overrides, load_config
        from pocketdet.engine.trainer import TrainOptions, train

        cfg = apply_overrides(load_config("ssdlite_mnv3_small_320"), [
            f"train.schedule.max_iters={args.train_iters}", "train.schedule.warmup_iters=20",
            f"train.batch_size={args.train_batch}", "train.scale_lr=false", "train.optimizer.lr=0.05",
            "train.num_workers=0", f"train.checkpoint_interval={args.train_iters}", "train.log_interval=10"])
        ckpt = train(cfg, train_ds, TrainOptions(out_dir=args.out / "float", device="cpu"))["last"]
    float_s = time.perf_counter() - t0
    model = api.load(ckpt).eval()
    calib = Q.calibration_images(data, args.calib_images)

    paths = {"fp32": export_onnx(model, args.out / "fp32.onnx", name="ssdlite_mnv3_small_320")}
    ptq_variants = {"ptq_all": [], "ptq_recipe": RECIPE}
    for k, nq in ptq_variants.items():
        t = time.perf_counter()
        Q.quantize_onnx(paths["fp32"], args.out / f"{k}.onnx", calib, nq, quant_meta={"method": "ptq"})
        paths[k] = args.out / f"{k}.onnx"
        print(f"{k}: {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    qat_model = Q.qat_finetune(model, model.zoo_config, train_ds, RECIPE, out_dir=args.out / "qat_train",
                               iters=args.qat_iters, lr=args.qat_lr, batch_size=args.qat_batch)
    (args.out / "qat_recipe.onnx").write_bytes(Q.qat_to_onnx(qat_model, calib, RECIPE, name="ssdlite_mnv3_small_320"))
    paths["qat_recipe"] = args.out / "qat_recipe.onnx"
    qat_s = time.perf_counter() - t
    print(f"qat: {qat_s:.1f} s", flush=True)

    acc = {}
    for k, p in paths.items():
        det = Detector(p, threads=1)
        acc[k] = {"val": ort_eval(det, val_ds), "train": ort_eval(det, train_ds)}
        print(k, {s: round(v["AP50"] * 100, 2) for s, v in acc[k].items()}, flush=True)
    sizes = {k: os.path.getsize(p) for k, p in paths.items()}
    lat = latency(paths, args.runs, args.rounds)
    prof = {k: profile(paths[k]) for k in ("fp32", "ptq_all", "ptq_recipe")}
    result = {"args": " ".join(argv if argv is not None else sys.argv[1:]), "checkpoint": str(ckpt), "accuracy": acc, "sizes": sizes, "latency_ms": lat, "profile": prof,
              "machine": machine_line(),
              "qat_iters": args.qat_iters, "qat_seconds": qat_s, "float_train_seconds": float_s,
              "calib_images": len(calib), "train_images": len(train_ds)}
    (args.out / "quant_report.json").write_text(json.dumps(result, indent=1))

    text = render(result, " ".join(argv if argv is not None else sys.argv[1:]))
    replace_section(args.md, "quant", text)
    print(text)


def notes(result: dict) -> str:
    prof, acc = result["profile"], result["accuracy"]
    f, q, r = (prof[k]["by_kind"] for k in ("fp32", "ptq_all", "ptq_recipe"))
    dense, dw = "dense conv (1x1, stem)", "depthwise/grouped conv"
    qdq = sum(prof["ptq_recipe"]["by_op"].get(o, 0) for o in ("QuantizeLinear", "DequantizeLinear"))
    fit = acc["fp32"]["train"]["AP50"] * 100
    other = sum(prof["fp32"]["by_op"].values()) - f.get(dense, 0) - f.get(dw, 0)
    best = r.get(dense, 0) + f.get(dw, 0) + other
    return f"""Notes (raw numbers: quant_report.json next to the models):
- The float model is a few minutes of CPU training from scratch: held-out AP50 is ~0, so the held-out
  column cannot show a quantization loss; AP on the photos it was fitted on (AP50 {fit:.2f}) is where float vs
  PTQ vs QAT differ measurably. Real AP needs the full recipe (spec §3.7: 400k iterations on COCO, 8 GPUs).
- Latency bound (ORT 1.32, AMD Zen 3, AVX2 without VNNI): int8 dense convs take {q.get(dense, 0):.1f} ms against
  {f.get(dense, 0):.1f} ms in fp32 ({f.get(dense, 0) / max(q.get(dense, 0), 1e-9):.2f}x faster), but int8 depthwise
  convs (Small's are mostly 5x5) take {q.get(dw, 0):.1f} ms against {f.get(dw, 0):.1f} ms for fp32's NCHWc kernel.
  Keeping them float (the recipe) avoids that but adds Q/DQ pairs ({qdq:.1f} ms) and NCHWc reorders around
  every float conv. Even with int8 dense convs, fp32-speed depthwise and zero Q/DQ cost the model would take
  ~{best:.0f} ms vs {sum(prof["fp32"]["by_op"].values()):.0f} ms ({best / sum(prof["fp32"]["by_op"].values()):.2f}x):
  the 0.75x target is out of reach here; also measured on a random-weight export (per-tensor weights,
  symmetric activations, S8S8, QOperator format, float 5x5 only): none was faster than fp32. CPUs with
  VNNI (or ARM dot-product, the zoo's phones) are where int8 pays.
- PT2E (`torch.ao.quantization.quantize_pt2e`) is gone from torch 2.14.1 and torchao is not installed, so the
  ORT static quantizer is the measured route (it is also what the deployed runtime executes).
"""


def render(result: dict, args_line: str) -> str:
    acc, sizes, lat, prof = result["accuracy"], result["sizes"], result["latency_ms"], result["profile"]
    qi = result["qat_iters"]
    label = {"fp32": "float (fp32 ONNX)", "ptq_all": "PTQ, every conv int8",
             "ptq_recipe": "PTQ, recipe (`res_conv1 se_block` float)",
             "qat_recipe": f"QAT {qi} it, recipe (`res_conv1 se_block` float)"}
    f = lat["fp32"]["median"]
    lines = [
        "## int8 quantization (SSDLite-MobileNetV3-Small 320, demo data)",
        "",
        f"Command: `python benchmarks/quant_report.py {args_line}`; {result.get('machine', '')} Float model: `{result['checkpoint']}`. "
        "PTQ: ORT `quantize_static`, QDQ, per-channel symmetric int8 weights, uint8 per-tensor activations, "
        f"MinMax calibration on {result['calib_images']} coco128 train photos; the export wrapper's softmax and "
        "box decoding stay float. QAT: fake-quant fine-tuning of the float model "
        f"({qi} iterations, recipe augmentation), then the same ORT export with the QAT activation scales. "
        "AP via the exported ONNX in `pocketdet.Detector` (ORT, 1 thread); held-out = coco_mini val2017 "
        f"(79 photos), fitted = the {result.get('train_images', 128)} coco128 photos the float model was trained on.",
        "",
        "| model | AP50 held-out | AP50 fitted photos | AP fitted photos | file MB | size vs fp32 | "
        "latency ms, 1 thread (median, p10-p90) | vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in acc:
        a = acc[k]
        lines.append(f"| {label[k]} | {a['val']['AP50'] * 100:.2f} | {a['train']['AP50'] * 100:.2f} | "
                     f"{a['train']['AP'] * 100:.2f} | {sizes[k] / 1e6:.2f} | {sizes[k] / sizes['fp32']:.2f}x | "
                     f"{lat[k]['median']:.1f} ({lat[k]['p10']:.1f}-{lat[k]['p90']:.1f}) | "
                     f"{lat[k]['median'] / f:.2f}x |")
    lines += ["", "Latency: ORT sessions interleaved round-robin in one process on a shared, loaded 2-core machine. "
              "ORT profile, ms per run at 1 thread, by conv kind and top op types:", "",
              "| | " + " | ".join(prof) + " |", "|---|" + "---|" * len(prof)]
    kinds = sorted({k for p in prof.values() for k in p["by_kind"]})
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{p['by_kind'].get(kind, 0):.2f}" for p in prof.values()) + " |")
    ops = []
    for p in prof.values():
        ops += [o for o in list(p["by_op"])[:6] if o not in ops]
    for op in ops:
        lines.append(f"| op {op} | " + " | ".join(f"{p['by_op'].get(op, 0):.2f}" for p in prof.values()) + " |")
    lines.append("| total | " + " | ".join(f"{sum(p['by_op'].values()):.2f}" for p in prof.values()) + " |")
    return "\n".join(lines) + "\n\n" + notes(result)


if __name__ == "__main__":
    main()
