"""Paddle reference outputs for the weight-converter parity tests (run with `.venv-paddle/bin/python`).

Builds PaddleDetection 2.6's dygraph modules directly (no YAML configs) with the constructor arguments of
the zoo configs (spec paddle_mobile_zoo.md §2.5, §3.2, §3.8, §4.1-4.4), gives them seeded random weights
with realistic BN statistics, saves the state dict with `paddle.save` (the dygraph `.pdparams` format) and
runs the eval-mode forward on real photos, saving the raw head outputs and Paddle's own post-processing.

    .venv-paddle/bin/python tools/paddle_reference.py --model ssdlite_mnv3_small_320 --out DIR \
        [--images a.jpg b.jpg] [--seed 0] [--fp16-weights] [--persistables] [--compact]

Writes to DIR: weights.pdparams, input_uint8.npy [N,320,320,3] (the resized photos), input.npy [N,3,320,320]
(ImageNet-normalised float32); the raw head outputs of the float32 forward, for SSDLite loc.npy [N,P,4],
conf.npy [N,P,81] (background LAST, Paddle's dygraph layout), priors.npy [P,4], for YOLOv3 out{0,1,2}.npy
(coarse to fine); the same raw outputs of the float64 forward as *_f64.npy; Paddle's own post-processing
nms_bbox.npy [M,6] (label, score, x1, y1, x2, y2 in 320x320 input pixels) and nms_num.npy [N]; meta.json.
--fp16-weights rounds every weight to float16 first and saves the .pdparams in float16 (lossless).
--persistables adds persistables/: one LoDTensor file per static-graph variable name, serialized by Paddle,
and backbone.pdparams: the backbone's state dict alone (the naming of PaddleDetection's ImageNet weights).
--lodtensor-samples adds lodtensor/: two model variables and two known arrays in Paddle's binary format.
--compact (committed fixtures) keeps only input_uint8, priors, the *_f64 outputs stored as float32, nms_*.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import paddle
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
DEFAULT_IMAGES = [ROOT / "data/coco_mini/val2017/000000000139.jpg",
                  ROOT / "data/coco_mini/val2017/000000000802.jpg"]
CALIB_IMAGES = sorted((ROOT / "data/coco_mini/train2017").glob("*.jpg"))[:4]
SIZE = 320


def load_uint8(paths: list[Path]) -> np.ndarray:
    """RGB, stretched to 320x320 (SSD/YOLO keep no aspect ratio), bilinear, as HxWx3 uint8."""
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
                     for p in paths])


def normalize(u8: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, ImageNet mean/std; the parity test repeats exactly these numpy ops."""
    x = (u8.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def paddle_names_module():
    # pure-Python naming rules of the converter (no torch import), loaded from its file
    spec = importlib.util.spec_from_file_location("paddle_names", ROOT / "pocketdet/convert/paddle_names.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------
class SSDLiteRef(paddle.nn.Layer):
    def __init__(self, variant: str):
        super().__init__()
        from ppdet.modeling.backbones.mobilenet_v3 import MobileNetV3
        from ppdet.modeling.heads.ssd_head import SSDHead

        feature_maps = {"large": [14, 17, 18, 19, 20, 21], "small": [10, 13, 14, 15, 16, 17]}[variant]
        self.backbone = MobileNetV3(scale=1.0, model_name=variant, feature_maps=feature_maps,
                                    with_extra_blocks=True,
                                    extra_block_filters=[[256, 512], [128, 256], [128, 256], [64, 128]],
                                    lr_mult_list=[0.25, 0.25, 0.5, 0.5, 0.75], conv_decay=4e-5,
                                    multiplier=0.5, norm_type="bn")
        anchor_generator = dict(steps=[16, 32, 64, 107, 160, 320],
                                aspect_ratios=[[2.0], [2.0, 3.0], [2.0, 3.0], [2.0, 3.0], [2.0, 3.0], [2.0, 3.0]],
                                min_ratio=20, max_ratio=95, base_size=320, min_sizes=[], max_sizes=[],
                                offset=0.5, flip=True, clip=True, min_max_aspect_ratios_order=False)
        self.ssd_head = SSDHead(num_classes=80, in_channels=[s.channels for s in self.backbone.out_shape],
                                anchor_generator=anchor_generator, use_sepconv=True, conv_decay=4e-5)

    def raw(self, x):
        feats = self.backbone({"image": x})
        locs, confs = [], []
        for f, bc, sc in zip(feats, self.ssd_head.box_convs, self.ssd_head.score_convs):
            locs.append(paddle.reshape(paddle.transpose(bc(f), [0, 2, 3, 1]), [0, -1, 4]))
            confs.append(paddle.reshape(paddle.transpose(sc(f), [0, 2, 3, 1]), [0, -1, 81]))
        return locs, confs, feats

    def calibrate(self, x):
        self.raw(x)

    def raw_outputs(self, x) -> dict:
        locs, confs, _ = self.raw(x)
        return {"loc": paddle.concat(locs, 1), "conf": paddle.concat(confs, 1)}

    def reference(self, x):
        from ppdet.modeling.layers import MultiClassNMS, SSDBox
        from ppdet.modeling.post_process import BBoxPostProcess

        locs, confs, feats = self.raw(x)
        priors = self.ssd_head.anchor_generator(feats, x)
        post = BBoxPostProcess(num_classes=80, decode=SSDBox(),
                               nms=MultiClassNMS(keep_top_k=200, score_threshold=0.01, nms_threshold=0.45,
                                                 nms_top_k=400, nms_eta=1.0))
        n = x.shape[0]
        im_shape = paddle.full([n, 2], SIZE, "float32")
        bbox, bbox_num, _ = post((locs, confs), priors, im_shape, paddle.ones([n, 2], "float32"))
        return {"loc": paddle.concat(locs, 1), "conf": paddle.concat(confs, 1),
                "priors": paddle.concat(priors, 0), "nms_bbox": bbox, "nms_num": bbox_num}


class YOLOv3Ref(paddle.nn.Layer):
    ANCHORS = [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198], [373, 326]]
    MASKS = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]

    def __init__(self):
        super().__init__()
        from ppdet.modeling.backbones.mobilenet_v3 import MobileNetV3
        from ppdet.modeling.heads.yolo_head import YOLOv3Head
        from ppdet.modeling.necks.yolo_fpn import YOLOv3FPN

        # norm_type bn: the config's sync_bn is a training-time choice and computes the same in eval
        self.backbone = MobileNetV3(scale=1.0, model_name="large", feature_maps=[7, 13, 16],
                                    with_extra_blocks=False, extra_block_filters=[], norm_type="bn")
        self.neck = YOLOv3FPN(in_channels=[s.channels for s in self.backbone.out_shape], norm_type="bn")
        self.yolo_head = YOLOv3Head(in_channels=[s.channels for s in self.neck.out_shape],
                                    anchors=self.ANCHORS, anchor_masks=self.MASKS, num_classes=80, loss=None)

    def raw(self, x):
        return self.yolo_head(self.neck(self.backbone({"image": x})))

    def calibrate(self, x):
        self.neck(self.backbone({"image": x}))  # the head is plain convs; in train mode it wants targets

    def raw_outputs(self, x) -> dict:
        return {f"out{i}": o for i, o in enumerate(self.raw(x))}

    def reference(self, x):
        from ppdet.modeling.layers import MultiClassNMS, YOLOBox
        from ppdet.modeling.post_process import BBoxPostProcess

        outs = self.raw(x)
        post = BBoxPostProcess(num_classes=80,
                               decode=YOLOBox(num_classes=80, conf_thresh=0.005, downsample_ratio=32,
                                              clip_bbox=True),
                               nms=MultiClassNMS(keep_top_k=100, score_threshold=0.01, nms_threshold=0.45,
                                                 nms_top_k=1000))
        n = x.shape[0]
        im_shape = paddle.full([n, 2], SIZE, "float32")
        bbox, bbox_num, _ = post(outs, self.yolo_head.mask_anchors, im_shape, paddle.ones([n, 2], "float32"))
        res = {f"out{i}": o for i, o in enumerate(outs)}
        res.update(nms_bbox=bbox, nms_num=bbox_num)
        return res


