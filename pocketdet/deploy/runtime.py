"""The deployed runtime: run an exported pocketdet model with ONNX Runtime, numpy and PIL only.

    from pocketdet.deploy.runtime import Detector
    det = Detector("ssdlite.onnx", threads=1)
    out = det.predict("photo.jpg")   # {"boxes": [N,4] xyxy pixels, "scores": [N], "labels": [N], "names": [...]}

Nothing here imports torch or `pocketdet.models` (tests/test_deploy.py checks it in a fresh interpreter),
so a deployment needs only `pip install onnxruntime numpy pillow` and this package's deploy/ folder.
Everything the runtime needs to know about the model (classes, input size, thresholds, arch-specific
constants) travels inside the .onnx file as JSON in `metadata_props["pocketdet"]` (see export.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import npops
from .postprocess import POSTPROCESSORS

METADATA_KEY = "pocketdet"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "class_names", "input_size", "input_name", "output_names",
                 "postprocess_cfg", "arch_meta")


class ModelFileError(ValueError):
    """A model file is missing pieces or is not a pocketdet export; the message names the file."""


def parse_metadata(text: str, source: str) -> dict:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{source}: pocketdet metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{source}: pocketdet metadata must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelFileError(f"{source}: pocketdet metadata lacks {', '.join(missing)}")
    if meta["format_version"] > FORMAT_VERSION:
        raise ModelFileError(f"{source}: metadata format {meta['format_version']} is newer than this runtime "
                             f"understands ({FORMAT_VERSION}); upgrade pocketdet")
    if meta["arch"] not in POSTPROCESSORS:
        raise ModelFileError(f"{source}: no post-processing for arch {meta['arch']!r} in this runtime "
                             f"(known: {', '.join(sorted(POSTPROCESSORS))})")
    return meta


class BaseDetector:
    """Pre-processing, post-processing and the `predict` API shared by every runtime backend.
    A backend implements `forward(x)`: [1,3,S,S] float32 in 0..1 -> {output name: array}.

    `reduced_decode` (default True): decode large JPEGs at a reduced DCT scale and integer-reduce large
    images before the exact resize (`npops.load_for_input`: ~8x faster on 12 MP photos, slightly blurrier
    input, see BENCHMARKS.md); set it False on an instance for the full-resolution path."""

    reduced_decode = True

    def __init__(self, meta: dict, source: str, exact_resize: bool = True):
        self.meta = meta
        self.source = source
        self.arch: str = meta["arch"]
        self.class_names: list[str] = list(meta["class_names"])
        self.input_size: int = int(meta["input_size"])
        self.postprocess_cfg: dict = dict(meta["postprocess_cfg"])
        self.exact_resize = exact_resize
        self._postprocess = POSTPROCESSORS[self.arch](meta)

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run_part(self, part: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The second graph of a two-part export (Cascade R-CNN's `roi` part): feeds -> {output: array}."""
        raise NotImplementedError(f"{type(self).__name__} cannot run part {part!r} of {self.source}")

    def preprocess(self, image) -> tuple[np.ndarray, tuple[int, int]]:
        """Image -> ([1,3,S,S] float32 0..1, original (width, height)). Normalisation is in the graph.
        A JPEG file decodes at a reduced DCT scale and a large image is integer-reduced first when the input
        size allows (`npops.load_for_input`); boxes still come back in the original image's pixels.
        An arch may bring its own resize (Cascade R-CNN: aspect kept, padded: [1,3,H,W])."""
        if self.reduced_decode:
            rgb, wh = npops.load_for_input(image, self._input_wh)
        else:
            rgb = npops.load_rgb(image)
            wh = (rgb.shape[1], rgb.shape[0])
        arch_preprocess = getattr(self._postprocess, "preprocess", None)
        if arch_preprocess is not None:
            return arch_preprocess(rgb, wh), wh
        return npops.resize_chw(rgb, self.input_size, exact=self.exact_resize), wh

    def _input_wh(self, w: int, h: int) -> tuple[int, int]:
        """The size an image of (w, h) pixels is resized to for the network (square unless the arch says)."""
        arch_input_wh = getattr(self._postprocess, "input_wh", None)
        return arch_input_wh(w, h) if arch_input_wh is not None else (self.input_size, self.input_size)

    def postprocess(self, outputs: dict[str, np.ndarray], image_wh: tuple[int, int]) -> dict:
        if getattr(self._postprocess, "two_part", False):
            return self._postprocess(outputs, self.postprocess_cfg, image_wh, self.run_part)
        return self._postprocess(outputs, self.postprocess_cfg, image_wh)

    def predict(self, image, score_thresh: float | None = None) -> dict:
        """One image (path, PIL image or HxWx3 uint8 RGB array) -> numpy `boxes` [N,4] (xyxy, pixels of
        the original image as stored: EXIF orientation is not applied, see `npops`), `scores` [N],
        `labels` [N] (0-based) and `names` (class name per box).

        Thread safety: `predict`, `preprocess`, `forward` and `postprocess` keep no per-call state on the
        detector, and ONNX Runtime's `InferenceSession.run` may be called from several threads at once, so
        one Detector can serve many threads (tests/test_runtime_threads.py: 4 threads give the sequential
        results). Each call then uses `threads` intra-op threads of its own: size them together. The ncnn
        backend (`NcnnDetector`) creates one extractor per call, ncnn's documented way to share a net (not
        tested with threads here)."""
        x, wh = self.preprocess(image)
        out = self.postprocess(self.forward(x), wh)
        if score_thresh is not None:
            keep = out["scores"] >= score_thresh
            out = {k: v[keep] for k, v in out.items()}
        out["names"] = [self.class_names[i] for i in out["labels"]]
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.source!r}, arch={self.arch}, input={self.input_size}, "
                f"classes={len(self.class_names)})")


