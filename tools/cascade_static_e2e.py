"""End to end: pocketdet's Cascade R-CNN against PaddlePaddle's static inference graph (issue 22).

    PYTHONPATH=. .venv/bin/python tools/cascade_static_e2e.py [--sizes 320 640] [--images a.jpg ...] \
        [--paddle-python .venv-paddle/bin/python] [--fixture tests/fixtures/cascade_static_e2e.npz]

For each size: a "trained-like" model (`deploy.trained_like.make_trained_like`, seed 0: frozen BN calibrated on
photos, sharpened logits, so scores pass 0.05 and the stages move boxes) is written in the seed's static
persistables layout (`<name>/<static variable>` LoDTensor files, tarred) and converted back with
`pocketdet convert`'s `convert_paddle`; every step below uses the *converted* model. Paddle's side
(tools/cascade_static_reference.py in `.venv-paddle`): the static reader (cv2 normalise + resize + pad)
builds the input; paddledet 2.6's dygraph MobileNetV3 + FPN and the RPN convs, configured as the static
config and loaded from the static files by Paddle, run the dense network (issue 17); then Paddle's
legacy ops (anchor_generator, generate_proposals, collect_fpn_proposals, distribute_fpn_proposals,
roi_align, box_coder, multiclass_nms) and the stage heads, with the head weights read by Paddle from the
static files, give the reference detections. pocketdet's side is
`model.predict(photo)`: its own reading, resize, anchors, proposals, stages and NMS.

Reported per photo: max |pocketdet input - static reader input|, proposals (pocketdet's on its dense outputs
vs Paddle's), of Paddle's top 50 detections the share found in pocketdet's with the same label, IoU > 0.99
and |score diff| < 1e-3, the largest box / score difference over all detections, and the float64 relative
difference of every dense tensor (backbone taps c2-c4, FPN p2-p6, RPN logits and deltas) on the same input.
Each photo is compared twice: `paddle_dense` (Paddle's dense network, the whole static pipeline) and
`same_dense` (the static graph after pocketdet's dense outputs: the box conventions alone).
--fixture stores Paddle's `paddle_dense` detections for tests/test_cascade_static.py (CI, no Paddle).
"""
from __future__ import annotations

import argparse
import copy
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
from pocketdet.deploy.trained_like import calibration_images, make_trained_like  # noqa: E402
from pocketdet.models import build_model  # noqa: E402

VAL = ROOT / "data" / "coco128" / "images" / "val2017"
DEFAULT_IMAGES = [VAL / "000000000139.jpg", VAL / "000000000285.jpg", VAL / "000000000632.jpg",
                  VAL / "000000000724.jpg"]
ZOO = {320: "cascade_rcnn_mnv3_large_fpn_320", 640: "cascade_rcnn_mnv3_large_fpn_640"}


def trained_like(size: int, n_calib: int = 4):
    """Seed 0, `make_trained_like`, then every BN affine term and every bias randomised a little
    (init leaves them 1 / 0), so that each tensor's name mapping changes the outputs if it is wrong."""
    torch.manual_seed(0)
    model = make_trained_like(build_model(load_config(ZOO[size]).model), calibration_images(n_calib))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(".weight") and t.dim() == 1:  # frozen BN scale
                t.mul_(torch.empty(t.shape).uniform_(0.8, 1.25, generator=g))
            elif name.endswith(".bias") and not name.startswith("roi_heads.stages") or \
                    name.endswith(("fc6.bias", "fc7.bias")):
                t.add_(torch.randn(t.shape, generator=g) * 0.05)
        # objectness logits within a few units: beyond ~17 float32 sigmoids saturate to 1.0, and the top-k
        # among equal scores is arbitrary (in Paddle as in torch)
        model.rpn.head.cls_logits.weight.mul_(0.15)
        # class logits likewise: saturated softmaxes give exactly tied scores (e.g. 1/3), whose order in
        # NMS then hangs on the last float bit of each side's softmax
        for stage in model.roi_heads.stages:
            stage.cls_score.weight.mul_(0.3)
            stage.cls_score.bias[0] -= 11.0
    return model.eval()


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
    paddle_step(paddle_python, work, {**req, "step": "dense", "lr_mult_list": list(load_config(ZOO[size]).model.get(
        "lr_mult_list", [0.25, 0.25, 0.5, 0.5, 0.75]))})
    missing = json.loads((work / "missing.json").read_text())
    conv64 = copy.deepcopy(conv).double()
    for i in range(len(images)):
        ref64 = np.load(work / f"paddle_dense64_{i}.npz")
        x = torch.from_numpy(np.load(work / f"input_{i}.npz")["image"]).double()
        with torch.no_grad():
            taps = conv64.backbone(x)
            feats, obj, deltas = conv64.forward_raw(x)
        mine = {f"c{k + 2}": t for k, t in enumerate(taps)}
        mine.update({f"p{k + 2}": f for k, f in enumerate(feats)})
        mine.update({f"logits_p{k + 2}": o for k, o in enumerate(obj)})
        mine.update({f"deltas_p{k + 2}": d for k, d in enumerate(deltas)})
        rows[i]["dense_rel_f64"] = {k: float((v - torch.from_numpy(ref64[k])).abs().max()
                                             / max(float(v.abs().max()), 1e-12)) for k, v in mine.items()}
    rows[0]["missing"] = missing
    out = {"paddle_dense": [compare(conv, images, work, i) for i in range(len(images))]}
    # the fixture: Paddle's detections with Paddle's own dense network (the whole static pipeline)
    fixture = {f"{size}_{p.stem}": np.load(work / f"paddle_{i}.npz")["detections"] for i, p in enumerate(images)}
    paddle_step(paddle_python, work, {**req, "step": "heads"})  # the same static graph on pocketdet's dense outputs
    out["same_dense"] = [compare(conv, images, work, i) for i in range(len(images))]
    return {"rows": rows, "fixture": fixture, **out}


