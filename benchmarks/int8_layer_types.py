"""Which layer types pay in int8 on this CPU: fp32 vs int8 variants of every seed architecture in ORT.

    python benchmarks/int8_layer_types.py [--models ...] [--runs 30] [--threads 1]

Per model (random weights made trained-like, as `pocketdet bench`; latency does not depend on the values),
the same graph in ONNX Runtime as:
  fp32          the export `pocketdet export` writes
  int8 all      PTQ QDQ, every conv int8 (Cascade: dense convs + RoI FC layers, `compress/quant_parts.py`)
  int8 dw fp32  the same with depthwise (grouped) convs kept fp32 (`OrtQuantOptions.float_depthwise`,
                `pocketdet quantize --float-depthwise`)
  int8 recipe   SSDLite only: the seed recipe's not-quant scopes (`res_conv1 se_block`)
Forward only (the dense graph on a pre-processed photo), batch 1, all variants of a model timed round-robin
in one process so that load changes hit them alike. Writes the `int8-layers` section of BENCHMARKS.md.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from harness import command_line, machine_info, machine_line, medians_ms, parser, replace_section

from pocketdet.compress.quant import OrtQuantOptions, ptq  # noqa: E402
from pocketdet.config import load_config  # noqa: E402
from pocketdet.deploy import npops  # noqa: E402
from pocketdet.deploy.trained_like import calibration_images, make_trained_like  # noqa: E402
from pocketdet.deploy.export import export_onnx  # noqa: E402
from pocketdet.deploy.runtime import Detector  # noqa: E402
from pocketdet.models import build_model  # noqa: E402

SEED_ARCHS = ["ssdlite_mnv3_small_320", "ssdlite_mnv3_large_320", "yolov3_mnv3_large_320",
              "yolov3_mnv3_large_320_prune_fpgm", "cascade_rcnn_mnv3_large_fpn_320", "cascade_rcnn_mnv3_large_fpn_640"]
RECIPE = ["res_conv1", "se_block"]


def variants(name: str, model, tmp: Path, calib) -> dict[str, Path]:
    out = {"fp32": export_onnx(model, tmp / f"{name}.onnx", name=name)}
    choices = {"int8 all": ((), OrtQuantOptions()), "int8 dw fp32": ((), OrtQuantOptions(float_depthwise=True))}
    if model.arch == "ssdlite":
        choices["int8 recipe"] = (RECIPE, OrtQuantOptions())
    for label, (not_quant, opts) in choices.items():
        p = tmp / f"{name}.{label.replace(' ', '_')}.onnx"
        p.write_bytes(ptq(model, calib, not_quant, opts, name=name))
        out[label] = p
    return out


def measure(name: str, runs: int, threads: int, calib) -> dict[str, float]:
    torch.manual_seed(0)
    model = make_trained_like(build_model(load_config(name).model).eval(), calib)
    with tempfile.TemporaryDirectory(prefix="int8-layers-") as tmp:
        paths = variants(name, model, Path(tmp), calib)
        dets = {k: Detector(p, threads=threads) for k, p in paths.items()}
        x, _ = dets["fp32"].preprocess(npops.load_rgb(calib[0]))
        return medians_ms({k: (lambda d: lambda: d.forward(x))(d) for k, d in dets.items()}, runs, 3)


def report(results: dict, info: dict, command: str, threads: int) -> str:
    labels = ["fp32", "int8 all", "int8 dw fp32", "int8 recipe"]
    lines = ["## int8 by layer type on this CPU (`benchmarks/int8_layer_types.py`)", "",
             f"Command: `{command}`; {machine_line(info)}",
             f"Forward median ms (ORT, {threads} thread(s), batch 1), all variants of a model interleaved; "
             "ratio to fp32 in brackets. The machine was shared and loaded while measuring (see the load "
             "average): absolute ms are inflated, ratios within a row are the comparable figures.", "",
             "| model | " + " | ".join(labels) + " | best int8 / fp32 |", "|---|" + "---|" * (len(labels) + 1)]
    for name, ms in results.items():
        cells = [f"{ms[k]:.1f} ({ms[k] / ms['fp32']:.2f}x)" if k in ms else "—" for k in labels]
        best = min((k for k in ms if k != "fp32"), key=ms.get)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ms[best] / ms['fp32']:.2f}x ({best}) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", nargs="+", default=SEED_ARCHS)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-images", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    calib = calibration_images(args.calib_images)
    results = {}
    for name in args.models:
        results[name] = measure(name, args.runs, args.threads, calib)
        print(name, {k: round(v, 1) for k, v in results[name].items()}, flush=True)
    info["load_avg_end"] = machine_info().get("load_avg")
    text = report(results, info, command_line(__file__, argv), args.threads) + f"\n\nLoad average at the end: {info['load_avg_end']}."
    replace_section(args.md, "int8-layers", text)
    print(text)


if __name__ == "__main__":
    main()
