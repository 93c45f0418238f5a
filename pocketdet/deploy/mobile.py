"""ncnn: the mobile runtime (chosen by measurement over ExecuTorch, see docs/deploy.md).

Export goes torch -> TorchScript trace -> pnnx -> ncnn `.ncnn.param` + `.ncnn.bin`, with fp32 weights
(pnnx's default fp16 weights cost 1e-3..4e-2 of output error). ncnn files carry no metadata, so the same
JSON that an ONNX export keeps in `metadata_props` is written beside them as `.ncnn.json`.

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


def export_ncnn(model, output, *, decode_in_graph: bool = True, name: str | None = None,
                fp16: bool = False) -> Path:
    """Write `model` as ncnn files named after `output` (see `ncnn_paths`); returns the .ncnn.param path."""
    import subprocess
    import tempfile
    import warnings

    import torch

    try:
        import pnnx
    except ImportError:
        raise ImportError("ncnn export needs pnnx: pip install 'pocketdet[mobile]'") from None
    from .export import graph_spec, model_metadata

    param_path, bin_path, meta_path = ncnn_paths(output)
    param_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu().float()
    spec = graph_spec(model, decode_in_graph)
    s = model.input_size
    dummy = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="pocketdet-pnnx-") as tmp:
        pt = Path(tmp) / "model.pt"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings on constant shapes
            torch.jit.trace(spec.module, (dummy,), check_trace=False).save(str(pt))
        side = {k: str(Path(tmp) / f"model{k}") for k in (".pnnx.param", ".pnnx.bin", "_pnnx.py", ".pnnx.onnx",
                                                            "_ncnn.py")}
        cmd = [pnnx.EXEC_PATH, str(pt), f"inputshape=[1,3,{s},{s}]f32", "device=cpu", f"fp16={int(fp16)}",
               f"ncnnparam={param_path}", f"ncnnbin={bin_path}", f"pnnxparam={side['.pnnx.param']}",
               f"pnnxbin={side['.pnnx.bin']}", f"pnnxpy={side['_pnnx.py']}", f"pnnxonnx={side['.pnnx.onnx']}",
               f"ncnnpy={side['_ncnn.py']}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not param_path.is_file():
            raise RuntimeError(f"pnnx failed to convert {model.arch} to {param_path} (exit {res.returncode}):\n"
                               + (res.stdout + res.stderr)[-2000:])
    meta = model_metadata(model, spec, name)
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
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_fp16_storage = opt.use_fp16_arithmetic = opt.use_fp16_packed = False
        opt.use_bf16_storage = False
        opt.use_vulkan_compute = False
        if threads is not None:
            opt.num_threads = int(threads)
        self.threads = threads
        if self.net.load_param(str(param_path)) != 0:
            raise ModelFileError(f"{param_path}: ncnn cannot parse this param file")
        if self.net.load_model(str(bin_path)) != 0:
            raise ModelFileError(f"{bin_path}: ncnn cannot load these weights")
        self._ncnn = ncnn
        self._in_blob = meta["ncnn"]["input_blob"]
        self._out_blobs = list(zip(meta["output_names"], meta["ncnn"]["output_blobs"]))

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