def build(model_name: str) -> paddle.nn.Layer:
    if model_name == "ssdlite_mnv3_large_320":
        return SSDLiteRef("large")
    if model_name == "ssdlite_mnv3_small_320":
        return SSDLiteRef("small")
    if model_name == "yolov3_mnv3_large_320":
        return YOLOv3Ref()
    raise SystemExit(f"unknown model {model_name!r}")


# --------------------------------------------------------------------------------------------------
# random weights
# --------------------------------------------------------------------------------------------------
def randomize(model: paddle.nn.Layer, rng: np.random.Generator, calib: np.ndarray, fp16: bool) -> None:
    """He-normal convs, random BN affine, random biases; BN running statistics measured on real photos
    (one train-mode pass with momentum 0) and then perturbed, so eval-mode BN is non-trivial but keeps
    activations in a sane range. With fp16, every value is rounded to float16 first (the committed fixture
    stores float16 losslessly; the forward still runs in float32)."""
    bns = [m for m in model.sublayers() if isinstance(m, paddle.nn.layer.norm._BatchNormBase)]
    new = {}
    for name, p in model.named_parameters():
        shape = p.shape
        if len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith("weight"):  # BN scale
            v = rng.uniform(0.5, 1.5, shape)
        else:  # BN shift, SE and YOLO-output biases
            v = rng.normal(0.0, 0.2, shape)
        new[name] = v
    _set(model, new, fp16)
    for bn in bns:
        bn._momentum = 0.0  # running stats := this batch's stats
    model.train()
    with paddle.no_grad():
        model.calibrate(paddle.to_tensor(calib))
    model.eval()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for k in state:
        if k.endswith("._mean"):
            state[k] = state[k] + rng.normal(0.0, 0.05, state[k].shape) * np.sqrt(state[k[:-5] + "_variance"])
        elif k.endswith("._variance"):
            # floored: a near-dead channel's tiny variance would make BN amplify float32 round-off by up to
            # 1/sqrt(eps) and the parity comparison would measure conditioning instead of the mapping
            state[k] = np.maximum(state[k], 0.05) * rng.uniform(0.8, 1.25, state[k].shape)
    _set(model, state, fp16)