def compare(conv, images: list[Path], work: Path, i: int) -> dict:
    photo = images[i]
    ref = np.load(work / f"paddle_{i}.npz")
    row = final_vs_paddle(conv, photo, ref)
    with torch.no_grad():
        got = conv.predict(photo)[0]
        x = torch.from_numpy(np.load(work / f"input_{i}.npz")["image"])
        feats, obj, deltas = conv.forward_raw(x)
        props = conv.rpn.proposals_from_head(obj, deltas, feats, [tuple(x.shape[-2:])])[0][0].numpy()
    p_ref = ref["stage0_rois"]
    same = sum(bool(len(p_ref)) and np.abs(p_ref - p).max(1).min() < 1e-3 for p in props)
    row["proposals"] = f"{same}/{len(p_ref)} equal (pocketdet {len(props)})"
    m, n = top50_match(ref["detections"], got)
    row.update(matched=m, compared=n, detections=(len(got["scores"]), len(ref["detections"])))
    return row


def final_vs_paddle(model, photo: Path, ref) -> dict:
    """Issue 17's bounds on the final detections: max |box diff| (px) and |score diff| of Paddle's
    detections matched one to one (same label, best IoU) in pocketdet's."""
    got = model.predict(photo)[0]
    boxes = got["boxes"].numpy() - np.array([0, 0, 1, 1], np.float32)
    labels, scores = got["labels"].numpy() + 1, got["scores"].numpy()
    box_err, score_err, unmatched = 0.0, 0.0, 0
    for lab, sc, *box in ref["detections"]:
        cand = np.flatnonzero(labels == lab)
        if not cand.size:
            unmatched += 1
            continue
        j = cand[np.argmax(iou(np.asarray(box, np.float32), boxes[cand]))]
        box_err = max(box_err, float(np.abs(boxes[j] - np.asarray(box)).max()))
        score_err = max(score_err, abs(float(scores[j]) - float(sc)))
    return {"box_err": box_err, "score_err": score_err, "unmatched": unmatched}


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
    ap.add_argument("--work", type=Path, help="keep the intermediate files here (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fixture = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            res = run(size, args.images, args.paddle_python, Path(args.work or tmp) / str(size))
            fixture.update(res["fixture"])
            for i, r in enumerate(res["rows"]):
                print(f"{size} {r['photo']} {r['hw']} input {r['input_shape']} |dx|max {r['input_max_abs']:.2e}")
                print("   dense float64 max rel diff: " + ", ".join(f"{k} {v:.1e}" for k, v in
                                                                   r["dense_rel_f64"].items()))
                for mode in ("paddle_dense", "same_dense"):
                    c = res[mode][i]
                    print(f"   {mode}: proposals {c['proposals']}, detections pocketdet/paddle {c['detections']}, "
                          f"top-50 matched {c['matched']}/{c['compared']}, max |box diff| {c['box_err']:.2e} px, "
                          f"|score diff| {c['score_err']:.2e}, unmatched {c['unmatched']}")
            print(f"{size}: Paddle backbone parameters without a static file (unused blocks after conv14's "
                  f"expand conv): {len(res['rows'][0]['missing'])}")
    if args.fixture:
        np.savez_compressed(args.fixture, **fixture)


if __name__ == "__main__":
    main()
