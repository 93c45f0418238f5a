"""Reading Paddle weight files without Paddle: numpy only, nothing from the file is ever executed.

Three on-disk layouts exist for the weights the seed links to and the ones PaddleDetection 2.x publishes:

* a `.pdparams` pickle (`paddle.save` / `fluid.save`): a dict name -> numpy array, in dygraph 2.x plus a
  `StructuredToParameterName@@` dict of internal names. It is read with a *restricted* unpickler that can
  only rebuild numpy arrays and plain containers (a pickle can otherwise run any code on load).
* a persistables directory (`fluid.io.save_persistables`): one file per variable, named like the variable,
  each a serialized LoDTensor (format below).
* a `.tar` (or `.tar.gz`) archive of such a directory, or of a `.pdparams`; read in memory, never extracted.

LoDTensor file layout (Paddle `SerializeToStream` / `TensorToStream`, checked against
paddle/phi/core/framework/lod_tensor_serialize.cc and Paddle 3.3.1's own `paddle.save(use_binary_format=True)`
output), all little endian:
    u32 version (0) | u64 lod_level | lod_level x (u64 nbytes, nbytes of size_t offsets)
    | u32 tensor version (0) | i32 desc_size | VarType.TensorDesc protobuf (1: data_type varint,
    2: repeated int64 dims) | raw C-order data
"""
from __future__ import annotations

import io
import pickle
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class PaddleFormatError(ValueError):
    """A file is not a readable Paddle weight file, or reading it would need something we refuse to do."""


# --------------------------------------------------------------------------------------------------
# restricted unpickling
# --------------------------------------------------------------------------------------------------
def _numpy_reconstruct():
    # numpy >= 2 moved numpy.core to numpy._core (numpy.core still works but warns); pickles written by
    # either numpy name whichever module exists here.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _codecs_encode(text, encoding="latin1"):
    # Protocol-2 pickles written by Python 3 store bytes (an array's raw data) as _codecs.encode(str, 'latin1').
    # Only this one pure function is reachable, and only for these two encodings.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
    ("_codecs", "encode"): lambda: _codecs_encode,
}

