"""ONNX Runtime static quantization of pocketdet ONNX exports (QDQ int8), and the not-quant patterns.

Used by `quant.py` (PTQ / QAT of single-graph models) and `quant_parts.py` (two-part Cascade R-CNN files).
Per-channel symmetric int8 weights, per-tensor asymmetric uint8 activations (ORT's U8S8 kernels, the fast pair
on x86); nodes of the export wrapper (softmax, box decoding) stay float.
"""
from __future__ import annotations

import fnmatch
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Paddle name scopes used by the mobile zoo's --not_quant_pattern (spec §3.7) -> pocketdet module regexes.
PADDLE_NOT_QUANT = {
    "res_conv1": [r"backbone\.conv\d+\.bottleneck_conv"],
    "se_block": [r"backbone\.conv\d+\.mid_se"],
}


class QuantError(ValueError):
    """Bad quantization input (pattern, data, checkpoint); the message names it."""


# -- not-quant patterns ------------------------------------------------------------------------------------
def compile_patterns(patterns) -> list[re.Pattern]:
    """Paddle scope names, globs or regexes -> compiled regexes over dotted module names."""
    out = []
    for p in patterns or []:
        if p in PADDLE_NOT_QUANT:
            out += [re.compile(r) for r in PADDLE_NOT_QUANT[p]]
        elif any(c in p for c in "*?[") and not any(c in p for c in "\\+()|^$"):
            out.append(re.compile(fnmatch.translate(p)))
        else:
            try:
                out.append(re.compile(p))
            except re.error as e:
                raise QuantError(f"not-quant pattern {p!r} is neither a Paddle scope "
                                 f"({', '.join(PADDLE_NOT_QUANT)}), a glob nor a valid regex: {e}") from None
    return out


def excluded(module_name: str, regexes: list[re.Pattern]) -> bool:
    """Whether `module_name` or one of its parents fully matches a pattern."""
    parts = module_name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(r.fullmatch(p) for r in regexes for p in prefixes)


