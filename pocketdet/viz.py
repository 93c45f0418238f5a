"""Draw detections on images and collect image paths from files, folders and globs (no torch needed)."""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def collect_images(sources: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns; a clear error when something matches nothing."""
    out: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:  # e.g. a .txt list: refused like an empty folder
                raise FileNotFoundError(f"{src}: not an image file (known: {', '.join(sorted(IMAGE_SUFFIXES))})")
            found = [p]
        else:
            found = sorted(Path(q) for q in glob.glob(src, recursive=True) if Path(q).suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"no images found for {src!r}")
        out += found
    return out


def draw_detections(image: Image.Image, boxes, scores, labels, class_names: list[str],
                    score_thresh: float = 0.3) -> Image.Image:
    img = image.convert("RGB").copy()
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    width = max(2, round(max(img.size) / 300))
    for b, s, lab in zip(np.asarray(boxes), np.asarray(scores), np.asarray(labels)):
        if s < score_thresh:
            continue
        color = _PALETTE[int(lab) % len(_PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in b)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        name = class_names[int(lab)] if 0 <= int(lab) < len(class_names) else str(int(lab))
        text = f"{name} {s:.2f}"
        tb = draw.textbbox((x0, y0), text, font=font)
        ty = max(0.0, y0 - (tb[3] - tb[1]) - 4)
        draw.rectangle([x0, ty, x0 + (tb[2] - tb[0]) + 4, ty + (tb[3] - tb[1]) + 4], fill=color)
        draw.text((x0 + 2, ty + 1), text, fill=(0, 0, 0), font=font)
    return img


def detections_to_json(path: Path, boxes, scores, labels, class_names, score_thresh: float) -> dict:
    dets = [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4), "label": int(lab),
             "class_name": class_names[int(lab)]}
            for b, s, lab in zip(np.asarray(boxes), np.asarray(scores), np.asarray(labels)) if s >= score_thresh]
    return {"image": str(path), "detections": dets}