# numeric dtypes only: an object array would be a way to smuggle arbitrary pickled objects through
_NUMERIC_KINDS = set("biuf")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, tuples, str, bytes and numbers; refuses every other global."""

    def find_class(self, module: str, name: str):
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a weight file")
        return factory()

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a weight file")


def restricted_loads(data: bytes, source: str):
    """Unpickle `data` with the restricted unpickler; errors name `source`."""
    last_err: Exception | None = None
    # Python 2 pickles of numpy arrays store raw data as str: decode those as latin1 bytes.
    for encoding in ("ASCII", "latin1"):
        try:
            return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
        except UnicodeDecodeError as e:
            last_err = e
        except pickle.UnpicklingError as e:
            raise PaddleFormatError(f"{source}: refused to unpickle: {e}") from None
        except Exception as e:  # truncated or corrupt pickle
            raise PaddleFormatError(f"{source}: not a readable .pdparams pickle "
                                    f"({type(e).__name__}: {e})") from None
    raise PaddleFormatError(f"{source}: cannot decode pickle strings ({last_err})")


def _arrays_from_pickle(obj, source: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise PaddleFormatError(f"{source}: expected a dict of name -> array, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if k == "StructuredToParameterName@@":  # dygraph bookkeeping: internal names, no weights
            continue
        if not isinstance(k, str):
            raise PaddleFormatError(f"{source}: key {k!r} is not a string")
        if not isinstance(v, np.ndarray):
            raise PaddleFormatError(f"{source}: entry {k!r} is a {type(v).__name__}, not a numpy array")
        if v.dtype.kind not in _NUMERIC_KINDS:
            raise PaddleFormatError(f"{source}: entry {k!r} has non-numeric dtype {v.dtype}")
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------------
# LoDTensor files
# --------------------------------------------------------------------------------------------------
# framework.proto VarType.Type values of the POD types
_PADDLE_DTYPES = {0: np.bool_, 1: np.int16, 2: np.int32, 3: np.int64, 4: np.float16, 5: np.float32,
                  6: np.float64, 20: np.uint8, 21: np.int8}
_BF16 = 22
_NUMPY_TO_PADDLE = {np.dtype(v): k for k, v in _PADDLE_DTYPES.items()}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_tensor_desc(buf: bytes) -> tuple[int, list[int]]:
    """VarType.TensorDesc: field 1 data_type (varint), field 2 dims (int64, packed or not)."""
    pos, dtype, dims = 0, None, []
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        fnum, wtype = key >> 3, key & 7
        if fnum == 1 and wtype == 0:
            dtype, pos = _varint(buf, pos)
        elif fnum == 2 and wtype == 0:
            v, pos = _varint(buf, pos)
            dims.append(_signed64(v))
        elif fnum == 2 and wtype == 2:  # packed
            n, pos = _varint(buf, pos)
            end = pos + n
            while pos < end:
                v, pos = _varint(buf, pos)
                dims.append(_signed64(v))
        else:
            raise ValueError(f"unexpected protobuf field {fnum} (wire type {wtype}) in TensorDesc")
    if dtype is None:
        raise ValueError("TensorDesc without data_type")
    return dtype, dims


def read_lod_tensor(data: bytes, source: str, pos: int = 0) -> tuple[np.ndarray, int]:
    """Parse one serialized LoDTensor at `pos`; returns (array, position after it)."""
    try:
        (version,) = struct.unpack_from("<I", data, pos)
        if version != 0:
            raise ValueError(f"LoDTensor version {version}, expected 0")
        (lod_level,) = struct.unpack_from("<Q", data, pos + 4)
        pos += 12
        if lod_level > 64:
            raise ValueError(f"implausible lod level {lod_level}")
        for _ in range(lod_level):  # LoD offsets: irrelevant for weights, skipped
            (n,) = struct.unpack_from("<Q", data, pos)
            pos += 8 + n
        (tversion, desc_size) = struct.unpack_from("<Ii", data, pos)
        pos += 8
        if tversion != 0:
            raise ValueError(f"tensor version {tversion}, expected 0")
        if not 0 < desc_size <= 4096 or pos + desc_size > len(data):
            raise ValueError(f"bad TensorDesc size {desc_size}")
        dtype_id, dims = _parse_tensor_desc(data[pos:pos + desc_size])
        pos += desc_size
        if any(d < 0 for d in dims):
            raise ValueError(f"negative dimension in {dims}")
        numel = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if dtype_id == _BF16:
            nbytes = numel * 2
            raw = np.frombuffer(data, dtype="<u2", count=numel, offset=pos)
            arr = (raw.astype(np.uint32) << 16).view(np.float32)  # bfloat16 = the top half of a float32
        elif dtype_id in _PADDLE_DTYPES:
            dt = np.dtype(_PADDLE_DTYPES[dtype_id]).newbyteorder("<")
            nbytes = numel * dt.itemsize
            if pos + nbytes > len(data):
                raise ValueError(f"data truncated: need {nbytes} bytes for dims {dims}, "
                                 f"have {len(data) - pos}")
            arr = np.frombuffer(data, dtype=dt, count=numel, offset=pos).astype(dt.newbyteorder("="))
        else:
            raise ValueError(f"unsupported data type id {dtype_id}")
        if pos + nbytes > len(data):
            raise ValueError("data truncated")
        return arr.reshape(dims), pos + nbytes
    except (struct.error, ValueError) as e:
        raise PaddleFormatError(f"{source}: not a Paddle LoDTensor file ({e})") from None


def read_lod_tensor_file(data: bytes, source: str) -> np.ndarray:
    arr, end = read_lod_tensor(data, source)
    if end != len(data):
        raise PaddleFormatError(f"{source}: {len(data) - end} unexpected trailing bytes after the tensor "
                                "(a combined __params__ file needs its program to name the tensors)")
    return arr


def _encode_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def lod_tensor_bytes(arr: np.ndarray) -> bytes:
    """Serialize `arr` as Paddle's LoDTensor file (no LoD). Used by tests and to write fixtures."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype not in _NUMPY_TO_PADDLE:
        raise ValueError(f"dtype {arr.dtype} has no Paddle LoDTensor type")
    desc = b"\x08" + _encode_varint(_NUMPY_TO_PADDLE[arr.dtype])
    for d in arr.shape:  # unpacked repeated int64, as Paddle's proto2 writer emits
        desc += b"\x10" + _encode_varint(int(d))
    le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return struct.pack("<IQIi", 0, 0, 0, len(desc)) + desc + le.tobytes()


def write_lod_tensor(path: str | Path, arr: np.ndarray) -> None:
    Path(path).write_bytes(lod_tensor_bytes(arr))


def write_pdparams(arrays: dict[str, np.ndarray], path: str | Path, protocol: int = 2) -> Path:
    """A `.pdparams` pickle of name -> array, as `fluid.save` wrote them (protocol 2)."""
    path = Path(path)
    path.write_bytes(pickle.dumps({k: np.ascontiguousarray(v) for k, v in arrays.items()}, protocol=protocol))
    return path


def write_persistables_tar(arrays: dict[str, np.ndarray], path: str | Path, folder: str = "model") -> Path:
    """A tar of a persistables folder (one LoDTensor file per variable), as the seed's `.tar` links hold."""
    path = Path(path)
    with tarfile.open(path, "w") as tar:
        for name, arr in arrays.items():
            data = lod_tensor_bytes(arr)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --------------------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------------------
@dataclass
class PaddleWeights:
    arrays: dict[str, np.ndarray]
    source: str
    layout: str  # "pdparams pickle", "persistables directory", "tar archive (...)"
    skipped_files: list[str] = field(default_factory=list)


