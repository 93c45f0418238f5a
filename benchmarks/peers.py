"""pocketdet vs torchvision's mobile detectors on this machine, in one run (batch 1, 320 input).

    .venv/bin/python benchmarks/peers.py [--threads 1 2] [--runs 50] [--md BENCHMARKS.md]

Peers (random weights, as torchvision builds them without downloads): `ssdlite320_mobilenet_v3_large` and
`fasterrcnn_mobilenet_v3_large_320_fpn`. For each: the full eager detector (transform + network + decode +
NMS), the dense graph (backbone + heads) in eager torch and in ONNX Runtime, next to pocketdet's SSDLite-
MNV3-Large and Cascade R-CNN-MNV3-Large-FPN-320 and pocketdet's torch-free `Detector.predict`.
Effective GFLOP/s = dense-graph FLOPs / latency, also as a fraction of the fp32 GEMM peak measured here.
Results go to BENCHMARKS.md between `<!-- deploy-peers:start -->` and `<!-- deploy-peers:end -->`, inside
the `deploy` section.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from harness import ROOT, command_line, machine_info, machine_line, parser, replace_section, stats_ms, time_interleaved

from pocketdet.config import load_config  # noqa: E402
from pocketdet.deploy import npops  # noqa: E402
from pocketdet.deploy.timing import gemm_peak_gflops  # noqa: E402
from pocketdet.deploy.trained_like import calibration_images, make_trained_like  # noqa: E402
from pocketdet.deploy.export import export_onnx  # noqa: E402
from pocketdet.deploy.graphs import graph_spec  # noqa: E402
from pocketdet.deploy.runtime import Detector  # noqa: E402
from pocketdet.models import build_model  # noqa: E402

PHOTO = ROOT / "data" / "coco128" / "images" / "val2017" / "000000000139.jpg"


class TvSSDDense(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        out = self.m.head(list(self.m.backbone(x).values()))
        return out["bbox_regression"], out["cls_logits"]


class TvRCNNDense(nn.Module):
    """Backbone + FPN + RPN head: what runs before the proposal-dependent RoI part."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        feats = list(self.m.backbone(x).values())
        obj, deltas = self.m.rpn.head(feats)
        return (*feats, *obj, *deltas)


