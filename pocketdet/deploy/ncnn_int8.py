"""ncnn int8: calibrate a pocketdet ncnn export on real photos and write int8 `.ncnn.param/.bin`.

ncnn's own tools for this (`ncnn2table`, `ncnn2int8`, in tools/quantize of ncnn's git tree) are not in the
source distribution on PyPI (the sdist ships src/, python/, cmake/ and glslang/ only) and Debian bookworm has
no ncnn package, so they cannot be built from a registry source here. This module does their two steps on the
files' documented formats, checked against the ncnn release the wheel runs (src/layer/*.cpp `load_model`):

1. calibration (ncnn2table): run the fp32 net with the `ncnn` wheel on N photos, through the same
   pre-processing as `NcnnDetector` (Cascade R-CNN: also its stage-head net on the RoI features of those
   photos), and set each quantized layer's input scale to 127 / T: T = max |input| (`method="max"`, the
   default: it kept more AP than KL on the fitted SSDLite, docs/deploy.md) or the KL-divergence threshold of
   the histogram of nonzero |input| (`method="kl"`, 2048 bins -> 128 levels, ncnn2table's method).
2. conversion (ncnn2int8): Convolution, ConvolutionDepthWise and InnerProduct weights become int8 with a
   scale per output channel (per group for depthwise), 127 / max|w|; the bin gets the int8 weights (tag
   0x000D4B38), the fp32 bias, the weight scales and the input scale; the param line gets `8=` (int8_scale_term:
   2 for Convolution/InnerProduct, 1 for depthwise). Outputs stay fp32 (no requantize), so every other layer,
   decoding included, runs as before.

`skip_types` keeps layer types in fp32 (e.g. ConvolutionDepthWise when its int8 kernel is slower on a CPU).
Gemm layers (Cascade R-CNN's stage heads) are stepped over and stay fp32.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .mobile import PARAM_SUFFIX, heads_paths, ncnn_paths
from .runtime import ModelFileError

QUANTIZABLE = {"Convolution": 2, "ConvolutionDepthWise": 1, "InnerProduct": 2}  # type -> int8_scale_term
# param ids of (bias_term, weight_data_size) per type; int8_scale_term is id 8 in all three
SIZE_IDS = {"Convolution": (5, 6), "ConvolutionDepthWise": (5, 6), "InnerProduct": (1, 2)}
# ncnn layer types that carry weights which this converter does not walk: refused rather than mis-read
UNSUPPORTED_WEIGHTED = {"BatchNorm", "Bias", "Scale", "PReLU", "Deconvolution", "DeconvolutionDepthWise",
                        "Convolution1D", "Convolution3D", "ConvolutionDepthWise1D", "ConvolutionDepthWise3D",
                        "Deconvolution1D", "Deconvolution3D", "DeconvolutionDepthWise1D", "DeconvolutionDepthWise3D",
                        "DeformableConv2D", "Embed", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "RNN",
                        "LSTM", "GRU", "MultiHeadAttention", "Normalize", "Quantize", "Dequantize",
                        "Requantize"}
INT8_TAG = 0x000D4B38
FP32_TAG = 0
HIST_BINS, TARGET_BINS = 2048, 128


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, str]  # param id (as written, e.g. "0", "-23303") -> raw value text
    chunks: list[tuple[str, bytes]] = field(default_factory=list)  # ("flagged" | "raw", bytes) in bin order

    def pint(self, key: int, default: int = 0) -> int:
        return int(self.params.get(str(key), default))


def read_param(path: Path) -> tuple[str, list[Layer]]:
    lines = path.read_text().split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise ModelFileError(f"{path}: not a text ncnn param file (magic 7767517 missing)")
    layers = []
    for ln in lines[2:]:
        tok = ln.split()
        if not tok:
            continue
        n_in, n_out = int(tok[2]), int(tok[3])
        blobs = tok[4:4 + n_in + n_out]
        params = dict(t.split("=", 1) for t in tok[4 + n_in + n_out:])
        layers.append(Layer(tok[0], tok[1], blobs[:n_in], blobs[n_in:], params))
    return lines[1], layers


def _take(data: bytes, pos: int, n: int, path: Path, layer: Layer) -> tuple[bytes, int]:
    if pos + n > len(data):
        raise ModelFileError(f"{path}: truncated at layer {layer.name} ({layer.type})")
    return data[pos:pos + n], pos + n


def read_weights(bin_path: Path, layers: list[Layer]) -> None:
    """Split the bin into each layer's chunks (ModelBin::load order); every weight must be fp32."""
    data = bin_path.read_bytes()
    pos = 0
    for ly in layers:
        if ly.type in UNSUPPORTED_WEIGHTED:
            raise ModelFileError(f"{bin_path}: layer {ly.name} of type {ly.type} is not handled by the int8 converter")
        if ly.type in QUANTIZABLE:
            if ly.pint(8):
                raise ModelFileError(f"{bin_path}: layer {ly.name} is already int8")
            if ly.type != "InnerProduct" and ly.pint(19):  # dynamic weight: no weights in the bin
                continue
            flag, pos = _take(data, pos, 4, bin_path, ly)
            if int.from_bytes(flag, "little") != FP32_TAG:
                raise ModelFileError(f"{bin_path}: layer {ly.name} has non-fp32 weights (export with fp32 weights)")
            bias_id, size_id = SIZE_IDS[ly.type]
            w, pos = _take(data, pos, 4 * ly.pint(size_id), bin_path, ly)
            ly.chunks.append(("flagged", w))
            if ly.pint(bias_id):
                b, pos = _take(data, pos, 4 * ly.pint(0), bin_path, ly)
                ly.chunks.append(("raw", b))
        elif ly.type == "Gemm":  # constant operands (Cascade's stage heads, dynamic RoI count): kept fp32
            if ly.pint(18):  # quantize_term: int8 or block-quantized weights
                raise ModelFileError(f"{bin_path}: Gemm {ly.name} is quantized already")
            m, n, k = ly.pint(7), ly.pint(8), ly.pint(9)
            c_size = {0: 1, 1: m, 2: m, 3: n * m, 4: n}.get(ly.pint(10), 0) if ly.pint(6) else 0
            for size in (m * k if ly.pint(4) else 0, n * k if ly.pint(5) else 0, c_size):
                if size:
                    flag, pos = _take(data, pos, 4, bin_path, ly)
                    if int.from_bytes(flag, "little") != FP32_TAG:
                        raise ModelFileError(f"{bin_path}: Gemm {ly.name} has non-fp32 constants")
                    b, pos = _take(data, pos, 4 * size, bin_path, ly)
                    ly.chunks.append(("flagged", b))
        elif ly.type == "MemoryData":
            dims = [ly.pint(k) for k in (0, 1, 11, 2)]  # w, h, d, c
            n = int(np.prod([d for d in dims if d])) if any(dims) else 0
            if n and ly.pint(21, 1) == 0:
                raise ModelFileError(f"{bin_path}: MemoryData {ly.name} with flagged storage is not handled")
            if n:
                b, pos = _take(data, pos, 4 * n, bin_path, ly)
                ly.chunks.append(("raw", b))
    if pos != len(data):
        raise ModelFileError(f"{bin_path}: {len(data) - pos} bytes left after the last layer (unknown weighted layer?)")


