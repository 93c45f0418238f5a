"""ncnn: the mobile runtime (chosen by measurement over ExecuTorch, see docs/deploy.md).

Export goes torch -> TorchScript trace -> pnnx -> ncnn `.ncnn.param` + `.ncnn.bin`, with fp32 weights
(pnnx's default fp16 weights cost 1e-3..4e-2 of output error). ncnn files carry no metadata, so the same
JSON that an ONNX export keeps in `metadata_props` is written beside them as `.ncnn.json`.

Cascade R-CNN exports a second net (`NAME.heads.ncnn.param/.bin`: the cascade stages' FC heads) and runs
its multi-scale RoIAlign on the host (see `export_ncnn`).

`NcnnDetector` runs the files from Python with the `ncnn` wheel and the same numpy pre/post-processing as
the ONNX runtime; like runtime.py it imports neither torch nor `pocketdet.models`. Install the optional
extra: `pip install pocketdet[mobile]` (ncnn for running, pnnx for exporting).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .runtime import BaseDetector, ModelFileError, parse_metadata

PARAM_SUFFIX, BIN_SUFFIX, META_SUFFIX = ".ncnn.param", ".ncnn.bin", ".ncnn.json"


def ncnn_paths(path) -> tuple[Path, Path, Path]:
    """`foo`, `foo.ncnn`, `foo.ncnn.param` or `foo.ncnn.bin` -> (param, bin, json) paths of model `foo`."""
    p = Path(path)
    name = p.name
    for suffix in (PARAM_SUFFIX, BIN_SUFFIX, META_SUFFIX, ".ncnn"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = p.with_name(name)
    return (stem.with_name(name + PARAM_SUFFIX), stem.with_name(name + BIN_SUFFIX),
            stem.with_name(name + META_SUFFIX))


def _pnnx_convert(module, example: tuple, inputshape: str, param_path: Path, bin_path: Path, fp16: bool,
                  what: str, inputshape2: str | None = None) -> None:
    """Trace `module` on `example` and convert it with pnnx; `inputshape2` (a second set of shapes) tells
    pnnx which dimensions are dynamic. Side files go to a temporary folder."""
    import subprocess
    import tempfile
    import warnings

    import pnnx
    import torch

    with tempfile.TemporaryDirectory(prefix="pocketdet-pnnx-") as tmp:
        pt = Path(tmp) / "model.pt"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings on constant shapes
            torch.jit.trace(module, example, check_trace=False).save(str(pt))
        side = {k: str(Path(tmp) / f"model{k}") for k in (".pnnx.param", ".pnnx.bin", "_pnnx.py", ".pnnx.onnx",
                                                            "_ncnn.py")}
        cmd = [pnnx.EXEC_PATH, str(pt), f"inputshape={inputshape}", "device=cpu", f"fp16={int(fp16)}",
               f"ncnnparam={param_path}", f"ncnnbin={bin_path}", f"pnnxparam={side['.pnnx.param']}",
               f"pnnxbin={side['.pnnx.bin']}", f"pnnxpy={side['_pnnx.py']}", f"pnnxonnx={side['.pnnx.onnx']}",
               f"ncnnpy={side['_ncnn.py']}"]
        if inputshape2:
            cmd.append(f"inputshape2={inputshape2}")
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not param_path.is_file():
            raise RuntimeError(f"pnnx failed to convert {what} to {param_path} (exit {res.returncode}):\n"
                               + (res.stdout + res.stderr)[-2000:])


def _shape(t) -> str:
    return "[" + ",".join(str(int(d)) for d in t.shape) + "]f32"


def heads_paths(param_path: Path) -> tuple[Path, Path]:
    """Files of a two-part export's second ncnn net (Cascade R-CNN's stage heads), beside the first."""
    stem = param_path.name[: -len(PARAM_SUFFIX)]
    return (param_path.with_name(stem + ".heads" + PARAM_SUFFIX), param_path.with_name(stem + ".heads" + BIN_SUFFIX))


def export_ncnn(model, output, *, decode_in_graph: bool = True, name: str | None = None,
                fp16: bool = False) -> Path:
    """Write `model` as ncnn files named after `output` (see `ncnn_paths`); returns the .ncnn.param path.

    Cascade R-CNN: the dense graph with dynamic H, W, plus a second net `NAME.heads.ncnn.param/.bin` with
    the cascade stages' FC heads. Its RoI graph as a whole does not convert: pnnx leaves torchvision's
    `roi_align` and the multi-level scatter (`aten::where`, `aten::scatter`, `Tensor.index`) as unknown
    layers, and ncnn's own ROIAlign pools one RoI from one feature map per call; so the multi-scale
    RoIAlign runs on the host in numpy (`rcnn_ops.multiscale_roi_align`) between the ncnn head calls."""
    try:
        import pnnx  # noqa: F401
    except ImportError:
        raise ImportError("ncnn export needs pnnx: pip install 'pocketdet[mobile]'") from None
    import torch

    from .export import model_metadata
    from .graphs import graph_spec

    param_path, bin_path, meta_path = ncnn_paths(output)
    param_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu().float()
    spec = graph_spec(model, decode_in_graph)
    two_part = "parts" in spec.arch_meta
    meta = model_metadata(model, spec, name)
    if two_part:
        from .cascade_export import CascadeHeadsGraph, example_input

        dummy = example_input(model)  # H != W, and a second shape with them swapped: both dims dynamic
        swapped = dummy.transpose(2, 3)
        _pnnx_convert(spec.module, (dummy,), _shape(dummy), param_path, bin_path, fp16, model.arch,
                      inputshape2=_shape(swapped))
        heads = CascadeHeadsGraph(model).eval()
        n_in = model.roi_heads.stages[0].fc6.in_features
        xs = tuple(torch.rand(5, n_in, generator=torch.Generator().manual_seed(k)) for k in range(len(heads.stages)))
        hp, hb = heads_paths(param_path)
        _pnnx_convert(heads, xs, ",".join(_shape(x) for x in xs), hp, hb, fp16, f"{model.arch} stage heads",
                      inputshape2=",".join(f"[7,{n_in}]f32" for _ in xs))  # dynamic number of RoIs
        meta["ncnn_heads"] = {"param": hp.name, "bin": hb.name,
                              "input_blobs": [f"in{k}" for k in range(len(xs))],
                              "output_blobs": [[f"out{2 * k}", f"out{2 * k + 1}"] for k in range(len(xs))]}
    else:
        s = model.input_size
        dummy = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
        _pnnx_convert(spec.module, (dummy,), f"[1,3,{s},{s}]f32", param_path, bin_path, fp16, model.arch)
    # pnnx names the blobs in0 / out0, out1, ... in the order of the traced outputs
    meta["ncnn"] = {"input_blob": "in0", "output_blobs": [f"out{i}" for i in range(len(spec.output_names))],
                    "fp16_weights": fp16}
    meta_path.write_text(json.dumps(meta))
    return param_path


class NcnnDetector(BaseDetector):
    """ncnn backend with the `Detector` API. `threads`: ncnn worker threads (None: ncnn's default, all
    cores). ncnn's fp16/bf16 storage is switched off so that outputs stay fp32 (it would also break the
    parity check on x86, where ncnn enables fp16 storage when the CPU has F16C)."""

    def __init__(self, path, threads: int | None = None, exact_resize: bool = True):
        try:
            import ncnn
        except ImportError:
            raise ImportError("NcnnDetector needs the ncnn wheel: pip install 'pocketdet[mobile]'") from None
        param_path, bin_path, meta_path = ncnn_paths(path)
        for p in (param_path, bin_path, meta_path):
            if not p.is_file():
                raise FileNotFoundError(f"ncnn model file not found: {p}")
        try:
            text = meta_path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ModelFileError(f"{meta_path}: cannot read pocketdet metadata ({e})") from None
        meta = parse_metadata(text, str(meta_path))
        if "ncnn" not in meta:
            raise ModelFileError(f"{meta_path}: metadata lacks the 'ncnn' blob names")
        super().__init__(meta, str(param_path), exact_resize)
        self._ncnn = ncnn
        self.threads = threads
        self.net = self._load_net(param_path, bin_path)
        self._in_blob = meta["ncnn"]["input_blob"]
        self._out_blobs = list(zip(meta["output_names"], meta["ncnn"]["output_blobs"]))
        self.heads_net = None
        if "ncnn_heads" in meta:  # two-part export (Cascade R-CNN): the stage heads, RoIAlign on the host
            heads = meta["ncnn_heads"]
            hp, hb = param_path.with_name(heads["param"]), param_path.with_name(heads["bin"])
            for p in (hp, hb):
                if not p.is_file():
                    raise FileNotFoundError(f"ncnn model file not found: {p} (named in {meta_path})")
            self.heads_net = self._load_net(hp, hb)
            self._head_in = list(heads["input_blobs"])
            self._head_out = [tuple(o) for o in heads["output_blobs"]]

    def _load_net(self, param_path: Path, bin_path: Path):
        net = self._ncnn.Net()
        opt = net.opt
        opt.use_fp16_storage = opt.use_fp16_arithmetic = opt.use_fp16_packed = False
        opt.use_bf16_storage = False
        opt.use_vulkan_compute = False
        if self.threads is not None:
            opt.num_threads = int(self.threads)
        if net.load_param(str(param_path)) != 0:
            raise ModelFileError(f"{param_path}: ncnn cannot parse this param file")
        if net.load_model(str(bin_path)) != 0:
            raise ModelFileError(f"{bin_path}: ncnn cannot load these weights")
        return net

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if x.shape[0] != 1:
            raise ValueError(f"ncnn runs batch 1, got input of shape {x.shape}")
        chw = np.ascontiguousarray(x[0], dtype=np.float32)  # ncnn.Mat borrows this buffer: keep it alive
        ex = self.net.create_extractor()
        ex.input(self._in_blob, self._ncnn.Mat(chw))
        out = {}
        for name, blob in self._out_blobs:
            ret, mat = ex.extract(blob)
            if ret != 0:
                raise RuntimeError(f"{self.source}: ncnn failed to compute blob {blob} ({ret})")
            out[name] = np.array(mat)[None]  # ncnn drops the batch dimension
        return out

    def run_head(self, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cascade stage k's FC head on pooled RoI features [R, C*7*7] -> (cls logits, deltas)."""
        x = np.ascontiguousarray(x, dtype=np.float32)  # ncnn.Mat borrows this buffer: keep it alive
        ex = self.heads_net.create_extractor()
        ex.input(self._head_in[k], self._ncnn.Mat(x))
        outs = []
        for blob in self._head_out[k]:
            ret, mat = ex.extract(blob)
            if ret != 0:
                raise RuntimeError(f"{self.source}: ncnn failed to compute stage {k} blob {blob} ({ret})")
            outs.append(np.array(mat).reshape(len(x), -1))
        return outs[0], outs[1]

    def run_part(self, part: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if part != "roi" or self.heads_net is None:
            return super().run_part(part, feeds)
        from .rcnn_ops import cascade_stages

        am = self.meta["arch_meta"]
        names = am["roi_levels"]
        levels = [feeds[f"roi_{n}"] for n in names]
        scores, boxes = cascade_stages(levels, names, feeds["rois"], feeds["image_info"], self.run_head, am)
        return {"scores": scores, "boxes": boxes}
