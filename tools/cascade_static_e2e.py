"""End to end: pocketdet's Cascade R-CNN against PaddlePaddle's static inference graph (issue 22).

    PYTHONPATH=. .venv/bin/python tools/cascade_static_e2e.py [--sizes 320 640] [--images a.jpg ...] \
        [--paddle-python .venv-paddle/bin/python] [--fixture tests/fixtures/cascade_static_e2e.npz]

For each size: a "trained-like" model (`deploy.bench.make_trained_like`, seed 0: frozen BN calibrated on
photos, sharpened logits, so scores pass 0.05 and the stages move boxes) is written in the seed's static
persistables layout (`<name>/<static variable>` LoDTensor files, tarred) and converted back with
`pocketdet convert`'s `convert_paddle`; every step below uses the *converted* model. Paddle's side
(tools/cascade_static_reference.py in `.venv-paddle`): the static reader (cv2 normalise + resize + pad)
builds the input; the converted model's dense network runs on that input (pocketdet: the Paddle dense
network is issue 17); then Paddle's legacy ops (anchor_generator, generate_proposals, collect_fpn_proposals,
distribute_fpn_proposals, roi_align, box_coder, multiclass_nms) and the stage heads, with the head weights
read by Paddle from the static files, give the reference detections. pocketdet's side is
`model.predict(photo)`: its own reading, resize, anchors, proposals, stages and NMS.

Reported per photo: max |pocketdet input - static reader input|, proposals equal, and of Paddle's top 50
detections the share found in pocketdet's with the same label, IoU > 0.99 and |score diff| < 1e-3.
--fixture stores Paddle's detections for tests/test_cascade_static.py (CI, no Paddle).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pocketdet.config import load_config  # noqa: E402
from pocketdet.convert.paddle import convert_paddle  # noqa: E402
from pocketdet.convert.paddle_io import write_lod_tensor  # noqa: E402
from pocketdet.convert.paddle_names import dygraph_to_static, to_paddle_dygraph  # noqa: E402
from pocketdet.deploy.bench import calibration_images, make_trained_like  # noqa: E402
from pocketdet.models import build_model  # noqa: E402

VAL = ROOT / "data" / "coco128" / "images" / "val2017"
DEFAULT_IMAGES = [VAL / "000000000139.jpg", VAL / "000000000285.jpg", VAL / "000000000632.jpg",
                  VAL / "000000000724.jpg"]
ZOO = {320: "cascade_rcnn_mnv3_large_fpn_320", 640: "cascade_rcnn_mnv3_large_fpn_640"}


def trained_like(size: int, n_calib: int = 4):
    torch.manual_seed(0)
    return make_trained_like(build_model(load_config(ZOO[size]).model), calibration_images(n_calib))


def write_static_tar(model, folder: Path) -> Path:
    """The seed's `.tar`: one LoDTensor file per static variable name in `<folder.name>/`; FC weights
    stored [in, out] as Paddle's fc layers hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        a = v.numpy()
        write_lod_tensor(folder / dygraph_to_static(to_paddle_dygraph(k)), a.T.copy() if a.ndim == 2 else a)
    tar = folder.with_suffix(".tar")
    with tarfile.open(tar, "w") as t:
        t.add(folder, arcname=folder.name)
    return tar


