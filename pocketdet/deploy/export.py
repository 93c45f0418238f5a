"""Export a pocketdet model to ONNX (with the metadata the torch-free runtime needs) and verify it.

Graph contract (every arch): one input `images`, float32 [1,3,S,S] RGB in 0..1, already resized to the
model's input size; mean/std normalisation happens *inside* the graph (a Sub and a Div: ~0.1 ms), so a
deployment cannot get it wrong and the runtime's pre-processing is only "resize, /255".
The outputs are whatever the arch's graph wrapper returns (`graphs.GRAPH_WRAPPERS[arch]`); the runtime's
numpy post-processing for the same arch (`postprocess.POSTPROCESSORS[arch]`) consumes them.

NMS is *not* in the graph: measured on this machine (docs/deploy.md), a TopK + NonMaxSuppression graph
in ORT costs 3.5x our numpy NMS in the random-weights worst case (80 classes x 400 candidates) and 40x
for a trained-like model, and torchvision's NMS-in-graph export costs 363 ms (shared notes).

Exporter: the classic TorchScript-based `torch.onnx.export(..., dynamo=False)`. With torch 2.14.1 both
exporters produce a correct graph for SSDLite, but the dynamo exporter takes ~13 s per export against
~1 s (it re-traces with torch.export and runs onnxscript's optimiser), which matters for tests and the
export-then-verify CLI; the classic one also gives `dynamic_axes` for an optional dynamic batch.
It emits a DeprecationWarning, which we silence here.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import npops
from .graphs import GraphSpec, graph_spec
from .runtime import FORMAT_VERSION, METADATA_KEY, BaseDetector, Detector

DEFAULT_OPSET = 17


class ExportVerificationError(RuntimeError):
    """The exported model does not reproduce the torch model; the message says where."""


# -- metadata ---------------------------------------------------------------------------------------------
def model_metadata(model, spec: GraphSpec, name: str | None = None) -> dict:
    from pocketdet import __version__

    return {
        "format_version": FORMAT_VERSION,
        "pocketdet_version": __version__,
        "arch": model.arch,
        "name": name or "",
        "class_names": list(model.class_names),
        "input_size": int(model.input_size),
        "input_name": "images",
        "input_format": spec.arch_meta.get("input_format", "float32 [N,3,S,S] RGB in 0..1, resized (bilinear, "
                                                          "antialias); mean/std applied in-graph"),
        "mean": [float(v) for v in model.pixel_mean.flatten()],
        "std": [float(v) for v in model.pixel_std.flatten()],
        "output_names": spec.output_names,
        "postprocess_cfg": dict(model.postprocess_cfg),
        "arch_meta": spec.arch_meta,
    }


# -- ONNX --------------------------------------------------------------------------------------------------
def export_onnx(model, path, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
                decode_in_graph: bool = True, name: str | None = None) -> Path:
    """Write `model` (eval mode, CPU, fp32) to `path` as ONNX with pocketdet metadata; returns the path.
    `decode_in_graph`: softmax + box decoding inside the graph (faster end-to-end, docs/deploy.md) or
    raw deltas/logits out with the priors stored in the metadata."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu().float()
    spec = graph_spec(model, decode_in_graph)
    if spec.onnx_builder is not None:
        if dynamic_batch:
            raise ValueError(f"{model.arch} exports run one image at a time: dynamic_batch is not supported")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pocketdet-onnx-") as tmp:
            proto = spec.onnx_builder(model, opset, tmp)
    else:
        s = model.input_size
        dummy = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
        axes = None
        if dynamic_batch:
            axes = {"images": {0: "batch"}, **{n: {0: "batch"} for n in spec.output_names}}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation + tracer warnings on constant shapes
            torch.onnx.export(spec.module, (dummy,), str(path), opset_version=opset, dynamo=False,
                              input_names=["images"], output_names=spec.output_names, dynamic_axes=axes,
                              do_constant_folding=True)
        proto = onnx.load(str(path))
    meta = model_metadata(model, spec, name)
    meta["dynamic_batch"] = dynamic_batch
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    proto.producer_name = "pocketdet"
    proto.doc_string = " ".join(p for p in ("pocketdet", meta["arch"], meta["name"], spec.doc) if p)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