def _set(model, arrays: dict, fp16: bool) -> None:
    cast = (lambda a: a.astype(np.float16).astype(np.float32)) if fp16 else (lambda a: a.astype(np.float32))
    model.set_state_dict({k: paddle.to_tensor(cast(np.asarray(v))) for k, v in arrays.items()})


def save_state(model, path: Path, fp16: bool) -> None:
    if fp16:
        model.to(dtype="float16")  # parameters and BN buffers; values are already float16-exact
    paddle.save(model.state_dict(), str(path))


def write_persistables(model, out_dir: Path) -> None:
    """One LoDTensor file per variable, named with its static-graph name, serialized by Paddle itself.
    Static SSD has background at class index 0 (dygraph: last), so the class channels are reordered the
    way a static-graph model would hold them."""
    names = paddle_names_module()
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, v in model.state_dict().items():
        if k.startswith("ssd_head.scores") and k.endswith("pw_conv.weight"):
            w = v.numpy()
            a, c = w.shape[0] // 81, 81
            perm = np.concatenate([i * c + np.r_[c - 1, 0:c - 1] for i in range(a)])
            v = paddle.to_tensor(np.ascontiguousarray(w[perm]))
        paddle.save(v, str(out_dir / names.dygraph_to_static(k)), use_binary_format=True)


def write_lodtensor_samples(model, out_dir: Path) -> None:
    """A few files in Paddle's own LoDTensor serialization, small enough to commit: two model variables
    (float16 with --fp16-weights) and two known arrays of other dtypes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    for dyg, static in (("backbone.conv1.conv.weight", "conv1_weights"),
                        ("backbone.conv1.bn._variance", "conv1_bn_variance")):
        paddle.save(state[dyg], str(out_dir / static), use_binary_format=True)
    paddle.save(paddle.to_tensor(np.arange(6, dtype=np.float32).reshape(2, 3) / 4), str(out_dir / "arange_float32"),
                use_binary_format=True)
    paddle.save(paddle.to_tensor(np.arange(-2, 3, dtype=np.int64) * 10**10), str(out_dir / "arange_int64"),
                use_binary_format=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True,
                    choices=["ssdlite_mnv3_large_320", "ssdlite_mnv3_small_320", "yolov3_mnv3_large_320"])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--images", nargs="*", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp16-weights", action="store_true")
    ap.add_argument("--persistables", action="store_true")
    ap.add_argument("--lodtensor-samples", action="store_true",
                    help="also lodtensor/: 4 small files in Paddle's LoDTensor serialization")
    ap.add_argument("--compact", action="store_true",
                    help="for committed fixtures: no input.npy (recomputed from input_uint8.npy), no float32 "
                         "raw outputs, float64 raw outputs stored as float32")
    args = ap.parse_args()

    paddle.set_device("cpu")
    paddle.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    model = build(args.model)
    randomize(model, rng, normalize(load_uint8(CALIB_IMAGES)), args.fp16_weights)

    u8 = load_uint8(args.images)
    x = normalize(u8)
    with paddle.no_grad():
        res = model.reference(paddle.to_tensor(x))  # float32, Paddle's own post-processing included
    np.save(args.out / "input_uint8.npy", u8)
    if not args.compact:
        np.save(args.out / "input.npy", x)
    for k, v in res.items():
        if not args.compact or k.startswith("nms_") or k == "priors":
            np.save(args.out / f"{k}.npy", v.numpy())
    # The same network in float64: random networks amplify float32 round-off (Paddle's fp32 CPU kernels are
    # ~10x less exact than torch's on some layers), so the 1e-4 parity bound is checked in float64, where
    # only the conversion can make a difference.
    model.to(dtype="float64")
    with paddle.no_grad():
        raw64 = model.raw_outputs(paddle.to_tensor(x.astype(np.float64)))
    for k, v in raw64.items():
        np.save(args.out / f"{k}_f64.npy", v.numpy().astype(np.float32 if args.compact else np.float64))
    model.to(dtype="float32")
    save_state(model, args.out / "weights.pdparams", args.fp16_weights)  # last: may cast to float16
    if args.persistables:
        write_persistables(model, args.out / "persistables")
        # the backbone alone, as PaddleDetection's ImageNet `*_pretrained.pdparams` name it (no `backbone.`)
        paddle.save(model.backbone.state_dict(), str(args.out / "backbone.pdparams"))
    if args.lodtensor_samples:
        write_lodtensor_samples(model, args.out / "lodtensor")
    meta = {"model": args.model, "seed": args.seed, "fp16_weights": args.fp16_weights, "compact": args.compact,
            "images": [str(Path(p).resolve().relative_to(ROOT)) if Path(p).resolve().is_relative_to(ROOT)
                       else str(p) for p in args.images],
            "paddle": paddle.__version__, "background": "last" if args.model.startswith("ssdlite") else None}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps({k: list(v.shape) for k, v in res.items()}))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
