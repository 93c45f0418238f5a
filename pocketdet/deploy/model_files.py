"""What kind of model file a path is, told from its content (not only its name), without torch.

`val`, `predict` and `bench` accept every model form that pocketdet writes; this module picks the loader:

  checkpoint  torch.save zip (`PK\\x03\\x04`) or legacy pickle (`\\x80` + protocol) -> `pocketdet.load`
  onnx        an ONNX ModelProto (protobuf: ir_version varint, then another ModelProto field) -> `Detector`
  ncnn        `NAME.ncnn.param` (text, first line the magic 7767517) + `.ncnn.bin` + `.ncnn.json`
              -> `NcnnDetector`; `NAME`, `NAME.ncnn` or any of the three files name the export

A path that is none of these gets a one-line `ModelFileError` that says what the file looks like, so a user
never sees a loader's traceback (or torch's advice to unpickle an untrusted file).
"""
from __future__ import annotations

from pathlib import Path

from .mobile import PARAM_SUFFIX, ncnn_paths
from .runtime import ModelFileError

CHECKPOINT, ONNX, NCNN = "checkpoint", "onnx", "ncnn"
NCNN_PARAM_MAGIC = b"7767517"
EXPORT_SUFFIXES = (".onnx", ".param", ".bin", ".ncnn")  # a missing file with these names is no zoo name
# ModelProto fields that may follow ir_version (field 1): producer_name (2) ... metadata_props (14), each a
# length-delimited (wire type 2) or varint (model_version, 5) field; their tag bytes
_ONNX_SECOND_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0x7A, 0x82}


def _head(path: Path, n: int = 64) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror or e})") from None


def looks_like_onnx(head: bytes) -> bool:
    if len(head) < 3 or head[0] != 0x08:
        return False
    i = 1
    while i < len(head) and head[i] & 0x80:  # skip the ir_version varint
        i += 1
    return i + 1 < len(head) and head[i + 1] in _ONNX_SECOND_TAGS


def looks_like_checkpoint(head: bytes) -> bool:
    return head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5)


def ncnn_export_of(path: Path) -> Path | None:
    """The `.ncnn.param` of the ncnn export that `path` names, or None if it names none."""
    param, _, _ = ncnn_paths(path)
    if path.name.endswith((".ncnn", PARAM_SUFFIX, ".ncnn.bin", ".ncnn.json")) or param.is_file():
        return param
    if path.suffix == ".param" and path.is_file() and _head(path, len(NCNN_PARAM_MAGIC)) == NCNN_PARAM_MAGIC:
        return path
    return None


def model_file_kind(path) -> str | None:
    """CHECKPOINT / ONNX / NCNN for a model file (by content; ncnn also by its file names), None when `path`
    names no file and no ncnn export (a zoo name, for instance). Raises ModelFileError for a directory, an
    unreadable file or a file that is none of the three."""
    p = Path(path)
    if p.is_dir():
        raise ModelFileError(f"{p}: is a directory; expected a model file (.pt checkpoint, .onnx, or an ncnn "
                             "export NAME.ncnn.param)")
    ncnn = ncnn_export_of(p)
    if ncnn is not None:
        return NCNN
    if not p.is_file():
        return None
    head = _head(p)
    if not head:
        raise ModelFileError(f"{p}: file is empty; expected a pocketdet checkpoint, ONNX or ncnn model")
    if looks_like_checkpoint(head):
        return CHECKPOINT
    if looks_like_onnx(head) or p.suffix == ".onnx":
        return ONNX  # a damaged .onnx gets ONNX Runtime's verdict from Detector, naming the file
    if head.startswith(NCNN_PARAM_MAGIC):
        return NCNN
    what = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary data"
    raise ModelFileError(f"{p}: not a model file pocketdet knows ({what} that is neither a torch checkpoint, "
                         "an ONNX model nor an ncnn .param)")


def check_ncnn_files(param: Path) -> None:
    """A one-line error naming the first of the export's files that is missing."""
    param, weights, meta = ncnn_paths(param)
    for f, role in ((param, "network (.ncnn.param)"), (weights, "weights (.ncnn.bin)"),
                    (meta, "pocketdet metadata (.ncnn.json)")):
        if not f.is_file():
            raise ModelFileError(f"{f}: missing: the ncnn export {param.name} needs its {role} beside it")