def _input_deps(layers: list[Layer]) -> dict[str, frozenset]:
    """blob -> the Input blobs it is computed from (to extract only what a partial feed can compute)."""
    deps: dict[str, frozenset] = {}
    for ly in layers:
        if ly.type == "Input":
            for t in ly.tops:
                deps[t] = frozenset([t])
            continue
        d = frozenset().union(*[deps.get(b, frozenset()) for b in ly.bottoms])
        for t in ly.tops:
            deps[t] = d
    return deps


class BlobStats:
    """Two-pass statistics of the bottom blobs of one net's quantized layers: max |x|, then |x| histograms."""

    def __init__(self, ncnn, param_path: Path, bin_path: Path, layers: list[Layer], targets: list[Layer]):
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_fp16_storage = opt.use_fp16_arithmetic = opt.use_fp16_packed = opt.use_bf16_storage = False
        opt.use_vulkan_compute = False
        opt.lightmode = False  # keep every blob of a run: many are extracted from one extractor
        opt.num_threads = 1
        self.net.load_param(str(param_path))
        self.net.load_model(str(bin_path))
        self.ncnn = ncnn
        self.deps = _input_deps(layers)
        self.blobs = sorted({ly.bottoms[0] for ly in targets})
        self.absmax = dict.fromkeys(self.blobs, 0.0)
        self.hist = {b: np.zeros(HIST_BINS, np.float64) for b in self.blobs}
        self.pass_ = 1

    def observe(self, feeds: dict[str, np.ndarray]) -> None:
        ex = self.net.create_extractor()
        keep = [np.ascontiguousarray(v, dtype=np.float32) for v in feeds.values()]  # Mats borrow these
        for name, arr in zip(feeds, keep):
            ex.input(name, self.ncnn.Mat(arr))
        fed = frozenset(feeds)
        for blob in self.blobs:
            if not self.deps.get(blob, frozenset()) <= fed or not self.deps.get(blob):
                continue
            ret, mat = ex.extract(blob)
            if ret != 0:
                raise RuntimeError(f"ncnn failed to compute blob {blob} during calibration ({ret})")
            a = np.abs(np.array(mat, dtype=np.float32)).ravel()
            if self.pass_ == 1:
                self.absmax[blob] = max(self.absmax[blob], float(a.max(initial=0.0)))
            elif self.absmax[blob] > 0:
                # exact zeros (ReLU's half of the values) are exact in int8 too: left out, they would
                # dominate the distribution and pull the KL threshold far down (measured: 10x the error)
                h, _ = np.histogram(a[a > 0], bins=HIST_BINS, range=(0.0, self.absmax[blob]))
                self.hist[blob] += h

    def scales(self, method: str = "kl") -> dict[str, float]:
        out = {}
        for b in self.blobs:
            if method == "max":
                t = self.absmax[b]
            else:
                t = kl_threshold(self.hist[b]) * self.absmax[b] / HIST_BINS if self.absmax[b] > 0 else 0.0
            out[b] = 127.0 / t if t > 0 else 1.0
        return out