# files that can sit next to variables in a saved model folder and hold no weights
_NON_WEIGHT_NAMES = {"__model__", "model", "infer_cfg.yml", "README", "README.md", "LICENSE"}
_NON_WEIGHT_SUFFIXES = (".pdmodel", ".pdopt", ".yml", ".yaml", ".txt", ".md", ".json", ".log", ".pdiparams.info")


def _is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _looks_like_lod_tensor(head: bytes) -> bool:
    return len(head) >= 16 and head[:4] == b"\0\0\0\0"


def _describe_unknown(head: bytes) -> str:
    if head[:2] == b"PK":
        return "a zip archive (a PyTorch checkpoint? use `pocketdet convert torchvision` or pocketdet.load)"
    if head[:1] in (b"{", b"["):
        return "a JSON file"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    if _is_pickle(head[:2]) or head[:1] in (b"(", b"}"):
        return "a pickle"
    return "unrecognised content"


def _read_member_dict(members: dict[str, bytes], source: str) -> PaddleWeights:
    """Variables from a set of (relative path -> bytes): one .pdparams inside, or per-variable files."""
    pdparams = [n for n in members if n.endswith((".pdparams", ".pdparam"))]
    if len(pdparams) > 1:
        raise PaddleFormatError(f"{source}: holds several .pdparams files ({', '.join(sorted(pdparams))}); "
                                "pass the one you mean")
    if pdparams:
        name = pdparams[0]
        arrays = _arrays_from_pickle(restricted_loads(members[name], f"{source}:{name}"), f"{source}:{name}")
        return PaddleWeights(arrays, source, "", [n for n in members if n != name])
    if "__params__" in {n.rsplit("/", 1)[-1] for n in members} or any(n.endswith(".pdiparams") for n in members):
        raise PaddleFormatError(f"{source}: a combined-parameter inference model (__params__/.pdiparams); its "
                                "tensors carry no names without the program. Use the training weights "
                                "(.pdparams or a persistables folder/tar) instead.")
    arrays, skipped = {}, []
    for rel, data in sorted(members.items()):
        base = rel.rsplit("/", 1)[-1]
        if base.startswith(".") or base in _NON_WEIGHT_NAMES or base.endswith(_NON_WEIGHT_SUFFIXES):
            skipped.append(rel)
            continue
        if not _looks_like_lod_tensor(data[:16]):
            raise PaddleFormatError(f"{source}:{rel}: not a Paddle LoDTensor variable file "
                                    f"({_describe_unknown(data[:8])})")
        if base in arrays:
            raise PaddleFormatError(f"{source}: variable {base!r} appears twice")
        arrays[base] = read_lod_tensor_file(data, f"{source}:{rel}")
    if not arrays:
        raise PaddleFormatError(f"{source}: contains no Paddle variables")
    return PaddleWeights(arrays, source, "", skipped)


def read_paddle_weights(path: str | Path) -> PaddleWeights:
    """Detect the layout of `path` (pickle / persistables folder / tar) and return its arrays by name."""
    p = Path(path)
    src = str(p)
    if p.is_dir():
        members = {}
        for f in sorted(p.rglob("*")):
            if f.is_file() and not f.is_symlink():
                members[f.relative_to(p).as_posix()] = f.read_bytes()
        w = _read_member_dict(members, src)
        w.layout = "persistables directory" if not any(n.endswith((".pdparams", ".pdparam")) for n in members) \
            else "directory with a .pdparams pickle"
        return w
    if not p.is_file():
        raise PaddleFormatError(f"{src}: no such file or directory")
    with p.open("rb") as f:
        head = f.read(16)
    if not head:
        raise PaddleFormatError(f"{src}: empty file")
    if _is_pickle(head):
        arrays = _arrays_from_pickle(restricted_loads(p.read_bytes(), src), src)
        return PaddleWeights(arrays, src, "pdparams pickle")
    if tarfile.is_tarfile(src):
        members = {}
        try:
            with tarfile.open(src, "r:*") as tar:
                for m in tar.getmembers():
                    if m.isfile():  # links and devices are skipped; nothing is extracted to disk
                        members[m.name[2:] if m.name.startswith("./") else m.name] = tar.extractfile(m).read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise PaddleFormatError(f"{src}: damaged tar archive ({e})") from None
        w = _read_member_dict(members, src)
        w.layout = "tar archive of " + ("a .pdparams pickle" if any(n.endswith((".pdparams", ".pdparam"))
                                                                    for n in members) else "persistables")
        return w
    if _looks_like_lod_tensor(head):
        raise PaddleFormatError(f"{src}: a single LoDTensor variable file; pass the folder that holds all the "
                                "model's variables")
    raise PaddleFormatError(f"{src}: not a Paddle weight file ({_describe_unknown(head)}); expected a "
                            ".pdparams pickle, a persistables directory, or a .tar of either")