def paddle_step(paddle_python: str, work: Path, request: dict) -> None:
    (work / "request.json").write_text(json.dumps(request))
    subprocess.run([paddle_python, str(ROOT / "tools" / "cascade_static_reference.py"), "--pipeline", str(work)],
                   check=True, capture_output=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def top50_match(ref: np.ndarray, got: dict) -> tuple[int, int]:
    """ref: Paddle's [K, 6] (label 1-based, score, inclusive box). Returns (matched, compared)."""
    ref = ref[np.argsort(-ref[:, 1], kind="stable")][:50]
    boxes = got["boxes"].numpy() - np.array([0, 0, 1, 1], np.float32)  # back to inclusive
    labels, scores = got["labels"].numpy() + 1, got["scores"].numpy()
    matched = 0
    for lab, sc, *box in ref:
        cand = np.flatnonzero((labels == lab) & (np.abs(scores - sc) < 1e-3))
        if cand.size and iou(np.asarray(box, np.float32), boxes[cand]).max() > 0.99:
            matched += 1
    return matched, len(ref)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """+1 IoU of one inclusive box with many."""
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt + 1, 0, None), 1)
    area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def run(size: int, images: list[Path], paddle_python: str, work: Path) -> dict:
    model = trained_like(size)
    tar = write_static_tar(model, work / f"cascade_rcnn_mobilenetv3_fpn_{size}")
    conv, report = convert_paddle(tar, ZOO[size])
    assert report.naming == "static"
    conv.eval()
    req = {"size": size, "images": [str(p) for p in images], "weights": str(tar.with_suffix("")), "step": "reader"}
    paddle_step(paddle_python, work, req)
    rows = []
    for i, photo in enumerate(images):
        inp = np.load(work / f"input_{i}.npz")
        x = torch.from_numpy(inp["image"])
        with torch.no_grad():
            feats, obj, deltas = conv.forward_raw(x)
            own_x, sizes = conv.prepare([load_chw(photo)])
        dense = {f"p{k + 2}": f.numpy() for k, f in enumerate(feats)}
        dense.update({f"logits_p{k + 2}": o.numpy() for k, o in enumerate(obj)})
        dense.update({f"deltas_p{k + 2}": d.numpy() for k, d in enumerate(deltas)})
        np.savez(work / f"dense_{i}.npz", **dense)
        same_shape = tuple(own_x.shape) == tuple(x.shape)
        rows.append({"photo": photo.name, "hw": sizes[0], "input_shape": tuple(x.shape),
                     "input_max_abs": float((own_x - x).abs().max()) if same_shape else float("nan")})
    paddle_step(paddle_python, work, {**req, "step": "heads"})
    out = {}
    for i, photo in enumerate(images):
        ref = np.load(work / f"paddle_{i}.npz")
        with torch.no_grad():
            got = conv.predict(photo)[0]
            x = torch.from_numpy(np.load(work / f"input_{i}.npz")["image"])
            props, _ = conv.rpn.proposals_from_head(*conv.forward_raw(x)[1:], conv.forward_raw(x)[0],
                                                    [tuple(x.shape[-2:])])
        p_ref = ref["stage0_rois"]
        rows[i]["proposals"] = (f"{len(props[0])} vs {len(p_ref)}, max diff "
                                f"{float(np.abs(props[0].numpy() - p_ref).max()):.2e}"
                                if props[0].shape == p_ref.shape else f"{len(props[0])} vs {len(p_ref)}")
        m, n = top50_match(ref["detections"], got)
        rows[i].update(matched=m, compared=n, detections=(len(got["scores"]), len(ref["detections"])))
        out[f"{size}_{photo.stem}"] = ref["detections"]
    return {"rows": rows, "fixture": out}


def load_chw(photo: Path) -> torch.Tensor:
    from PIL import Image

    rgb = np.asarray(Image.open(photo).convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--images", type=Path, nargs="+", default=DEFAULT_IMAGES)
    ap.add_argument("--paddle-python", default=str(ROOT / ".venv-paddle" / "bin" / "python"))
    ap.add_argument("--fixture", type=Path, help="write Paddle's detections here (npz) for the CI test")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fixture = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            res = run(size, args.images, args.paddle_python, Path(tmp) / str(size))
            fixture.update(res["fixture"])
            for r in res["rows"]:
                print(f"{size} {r['photo']} {r['hw']} input {r['input_shape']} |dx|max {r['input_max_abs']:.2e} "
                      f"proposals {r['proposals']} detections pocketdet/paddle {r['detections']} "
                      f"top-50 matched {r['matched']}/{r['compared']}")
    if args.fixture:
        np.savez_compressed(args.fixture, **fixture)


if __name__ == "__main__":
    main()