def read_onnx_metadata(session, source: str) -> dict:
    custom = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in custom:
        raise ModelFileError(f"{source}: ONNX model has no pocketdet metadata (metadata_props['{METADATA_KEY}']); "
                             "export it with `pocketdet export` / pocketdet.deploy.export.export_onnx")
    return parse_metadata(custom[METADATA_KEY], source)


class Detector(BaseDetector):
    """ONNX Runtime backend. `threads`: intra-op threads (None: ORT's default, one per physical core).
    `providers`: ORT execution providers (default CPU). `exact_resize`: see `npops.resize_chw`."""

    def __init__(self, path, threads: int | None = None, providers: list | None = None, exact_resize: bool = True):
        import onnxruntime as ort  # local so that `import pocketdet.deploy.runtime` stays cheap

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        opts = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1  # the graphs are sequential chains: no inter-op parallelism to gain
        if _is_two_part_export(path):
            # its optional inputs are initializers listed as graph inputs (export_cascade_onnx_proto), on
            # purpose; ORT warns about each at load. Errors still show.
            opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
            raise ModelFileError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
        super().__init__(read_onnx_metadata(self.session, str(path)), str(path), exact_resize)
        self.threads = threads
        self._input_name = self.meta["input_name"]
        self._output_names = list(self.meta["output_names"])

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self._output_names, {self._input_name: x})
        return dict(zip(self._output_names, outs))

    def run_part(self, part: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # two-part exports keep both graphs in one session; every input has a default, so a partial feed runs
        names = self.meta["arch_meta"]["parts"][part]["outputs"]
        return dict(zip(names, self.session.run(names, feeds)))


TWO_PART_DOC = "pocketdet two-part graph"  # in the model's doc_string (near the file start) of such exports


def _is_two_part_export(path: Path) -> bool:
    """Whether `path` is a two-part export, from its first bytes: the arch is in the metadata, which
    needs a loaded session, while the log level must be chosen before loading."""
    try:
        with path.open("rb") as f:
            return TWO_PART_DOC.encode() in f.read(4096)
    except OSError:
        return False