def _kl(hist: np.ndarray, i: int) -> float:
    """KL(P||Q): P = the first i bins with the tail folded into bin i-1, Q = P merged into 128 levels and
    spread back evenly over each level's non-empty bins."""
    p = hist[:i].copy()
    p[-1] += hist[i:].sum()
    edges = (np.arange(TARGET_BINS + 1) * i) // TARGET_BINS
    starts = edges[:-1][edges[:-1] < edges[1:]]
    nonzero = hist[:i] > 0
    sums = np.add.reduceat(hist[:i], starts)
    counts = np.add.reduceat(nonzero.astype(np.float64), starts)
    lens = np.diff(np.append(starts, i))
    level_value = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    q = np.repeat(level_value, lens) * nonzero
    ps, qs = p.sum(), q.sum()
    if ps == 0 or qs == 0:
        return np.inf
    p, q = p / ps, q / qs
    m = p > 0
    q = np.maximum(q, 1e-12)  # P>0 where Q=0 (the folded tail): a large, finite penalty
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def kl_threshold(hist: np.ndarray) -> float:
    """Bin count i (128..2048) whose clipped distribution loses least in 128 levels; threshold = i + 0.5 bins.
    Coarse search in steps of 16, then every i around the best (the curve is smooth at that scale)."""
    if hist.sum() == 0:
        return 0.0
    coarse = range(TARGET_BINS, HIST_BINS + 1, 16)
    best = min(coarse, key=lambda i: _kl(hist, i))
    fine = range(max(TARGET_BINS, best - 16), min(HIST_BINS, best + 16) + 1)
    return min(fine, key=lambda i: _kl(hist, i)) + 0.5


def quantize_weights(w: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """fp32 weights -> (int8 weights, float32 scale per row): round half away from zero, as ncnn's float2int8."""
    w = w.reshape(rows, -1)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, 127.0 / np.where(amax > 0, amax, 1.0), 1.0).astype(np.float32)
    q = w * scale[:, None]
    q = np.clip(np.sign(q) * np.floor(np.abs(q) + 0.5), -127, 127).astype(np.int8)
    return q.ravel(), scale


def write_int8(param_path: Path, bin_path: Path, header: str, layers: list[Layer], blob_scales: dict[str, float],
               skip_types: tuple[str, ...], int8_weights: bool = True) -> int:
    """Write the int8 param/bin; returns the number of quantized layers. int8_weights=False keeps the fp32
    weights beside the scales (ncnn then quantizes them itself at load time: a reference for the tests)."""
    lines, out, n = ["7767517", header], bytearray(), 0
    for ly in layers:
        quant = ly.type in QUANTIZABLE and ly.type not in skip_types and ly.chunks and ly.bottoms[0] in blob_scales
        params = dict(ly.params)
        if quant:
            term = QUANTIZABLE[ly.type]
            params["8"] = str(term)
            rows = ly.pint(7, 1) if ly.type == "ConvolutionDepthWise" else ly.pint(0)
            q, wscale = quantize_weights(np.frombuffer(ly.chunks[0][1], np.float32), rows)
            if int8_weights:
                out += INT8_TAG.to_bytes(4, "little") + q.tobytes() + bytes(-len(q) % 4)
            else:
                out += FP32_TAG.to_bytes(4, "little") + ly.chunks[0][1]
            for _kind, raw in ly.chunks[1:]:  # bias
                out += raw
            out += wscale.tobytes() + np.float32(blob_scales[ly.bottoms[0]]).tobytes()
            n += 1
        else:
            for kind, raw in ly.chunks:
                out += (FP32_TAG.to_bytes(4, "little") if kind == "flagged" else b"") + raw
        blobs = " ".join(ly.bottoms + ly.tops)
        ps = " ".join(f"{k}={v}" for k, v in params.items())
        lines.append(f"{ly.type:<24} {ly.name:<24} {len(ly.bottoms)} {len(ly.tops)} {blobs} {ps}".rstrip())
    param_path.write_text("\n".join(lines) + "\n")
    bin_path.write_bytes(bytes(out))
    return n


