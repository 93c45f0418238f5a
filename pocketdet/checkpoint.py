"""Checkpoints: written atomically, read without executing pickled code."""
from __future__ import annotations

import errno
import io
import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


class CheckpointError(ValueError):
    pass


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a crash (even SIGKILL) leaves
    either the previous file or the new one, never a torn one. The object is serialised in memory first:
    torch.save writing to a file that fails (disk full) reports a misleading "unexpected pos" error, while our
    own write raises the OSError, which becomes a one-line CheckpointError naming the file; the previous
    file is kept and the temp file removed."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it owner-only; a checkpoint gets a normal file's mode
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        why = os.strerror(e.errno) if e.errno else str(e)
        kept = "the previous one is kept" if path.exists() else "no earlier one exists"
        raise CheckpointError(f"cannot write checkpoint {path}: {why}"
                              f"{' (' + errno.errorcode[e.errno] + ')' if e.errno in errno.errorcode else ''}; "
                              f"{kept}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it back at once
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """weights_only=True: tensors and plain containers only, so a malicious file cannot run code.
    Errors name the file and say what is wrong with it in one line (never torch's advice to retry with
    weights_only=False, which would run whatever code the file holds)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; expected a checkpoint file (.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise CheckpointError(f"{path}: not a torch checkpoint ({'empty file' if not head else 'no zip/pickle header'})"
                              "; ONNX and ncnn exports run with `pocketdet val|predict FILE` or pocketdet.Detector")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: holds pickled objects other than tensors and plain containers (a whole "
                              "pickled model?); pocketdet loads weights only and never runs code from a model "
                              "file: save `model.state_dict()` or a pocketdet checkpoint") from None
    except Exception as e:  # a damaged zip: RuntimeError, EOFError, ... depending on where it breaks
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({type(e).__name__}: {first[:160]})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not a pocketdet checkpoint (no 'model' entry)")
    return obj


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def stored_int8_onnx(checkpoint) -> bytes | None:
    """The int8 ONNX bytes a `pocketdet quantize` checkpoint carries (its 'quant' entry), or None for a float
    checkpoint or anything that is not a file (a zoo name)."""
    p = Path(str(checkpoint))
    if not p.is_file():
        return None
    q = load_checkpoint(p).get("quant")
    if not q:
        return None
    if not isinstance(q, dict) or not isinstance(q.get("onnx"), torch.Tensor):
        raise CheckpointError(f"{p}: 'quant' entry has no int8 ONNX model ('onnx' uint8 tensor)")
    return q["onnx"].numpy().tobytes()
