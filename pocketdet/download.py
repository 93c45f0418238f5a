"""One downloader, all or nothing: used by `NAME:coco` official weights (hub.py) and `--pretrained URL`
(convert/paddle.py).

The body goes into a temp file next to `dst`; the byte count is checked against Content-Length and the expected
size / sha256 when known; only then is the file renamed into place. On any failure nothing is left behind and a
`DownloadError` (an OSError, so callers that treat I/O problems as user errors catch it) says in one line what
happened. It sits at the bottom of the import layers: callers add their own advice (where to put the file by hand).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 30.0


class DownloadError(OSError):
    """A download or a downloaded file that cannot be used; the message names the URL or file."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_file(path: Path, size: int | None, sha256: str | None, what: str) -> str:
    """sha256 of `path` after the size and hash checks that are known; raises DownloadError."""
    got = Path(path).stat().st_size
    if size is not None and got != size:
        raise DownloadError(f"{what}: {got} bytes, expected {size} (truncated or another file)")
    digest = sha256_of(path)
    if sha256 and digest != sha256.lower():
        raise DownloadError(f"{what}: sha256 {digest[:16]}... does not match the expected {sha256[:16]}...")
    return digest


def _copy_body(url: str, out, progress: bool, label: str, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        total = r.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        from tqdm import tqdm
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress) as bar:
            for block in iter(lambda: r.read(1 << 20), b""):
                out.write(block)
                got += len(block)
                bar.update(len(block))
    if total is not None and got != total:
        raise DownloadError(f"{url}: download truncated ({got} of {total} bytes); retry")


def fetch(url: str, dst: Path, *, size: int | None = None, sha256: str | None = None, progress: bool = True,
          timeout: float = TIMEOUT_S) -> str:
    """Download `url` into `dst` and return its sha256; `dst` appears only complete and checked."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                _copy_body(url, f, progress, dst.name, timeout)
        except DownloadError:
            raise
        except http.client.IncompleteRead as e:
            raise DownloadError(f"{url}: download truncated ({len(e.partial)} bytes short read); retry") from None
        except urllib.error.HTTPError as e:
            raise DownloadError(f"{url}: server refused the download (HTTP {e.code} {e.reason})") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:  # offline, reset, cut
            reason = getattr(e, "reason", None) or e
            raise DownloadError(f"{url}: download failed ({type(e).__name__}: {reason}); network offline?") \
                from None
        digest = check_file(tmp, size, sha256, url)
        os.replace(tmp, dst)
        return digest
    finally:
        tmp.unlink(missing_ok=True)