def int8_output_path(path) -> Path:
    """Default int8 name: `foo.ncnn.param` -> `foo.int8.ncnn.param`."""
    param, _, _ = ncnn_paths(path)
    return param.with_name(param.name[: -len(PARAM_SUFFIX)] + ".int8" + PARAM_SUFFIX)


def quantize_ncnn(model_path, images: list, output=None, *, skip_types: tuple[str, ...] = (),
                  progress=None, int8_weights: bool = True, method: str = "max") -> dict:
    """Calibrate the fp32 ncnn export `model_path` on `images` (paths or RGB arrays) and write the int8 export
    (default `NAME.int8.ncnn.param/.bin/.json`; Cascade R-CNN: also `NAME.int8.heads.ncnn.param/.bin`).
    Returns a summary dict."""
    import ncnn

    from .mobile import NcnnDetector

    if not images:
        raise ValueError("ncnn int8 calibration needs at least one image")
    bad = [t for t in skip_types if t not in QUANTIZABLE]
    if bad:
        raise ValueError(f"skip_types: {bad} are not quantized layer types ({', '.join(QUANTIZABLE)})")
    det = NcnnDetector(model_path, threads=1)
    param_path, bin_path, meta_path = ncnn_paths(model_path)
    out_param, out_bin, out_meta = ncnn_paths(output or int8_output_path(model_path))
    nets = {"dense": (param_path, bin_path, out_param, out_bin)}
    if det.heads_net is not None:
        hp, hb = param_path.with_name(det.meta["ncnn_heads"]["param"]), param_path.with_name(det.meta["ncnn_heads"]["bin"])
        nets["heads"] = (hp, hb, *heads_paths(out_param))
    parsed, stats = {}, {}
    for key, (p, b, _, _) in nets.items():
        header, layers = read_param(p)
        read_weights(b, layers)
        targets = [ly for ly in layers if ly.type in QUANTIZABLE and ly.type not in skip_types and ly.chunks]
        parsed[key] = (header, layers)
        stats[key] = BlobStats(ncnn, p, b, layers, targets)

    # run the detector as deployed; record what each net is fed
    dense_forward, run_head = det.forward, det.run_head
    in_blob = det.meta["ncnn"]["input_blob"]

    def forward(x):
        stats["dense"].observe({in_blob: x[0]})
        return dense_forward(x)

    def head(k, x):
        stats["heads"].observe({det._head_in[k]: x})
        return run_head(k, x)

    det.forward = forward
    if "heads" in stats:
        det.run_head = head
    for pass_ in (1, 2):
        for s in stats.values():
            s.pass_ = pass_
        for i, img in enumerate(images):
            det.predict(img)
            if progress:
                progress(f"calibration pass {pass_}/2: image {i + 1}/{len(images)}")
    quantized = {}
    for key, (_, _, op, ob) in nets.items():
        header, layers = parsed[key]
        quantized[key] = write_int8(op, ob, header, layers, stats[key].scales(method), skip_types, int8_weights)
    meta = json.loads(meta_path.read_text())
    info = {"calibration_images": len(images), "method": method, "fp32_layer_types": list(skip_types),
            "quantized_layers": quantized}
    meta["ncnn"] = dict(meta["ncnn"], int8=info)
    if "ncnn_heads" in meta:
        hp, hb = heads_paths(out_param)
        meta["ncnn_heads"] = dict(meta["ncnn_heads"], param=hp.name, bin=hb.name)
    out_meta.write_text(json.dumps(meta))
    return {"param": str(out_param), "bin": str(out_bin), "json": str(out_meta), **info,
            "bytes_fp32": sum(Path(v[1]).stat().st_size for v in nets.values()),
            "bytes_int8": sum(Path(v[3]).stat().st_size for v in nets.values())}