# -- verification ------------------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    path: str
    images: int = 0
    raw_max_abs_err: dict = field(default_factory=dict)   # output name -> max |torch - runtime|
    detections: int = 0                                   # torch detections over all images
    matched: int = 0                                      # same label, box and score within tolerance
    tie_exempt: int = 0                                   # unmatched only because of exactly tied scores
    max_box_err_px: float = 0.0
    max_score_err: float = 0.0
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)             # checks skipped as not comparable, with the reason

    compare_detections: bool = True                      # False: raw outputs only (int8 vs float)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def weak(self) -> str | None:
        """Why the detection check proves little (None when most detections were compared): random weights
        give no detections above the threshold, or hundreds of exactly tied scores that cannot be paired."""
        if not self.compare_detections:
            return None
        if self.detections == 0:
            return ("no detections to compare: the model finds nothing on these images (random weights?), so only "
                    "the raw outputs were checked; pass a trained checkpoint or --image photos it detects on")
        if self.matched < 0.5 * self.detections:
            return (f"only {self.matched} of {self.detections} detections could be compared ({self.tie_exempt} have "
                    f"exactly tied scores, typical of random weights); the raw outputs carry the check")
        return None

    def summary(self) -> str:
        raw = ", ".join(f"{k} {v:.2e}" for k, v in self.raw_max_abs_err.items())
        s = f"{self.path}: {self.images} images, raw max abs err [{raw}]"
        if not self.compare_detections:
            s += ", detections not compared (int8 rounding moves them; raw outputs within 5% of their scale)"
        else:
            s += (f", detections {self.matched}/{self.detections} identical (box err <= {self.max_box_err_px:.2e} px, "
                  f"score err <= {self.max_score_err:.2e})")
            if self.tie_exempt:
                s += f", {self.tie_exempt} not comparable (tied scores)"
        if self.notes:
            s += f"; {len(self.notes)} note(s), first: {self.notes[0]}"
        if self.weak:
            s += f"\nWARNING: {self.weak}"
        return s


def _tied(scores: np.ndarray, i: int, keep_top_k: int) -> bool:
    """Whether detection i's score is exactly tied with another, or sits at a full keep_top_k cut:
    then torch and numpy may legitimately pick different members of the tie."""
    s = scores[i]
    return int(np.sum(np.abs(scores - s) <= 1e-7)) > 1 or (len(scores) >= keep_top_k and s <= scores.min() + 1e-7)


def compare_detections(ref: dict, got: dict, keep_top_k: int, box_tol: float, score_tol: float, report: VerifyReport,
                       where: str, box_tol_rel: float = 0.0) -> None:
    """Match every torch detection to a runtime detection with the same label, box within `box_tol` pixels
    (or `box_tol_rel` x the torch box's longer side, when larger) and score within `score_tol`
    (order-insensitive); records mismatches in `report.problems`."""
    rb, rs, rl = (np.asarray(ref[k]) for k in ("boxes", "scores", "labels"))
    gb, gs, gl = (np.asarray(got[k]) for k in ("boxes", "scores", "labels"))
    report.detections += len(rs)
    used = np.zeros(len(gs), bool)
    unmatched_ref = []
    for i in np.argsort(-rs, kind="stable"):
        cand = np.flatnonzero(~used & (gl == rl[i]) & (np.abs(gs - rs[i]) <= score_tol))
        if cand.size:
            err = np.abs(gb[cand] - rb[i]).max(axis=1)
            j = cand[np.argmin(err)]
            if err.min() <= max(box_tol, box_tol_rel * float((rb[i, 2:] - rb[i, :2]).max())):
                used[j] = True
                report.matched += 1
                report.max_box_err_px = max(report.max_box_err_px, float(err.min()))
                report.max_score_err = max(report.max_score_err, float(abs(gs[j] - rs[i])))
                continue
        unmatched_ref.append(i)
    unmatched_got = np.flatnonzero(~used)
    bad_ref = [i for i in unmatched_ref if not _tied(rs, i, keep_top_k)]
    bad_got = [j for j in unmatched_got if not _tied(gs, j, keep_top_k)]
    report.tie_exempt += len(unmatched_ref) - len(bad_ref)
    if len(rs) != len(gs):
        report.problems.append(f"{where}: torch has {len(rs)} detections, runtime {len(gs)}")
    if bad_ref or bad_got:
        i = bad_ref[0] if bad_ref else None
        detail = (f"first torch detection without a match: label {rl[i]} score {rs[i]:.6f} box {rb[i].round(2).tolist()}"
                  if i is not None else f"runtime detection without a match: label {gl[bad_got[0]]} "
                                        f"score {gs[bad_got[0]]:.6f}")
        report.problems.append(f"{where}: {len(bad_ref)} torch / {len(bad_got)} runtime detections unmatched; {detail}")


