"""Image modes -> RGB, one rule for every path that reads user images (training datasets, torch `predict`, the
deployed numpy runtime). numpy + PIL only, so the torch-free runtime can import it; it sits below `models` and
`data` in the import layers, which is why it is not in either."""
from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """A PIL image of any common mode -> HxWx3 uint8 RGB, in the stored frame (EXIF orientation is not applied:
    COCO's annotations, width and height are in the stored frame). 16-bit grayscale keeps its top 8 bits (PIL's
    own convert would clip it to white); alpha is dropped (the colour under it is used as is); CMYK converts with
    PIL's ICC-less formula; palette and 1-bit images expand."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        gray = (np.clip(np.asarray(im), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ValueError("floating-point images (PIL mode F) are not supported: convert to 8-bit RGB first")
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def draft_at_least(f: Image.Image, min_w: float, min_h: float) -> None:
    """Make an opened, not yet decoded JPEG decode at the largest DCT scale (1/2, 1/4, 1/8: libjpeg's scaled
    IDCT) that keeps it at least (min_w, min_h) pixels; other formats decode in full. `model.predict` and the
    deployed runtime share it so that both see the same pixels."""
    if f.format == "JPEG":
        f.draft("RGB", (max(1, int(min_w)), max(1, int(min_h))))
