"""Every model form a user can hand to `val`, `predict` or `bench`, opened by one function.

    form = open_model("best.pt")            # checkpoint -> torch model
    form = open_model("ssdlite_mnv3_small_320")   # zoo name (random weights) or NAME:coco -> torch model
    form = open_model("model.onnx")         # fp32 or int8 ONNX export -> deployed `Detector` (ONNX Runtime)
    form = open_model("model.ncnn.param")   # ncnn export -> `NcnnDetector`
    out = form.predict(image)               # numpy boxes [N,4] xyxy pixels, scores [N], labels [N]

Files are told apart by content (`deploy.model_files`), so an ONNX file is run as ONNX whatever its name and
never reaches `torch.load`. Names and checkpoints go through `api.model_from_name_or_checkpoint`, the single
place where zoo names (and their published weights) resolve.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .deploy.model_files import (CHECKPOINT, EXPORT_SUFFIXES, NCNN, ONNX, check_ncnn_files, model_file_kind,
                                 ncnn_export_of)
from .deploy.mobile import NcnnDetector
from .deploy.runtime import Detector, ModelFileError

RUNTIMES = ("auto", "torch", "onnx", "ncnn")
_KIND_RUNTIME = {CHECKPOINT: "torch", ONNX: "onnx", NCNN: "ncnn"}


@dataclass
class ModelForm:
    """A model opened for inference. `runtime`: torch | onnx | ncnn. Exactly one of `model` (torch) and
    `detector` (deployed runtime) is set."""
    source: str
    runtime: str
    class_names: list[str]
    model: Any = None
    detector: Any = None

    @property
    def int8(self) -> bool:
        return bool(self.detector is not None and self.detector.meta.get("quant", {}).get("int8"))

    @property
    def label(self) -> str:
        """Short name of the format for tables: torch | onnx | onnx-int8 | ncnn."""
        return self.runtime + ("-int8" if self.int8 else "")

    def predict(self, image) -> dict:
        if self.detector is not None:
            r = self.detector.predict(image)
            return {"boxes": r["boxes"], "scores": r["scores"], "labels": r["labels"]}
        o = self.model.predict(image)[0]
        return {k: o[k].numpy() for k in ("boxes", "scores", "labels")}


def open_model(spec: str | Path, runtime: str = "auto", threads: int | None = None) -> ModelForm:
    """Open a checkpoint, zoo name, ONNX file or ncnn export. `runtime` "auto" follows the file's content;
    an explicit runtime must agree with it. Errors (ModelFileError, CheckpointError, ConfigError) name the
    file and the problem in one line."""
    if runtime not in RUNTIMES:
        raise ModelFileError(f"unknown runtime {runtime!r} (choose {' | '.join(RUNTIMES)})")
    kind = model_file_kind(spec)
    if kind is None and Path(str(spec)).suffix in EXPORT_SUFFIXES:
        raise ModelFileError(f"{spec}: model file not found")
    actual = _KIND_RUNTIME.get(kind, "torch")
    if runtime not in ("auto", actual):
        what = {CHECKPOINT: "a pocketdet checkpoint", ONNX: "an ONNX export", NCNN: "an ncnn export"}.get(
            kind, "a zoo name")
        hint = " (export it first: pocketdet export MODEL --format onnx|ncnn)" if actual == "torch" else ""
        raise ModelFileError(f"{spec}: is {what}, which runs with --runtime {actual}, not {runtime}{hint}")
    if kind == ONNX:
        det = Detector(spec, threads=threads)
        return ModelForm(str(spec), "onnx", det.class_names, detector=det)
    if kind == NCNN:
        param = ncnn_export_of(Path(spec))
        check_ncnn_files(param)
        det = NcnnDetector(param, threads=threads)
        return ModelForm(str(param), "ncnn", det.class_names, detector=det)
    if kind == CHECKPOINT and runtime == "auto":
        int8 = _stored_int8(spec, threads)  # a `pocketdet quantize` checkpoint runs as the int8 model it holds
        if int8 is not None:
            return int8
    import torch

    from .api import model_from_name_or_checkpoint

    if threads:
        torch.set_num_threads(threads)
    m = model_from_name_or_checkpoint(spec)
    return ModelForm(str(spec), "torch", list(m.class_names), model=m)


def _stored_int8(spec, threads) -> ModelForm | None:
    """The int8 ONNX model inside a quantized checkpoint, opened in `Detector` (from a temporary copy that
    is removed at exit); None for a float checkpoint. `--runtime torch` evaluates its float weights instead."""
    import atexit
    import shutil
    import tempfile

    from .checkpoint import stored_int8_onnx

    data = stored_int8_onnx(spec)
    if data is None:
        return None
    tmp = tempfile.mkdtemp(prefix="pocketdet-int8-")
    atexit.register(shutil.rmtree, tmp, True)
    path = Path(tmp) / (Path(str(spec)).stem + ".int8.onnx")
    path.write_bytes(data)
    det = Detector(path, threads=threads)
    det.source = f"{spec} (stored int8 ONNX)"
    return ModelForm(str(spec), "onnx", det.class_names, detector=det)