def onnx_node_module(node_name: str) -> str:
    """`/backbone/conv2/mid_se/conv1/Conv` (the TorchScript exporter's scope name) -> `backbone.conv2.mid_se.conv1`."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def is_depthwise(node) -> bool:
    """A grouped Conv node (MobileNet's depthwise convs, SSDLite's separable predictors)."""
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)



# -- ONNX Runtime static quantization ----------------------------------------------------------------------
@dataclass
class OrtQuantOptions:
    per_channel: bool = True
    op_types: list[str] | None = None        # None: every op type ORT can quantize
    calibrate_method: str = "MinMax"         # MinMax | Entropy | Percentile
    float_depthwise: bool = False            # keep depthwise (grouped) convs fp32: see `int8_layer_policy`


def quantize_onnx(fp32_path, out_path, images, not_quant=(), input_overrides: dict | None = None,
                  opts: OrtQuantOptions | None = None, quant_meta: dict | None = None) -> Path:
    """Quantize a pocketdet fp32 ONNX export to QDQ int8 with ORT. `images`: calibration photos.
    `input_overrides`: {module name of a conv: (scale, zero point)} for that conv's input tensor (from QAT).
    Nodes whose module matches `not_quant` stay float. The pocketdet metadata is carried over, plus
    `quant` (method, patterns) so a deployment can tell an int8 file."""
    import onnx

    from pocketdet.deploy.runtime import METADATA_KEY

    images = list(images)
    if not images:
        raise QuantError("no calibration images")
    meta = json.loads({p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}[METADATA_KEY])
    if "parts" in meta.get("arch_meta", {}):
        # the merged file's optional inputs are initializers that ORT's pre-processing folds into constants;
        # two-part models are quantized part by part from the model itself (`ptq` -> `ptq_two_part`)
        raise QuantError(f"{fp32_path}: a two-part export ({meta['arch']}) cannot be quantized as one file; "
                         "quantize the model with `pocketdet quantize CKPT --method ptq` (parts quantized apart)")
    size = int(meta["input_size"])
    reader = FeedReader([{"images": resized_input(p, size)} for p in images])
    # module scopes whose own nodes (not their children's) the export wants float: PicoDet's score and
    # box-decoding tail inside its head (picodet_export.py)
    tail = set(meta.get("arch_meta", {}).get("int8_float_scopes", []))
    n_excluded = quantize_graph(fp32_path, out_path, reader, compile_patterns(not_quant), opts,
                                 _tensor_overrides if input_overrides else None, input_overrides,
                                 keep_float=tail.__contains__ if tail else None)
    q = onnx.load(str(out_path))
    meta["quant"] = {"int8": True, "format": "QDQ", "not_quant": list(not_quant), "excluded_nodes": n_excluded,
                     "calibration_images": len(images), **(quant_meta or {})}
    set_metadata(q, meta)
    onnx.save(q, str(out_path))
    return Path(out_path)


def resized_input(path, size: int) -> np.ndarray:
    from pocketdet.deploy import npops

    return npops.resize_chw(npops.load_rgb(path), size)


class FeedReader:
    """ORT CalibrationDataReader over a list of feed dicts (duck-typed: ORT only calls get_next)."""

    def __init__(self, feeds: list[dict]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def set_metadata(proto, meta: dict, doc: str | None = None) -> None:
    import onnx

    from pocketdet.deploy.runtime import METADATA_KEY

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    proto.producer_name = "pocketdet"
    if doc is not None:
        proto.doc_string = doc


def quantize_graph(src, dst, reader, regexes, opts: OrtQuantOptions | None = None, overrides_fn=None,
                    input_overrides=None, keep_float=None, op_types=None) -> int:
    """ORT static QDQ quantization of one graph file; returns how many nodes stayed float. Kept float: nodes
    at the graph's root (the export wrapper: softmax, box decoding, clamping, so scores and boxes keep full
    resolution; int8 would round scores to 1/255 and create ties in NMS), nodes whose module matches
    `regexes`, and nodes for which `keep_float(module name)` is true."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    opts = opts or OrtQuantOptions()
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # folds the exporter's Identity/Constant nodes into initializers (ORT's quantizer needs conv biases
        # as initializers) and runs ORT's basic graph fusions, as ORT recommends before quantize_static
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        exclude = [n.name for n in model.graph.node
                   if not onnx_node_module(n.name) or excluded(onnx_node_module(n.name), regexes)
                   or (keep_float is not None and keep_float(onnx_node_module(n.name)))
                   or (opts.float_depthwise and is_depthwise(n))]
        extra = {"TensorQuantOverrides": overrides_fn(model, input_overrides)} if overrides_fn else {}
        quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=opts.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=op_types or opts.op_types, nodes_to_exclude=exclude or None,
                        calibrate_method=getattr(CalibrationMethod, opts.calibrate_method), extra_options=extra)
    return len(exclude)


def _tensor_overrides(model, input_overrides: dict) -> dict:
    """conv module name -> ORT TensorQuantOverrides on that Conv node's input tensor. A tensor feeding
    several convs (an SSD level feeds its box and score predictors) gets the widest range among them."""
    ranges: dict[str, tuple[float, float]] = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        mod = onnx_node_module(node.name)
        if mod not in input_overrides:
            continue
        scale, zp = input_overrides[mod]
        lo, hi = (0 - zp) * scale, (255 - zp) * scale
        t = node.input[0]
        old = ranges.get(t)
        ranges[t] = (min(lo, old[0]), max(hi, old[1])) if old else (lo, hi)
    out = {}
    for t, (lo, hi) in ranges.items():
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # the range must hold 0 exactly (zero padding)
        scale = max((hi - lo) / 255.0, 1e-8)
        zp = int(np.clip(round(-lo / scale), 0, 255))
        out[t] = [{"scale": np.array(scale, dtype=np.float32), "zero_point": np.array(zp, dtype=np.uint8)}]
    return out