def check_raw(name: str, ref: np.ndarray, got: np.ndarray, atol: float, report: VerifyReport, where: str) -> None:
    """max |got - ref| <= atol x max(1, |ref|max), recorded under `name` in the report."""
    err = float(np.abs(got - ref).max()) if ref.size else 0.0
    report.raw_max_abs_err[name] = max(report.raw_max_abs_err.get(name, 0.0), err)
    if err > atol * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0):
        report.problems.append(f"{where}: output {name} max abs error {err:.3e} > {atol:g}")


def verify_export(model, path_or_detector, images, *, raw_atol: float = 1e-3, box_tol: float = 0.1,
                  score_tol: float = 1e-3, decode_in_graph: bool | None = None, raise_on_error: bool = True,
                  box_tol_rel: float | None = None) -> VerifyReport:
    """Run the torch model and the exported one on real images and compare.

    1. Raw graph outputs on the *same* torch-resized input: max abs error <= raw_atol x max(1, |ref|max)
       (boxes/scores are O(1); raw logits/deltas scale with the network).
    2. Full pipelines (torch: `model.predict`, runtime: `predict` with its own PIL resize and numpy NMS):
       the same detections — same labels, boxes within `box_tol` px (or `box_tol_rel` x the box's longer
       side when larger; None: the arch's `GraphSpec.box_tol_rel`), scores within `score_tol`.
    Raises ExportVerificationError (naming the file and the first mismatch) unless raise_on_error=False.
    """
    det = path_or_detector if isinstance(path_or_detector, BaseDetector) else Detector(path_or_detector)
    model = model.eval().cpu().float()
    if decode_in_graph is None:
        decode_in_graph = bool(det.meta["arch_meta"].get("decoded_in_graph", True))
    spec = graph_spec(model, decode_in_graph)
    report = VerifyReport(path=det.source)
    if spec.output_names != list(det.meta["output_names"]):
        report.problems.append(f"outputs {det.meta['output_names']} differ from the torch graph's {spec.output_names}")
    keep_top_k = int(det.postprocess_cfg.get("keep_top_k", 10 ** 9))
    for image in images:
        where = str(image) if isinstance(image, (str, Path)) else f"image {report.images}"
        rgb = npops.load_rgb(image)
        t = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
        with torch.no_grad():
            x = spec.graph_input(model, [t])
            ref_raw = [o.numpy() for o in spec.module(x)]
            ref_det = {k: v.numpy() for k, v in model([t])[0].items()}
        got_raw = det.forward(np.ascontiguousarray(x.numpy()))
        for name, r in zip(spec.output_names, ref_raw):
            g = got_raw.get(name)
            if g is None or g.shape != r.shape:
                report.problems.append(f"{where}: output {name} has shape {None if g is None else g.shape}, "
                                       f"torch {r.shape}")
                continue
            check_raw(name, r, g, raw_atol, report, where)
        if spec.extra_checks is not None:
            spec.extra_checks(model, det, x, [tuple(t.shape[-2:])], raw_atol, report, where)
        compare_detections(ref_det, det.predict(rgb), keep_top_k, box_tol, score_tol, report, where,
                           spec.box_tol_rel if box_tol_rel is None else box_tol_rel)
        report.images += 1
    if raise_on_error and not report.ok:
        raise ExportVerificationError(f"{det.source} does not reproduce the torch model:\n  "
                                      + "\n  ".join(report.problems[:10]))
    return report