class DenseOf(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        out = self.m.forward_raw(self.m.normalize(x))
        flat = []
        for o in out:
            flat.extend(o if isinstance(o, (list, tuple)) else [o])
        return tuple(flat)


def flops_of(module, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(x)
    return fc.get_total_flops() / 1e9


def ort_session(module, x, path, threads):
    import onnxruntime as ort

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    return lambda: s.run(None, {"x": xn})


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn, ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    info = machine_info()
    rgb = npops.load_rgb(PHOTO)
    img = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
    x = torch.from_numpy(npops.resize_chw(rgb, 320))
    tv_ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    tv_rcnn = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).eval()
    pd_ssd = build_model(load_config("ssdlite_mnv3_large_320").model).eval()
    pd_ssd_trained = make_trained_like(build_model(load_config("ssdlite_mnv3_large_320").model),
                                       calibration_images())
    pd_rcnn = build_model(load_config("cascade_rcnn_mnv3_large_fpn_320").model).eval()
    dense = {"tv SSDLite-MNV3-L": TvSSDDense(tv_ssd).eval(), "pocketdet SSDLite-MNV3-L": graph_spec(pd_ssd).module,
             "tv FasterRCNN-MNV3-L-320-FPN": TvRCNNDense(tv_rcnn).eval(),
             "pocketdet CascadeRCNN-MNV3-L-FPN-320": DenseOf(pd_rcnn).eval()}
    gflops = {k: flops_of(m, x) for k, m in dense.items()}
    tmp = Path(tempfile.mkdtemp(prefix="pocketdet-peers-"))
    pd_onnx = export_onnx(pd_ssd, tmp / "pd_ssd.onnx")
    pd_onnx_trained = export_onnx(pd_ssd_trained, tmp / "pd_ssd_trained.onnx")
    results, peaks = {}, {}
    for th in args.threads:
        peaks[th] = gemm_peak_gflops(th)
        torch.set_num_threads(th)
        with torch.no_grad():
            fns = {f"{k} | dense | torch eager": (lambda m: lambda: m(x))(m) for k, m in dense.items()}
            fns.update({f"{k} | dense | onnxruntime": ort_session(m, x, tmp / f"{i}_{th}.onnx", th)
                        for i, (k, m) in enumerate(dense.items())})
            det, det_t = Detector(pd_onnx, threads=th), Detector(pd_onnx_trained, threads=th)
            full = {
                "tv SSDLite-MNV3-L | full detector | torch eager": lambda: tv_ssd([img]),
                "pocketdet SSDLite-MNV3-L | full detector | torch eager": lambda: pd_ssd.predict(rgb),
                "pocketdet SSDLite-MNV3-L | Detector.predict (random init) | onnxruntime": lambda: det.predict(rgb),
                "pocketdet SSDLite-MNV3-L | Detector.predict (trained-like) | onnxruntime": lambda: det_t.predict(rgb),
                "tv FasterRCNN-MNV3-L-320-FPN | full detector | torch eager": lambda: tv_rcnn([img]),
                "pocketdet CascadeRCNN-MNV3-L-FPN-320 | full detector | torch eager": lambda: pd_rcnn.predict(rgb),
            }
            print(f"threads={th}: timing {len(fns)} dense graphs, {len(full)} full pipelines", flush=True)
            t1 = time_interleaved(fns, args.runs, args.warmup)
            t2 = time_interleaved(full, args.runs, args.warmup)
        results[th] = {k: stats_ms(v) for k, v in {**t1, **t2}.items()}
    md = render(results, gflops, peaks, info, command_line(__file__, argv))
    print(md)
    replace_section(args.md, "deploy-peers", md, parent="deploy")


def render(results, gflops, peaks, info, command: str) -> str:
    lines = [f"### pocketdet vs torchvision (`benchmarks/peers.py`)", "",
             f"Command: `{command}`; {machine_line(info)}",
             "fp32 GEMM peak measured here (torch.mm 1024^3, best run): "
             + ", ".join(f"{th} thread{'s' if th > 1 else ''} {p:.0f} GFLOP/s" for th, p in peaks.items()) + ".",
             "Random weights unless marked; batch 1; 320x320 network input; full detectors start from the "
             "decoded 640x427 photo.", "",
             "| model | what | runtime | threads | median / p90 (ms) | GFLOPs (dense) | effective GFLOP/s "
             "(% of GEMM peak) |", "|---|---|---|---|---|---|---|"]
    for th, res in results.items():
        for key, st in res.items():
            model, what, rt = key.split(" | ")
            eff = ""
            if what == "dense":
                g = gflops[model]
                rate = g / (st["median_ms"] / 1e3)
                eff = f"{rate:.1f} ({100 * rate / peaks[th]:.0f}%)"
            lines.append(f"| {model} | {what} | {rt} | {th} | {st['median_ms']:.1f} / {st['p90_ms']:.1f} | "
                         f"{gflops.get(model, float('nan')):.2f} | {eff} |")
    lines.append("")
    for th, res in results.items():
        tv_full = res["tv SSDLite-MNV3-L | full detector | torch eager"]["median_ms"]
        for tag in ("random init", "trained-like"):
            det = res[f"pocketdet SSDLite-MNV3-L | Detector.predict ({tag}) | onnxruntime"]["median_ms"]
            lines.append(f"- {th} thread(s): pocketdet `Detector.predict` SSDLite-MNV3-L ({tag}) / torchvision "
                         f"SSDLite full eager = {det:.1f} / {tv_full:.1f} ms = **{det / tv_full:.2f}x** (goal <= 0.5x)")
        for a, b in (("pocketdet SSDLite-MNV3-L", "tv SSDLite-MNV3-L"),
                     ("pocketdet CascadeRCNN-MNV3-L-FPN-320", "tv FasterRCNN-MNV3-L-320-FPN")):
            for rt in ("torch eager", "onnxruntime"):
                pa, pb = res[f"{a} | dense | {rt}"]["median_ms"], res[f"{b} | dense | {rt}"]["median_ms"]
                lines.append(f"- {th} thread(s), dense graph in {rt}: {a} / {b} = {pa:.1f} / {pb:.1f} ms = "
                             f"{pa / pb:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
