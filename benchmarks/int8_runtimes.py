"""int8 vs fp32 latency in ONNX Runtime and OpenVINO, same graphs, same process, interleaved (1 thread).

    .venv/bin/pip install openvino   # optional: without it only ONNX Runtime is timed
    .venv/bin/python benchmarks/int8_runtimes.py [--models ssdlite_mnv3_small_320 ...] [--runs 50]

For each model (random weights made trained-like, as `pocketdet bench`): the fp32 ONNX export, PTQ int8 with
every conv quantized ("all") and with the seed's recipe (`res_conv1 se_block` float, SSDLite only), both
QDQ from `pocketdet.compress.quant.quantize_onnx` calibrated on 16 coco128 photos. OpenVINO compiles the
same files (its low-precision transformations turn QDQ pairs into int8 kernels). The exports keep box
decoding out of the graph (`decode_in_graph=False`) because OpenVINO 2026.4 rejects the decode-in-graph
SSDLite export (a Reshape shape-inference error on the priors broadcast) that ONNX Runtime runs.
Writes the `<!-- quant-runtimes:start/end -->` section of BENCHMARKS.md.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from harness import command_line, machine_line, medians_ms, parser, replace_section

from pocketdet.compress.quant import quantize_onnx  # noqa: E402
from pocketdet.config import load_config  # noqa: E402
from pocketdet.deploy import npops  # noqa: E402
from pocketdet.deploy.trained_like import calibration_images, make_trained_like  # noqa: E402
from pocketdet.deploy.export import export_onnx  # noqa: E402
from pocketdet.models import build_model  # noqa: E402

RECIPE = ("res_conv1", "se_block")


def sessions(path: Path, x: np.ndarray, ov_core) -> dict:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    out = {"onnxruntime": (lambda: s.run(None, {"images": x}))}
    if ov_core is not None:
        c = ov_core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f32"})
        req = c.create_infer_request()
        out["openvino"] = lambda: req.infer({0: x})
    return out


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", nargs="+", default=["ssdlite_mnv3_small_320", "ssdlite_mnv3_large_320",
                                                    "yolov3_mnv3_large_320"])
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        import openvino as ov
        core, ov_version = ov.Core(), ov.__version__.split("-")[0]
    except ImportError:
        core, ov_version = None, None
    calib = calibration_images()
    tmp = Path(tempfile.mkdtemp(prefix="pocketdet-int8-"))
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = make_trained_like(build_model(load_config(name).model).eval(), calib)
        fp32 = export_onnx(model, tmp / f"{name}.onnx", decode_in_graph=False)
        files = {"fp32": fp32, "int8 all convs": quantize_onnx(fp32, tmp / f"{name}.all.onnx", calib)}
        if model.arch == "ssdlite":
            files["int8 recipe"] = quantize_onnx(fp32, tmp / f"{name}.recipe.onnx", calib, not_quant=RECIPE)
        x = npops.resize_chw(npops.load_rgb(calib[0]), model.input_size)
        fns = {(kind, rt): f for kind, p in files.items() for rt, f in sessions(p, x, core).items()}
        print(f"{name}: timing {len(fns)} sessions", flush=True)
        t = medians_ms(fns, args.runs, 5)
        for (kind, rt), ms in t.items():
            rows.append((name, kind, rt, ms, ms / t[("fp32", rt)], files[kind].stat().st_size / files["fp32"].stat().st_size))
    lines = ["## int8 in ONNX Runtime and OpenVINO (`benchmarks/int8_runtimes.py`)", "",
             f"Command: `{command_line(__file__, argv)}`; {machine_line()} OpenVINO "
             f"{ov_version or 'not installed'}. 1 thread, batch 1, forward only, all sessions of a model "
             "interleaved; PTQ QDQ (per-channel int8 weights, uint8 activations).", "",
             "| model | graph | runtime | median ms | vs fp32, same runtime | file vs fp32 |", "|---|---|---|---|---|---|"]
    for name, kind, rt, ms, rel, size in rows:
        lines.append(f"| {name} | {kind} | {rt} | {ms:.1f} | {rel:.2f}x | {size:.2f}x |")
    lines += ["", "Best int8 / fp32 per model (goal <= 0.75x at 1 thread): " + "; ".join(
        f"{name} {min(r[4] for r in rows if r[0] == name and r[1] != 'fp32'):.2f}x" for name in args.models)
        + ". Dense 3x3/1x1 convs (YOLOv3's head) gain from int8 on AVX2 without VNNI; depthwise convs lose "
        "(ORT profile in the int8 section above), so depthwise-heavy SSDLite does not get faster."]
    md = "\n".join(lines)
    print(md)
    replace_section(args.md, "quant-runtimes", md)


if __name__ == "__main__":
    main()