# -- model loading + the CLI-facing entry point -----------------------------------------------------------
def load_model(model_or_checkpoint):
    """(model, name) from a module, a zoo name (`ssdlite_mnv3_small_320`, COCO class names, random weights)
    or a pocketdet checkpoint (`pocketdet.load`)."""
    if isinstance(model_or_checkpoint, nn.Module):
        cfg = getattr(model_or_checkpoint, "zoo_config", None)
        return model_or_checkpoint, cfg.name if cfg is not None else None
    from pocketdet.api import model_from_name_or_checkpoint

    model = model_from_name_or_checkpoint(model_or_checkpoint)
    cfg = getattr(model, "zoo_config", None)
    return model, cfg.name if cfg is not None else str(model_or_checkpoint)


def default_verify_images(n: int = 4) -> list[Path]:
    """A few real COCO photos shipped with the repo (data/coco128/images/val2017)."""
    root = Path(__file__).resolve().parents[2] / "data" / "coco128" / "images" / "val2017"
    imgs = sorted(root.glob("*.jpg"))[:n]
    if not imgs:
        raise FileNotFoundError(f"no verification images under {root}; pass images=[...]")
    return imgs


def export_model(model_or_checkpoint, output, format: str = "onnx", *, verify: bool = True, images=None,
                 opset: int = DEFAULT_OPSET, dynamic_batch: bool = False, decode_in_graph: bool = True,
                 threads: int | None = None) -> tuple[Path, VerifyReport | None]:
    """`pocketdet export MODEL --format onnx|ncnn -o OUTPUT`: export, then verify on real photos
    (fails loudly on a mismatch). Returns (path of the main file, verification report or None)."""
    model, name = load_model(model_or_checkpoint)
    model = model.eval().cpu().float()
    if format == "onnx" and not isinstance(model_or_checkpoint, nn.Module):
        # a `pocketdet quantize` checkpoint carries its int8 ONNX file (compress/quant.py): write that one
        from pocketdet.checkpoint import stored_int8_onnx

        int8 = stored_int8_onnx(model_or_checkpoint)
        if int8 is not None:
            return _write_int8(model, int8, output, verify, images, threads)
    if format == "onnx":
        path = export_onnx(model, output, opset=opset, dynamic_batch=dynamic_batch,
                           decode_in_graph=decode_in_graph, name=name)
        det = Detector(path, threads=threads) if verify else None
    elif format == "ncnn":
        from .mobile import NcnnDetector, export_ncnn

        path = export_ncnn(model, output, decode_in_graph=decode_in_graph, name=name)
        det = NcnnDetector(path, threads=threads) if verify else None
    else:
        raise ValueError(f"unknown export format {format!r} (choose onnx or ncnn)")
    report = None
    if verify:
        report = verify_export(model, det, images if images is not None else default_verify_images())
    return path, report



def _write_int8(model, onnx_bytes: bytes, output, verify: bool, images, threads) -> tuple[Path, VerifyReport | None]:
    """Write a quantized checkpoint's stored int8 ONNX; its check against the float torch model is loose
    (int8 rounding moves scores and boxes a little): every output must be finite and the mean abs error of
    the outputs must stay within 5% of their scale (for SSD: boxes in 0..1, scores in 0..1)."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_bytes)
    if not verify:
        return path, None
    det = Detector(path, threads=threads)
    spec = graph_spec(model, bool(det.meta["arch_meta"].get("decoded_in_graph", True)))
    report = VerifyReport(path=det.source, compare_detections=False)
    for image in images if images is not None else default_verify_images():
        rgb = npops.load_rgb(image)
        t = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
        with torch.no_grad():
            x = spec.graph_input(model, [t])
            ref = [o.numpy() for o in spec.module(x)]
        got = det.forward(np.ascontiguousarray(x.numpy()))
        for name, r in zip(spec.output_names, ref):
            g = got[name]
            err = float(np.abs(g - r).mean())
            report.raw_max_abs_err[name] = max(report.raw_max_abs_err.get(name, 0.0), float(np.abs(g - r).max()))
            if not np.isfinite(g).all() or err > 0.05 * max(1.0, float(np.abs(r).max())):
                report.problems.append(f"{image}: int8 output {name} mean abs error {err:.3e} vs float torch")
        report.images += 1
    if not report.ok:
        raise ExportVerificationError(f"{path} (int8) strays from the float model:\n  " + "\n  ".join(report.problems[:10]))
    return path, report
