"""PaddleDetection 2.6 PP-PicoDet reference (run with `.venv-paddle/bin/python`).

Builds ppdet's own PicoDet (LCNet + LCPAN + PicoHeadV2) with the constructor arguments of
configs/picodet/*_coco_lcnet.yml at v2.6.0 (no YAML parsing: the values are spelled out in `VARIANTS`).

    .venv-paddle/bin/python tools/picodet_reference.py params [--out tests/fixtures]
        writes picodet_{xs,s,m,l}_params.tsv: every state-dict tensor (name, shape,
        learnable|fixed: BN statistics and the integral's projection are fixed) and prints
        the learnable parameter counts (tensors with stop_gradient False)
    .venv-paddle/bin/python tools/picodet_reference.py forward --model picodet_s_320 --out DIR \
        [--images a.jpg b.jpg] [--seed 0] [--fp16-weights] [--compact]
        seeded random weights with realistic BN statistics (tools/paddle_reference.py `randomize`), saved as
        weights.pdparams (`paddle.save` of the state dict, the dygraph release format), then the eval forward
        on real photos stretched to the input size (PIL bilinear, identical numpy normalisation):
        input_uint8.npy [N,S,S,3], orig_hw.npy [N,2] (the photos' sizes); in float64 (as *_f64.npy) and
        float32: scores [N,P,80] and boxes [N,P,4] (PicoHeadV2.forward_eval before NMS: probabilities,
        xyxy input pixels), reg{i} [N,32,H,W] (head_reg_list outputs, hooked); Paddle's own detections for
        the original photo sizes (scale_factor = S / original): nms_bbox [M,6] (label, score, x1, y1, x2, y2)
        and nms_num [N], both precisions. --compact (committed fixture): float64 arrays stored as float32,
        no float32 scores/boxes/reg, no reg{i}_f64.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # paddle_reference: randomize, normalize, save_state
DEFAULT_IMAGES = [ROOT / "data/coco_mini/val2017/000000000139.jpg",
                  ROOT / "data/coco_mini/val2017/000000000802.jpg"]

# configs/picodet/picodet_{v}_*_coco_lcnet.yml at v2.6.0 over _base_/picodet_v2.yml
VARIANTS = {
    "xs": dict(scale=0.35, channels=96, num_convs=2),
    "s": dict(scale=0.75, channels=96, num_convs=2),
    "m": dict(scale=1.5, channels=128, num_convs=4),
    "l": dict(scale=2.0, channels=160, num_convs=4),
}


def build(variant: str, input_size: int = 320):
    """ppdet's PicoDet architecture object, in eval mode, with ppdet's own initialisation."""
    from ppdet.modeling.architectures.picodet import PicoDet
    from ppdet.modeling.backbones.lcnet import LCNet
    from ppdet.modeling.heads.pico_head import PicoFeat, PicoHeadV2
    from ppdet.modeling.layers import MultiClassNMS
    from ppdet.modeling.losses import GIoULoss
    from ppdet.modeling.losses.gfocal_loss import DistributionFocalLoss
    from ppdet.modeling.losses.varifocal_loss import VarifocalLoss
    from ppdet.modeling.necks.lc_pan import LCPAN

    v = VARIANTS[variant]
    c = v["channels"]
    backbone = LCNet(scale=v["scale"], feature_maps=[3, 4, 5])
    neck = LCPAN(in_channels=backbone._out_channels, out_channels=c, use_depthwise=True, num_features=4,
                 spatial_scales=[0.125, 0.0625, 0.03125])  # fresh list: ppdet's default list is mutated
    feat = PicoFeat(feat_in=c, feat_out=c, num_convs=v["num_convs"], num_fpn_stride=4, norm_type="bn",
                    share_cls_reg=True, use_se=True)
    head = PicoHeadV2(conv_feat=feat, num_classes=80, fpn_stride=[8, 16, 32, 64], prior_prob=0.01,
                      reg_max=7, feat_in_chan=c, cell_offset=0.5, grid_cell_scale=5.0, use_align_head=True,
                      static_assigner_epoch=100, static_assigner=None, assigner=None,
                      loss_class=VarifocalLoss(use_sigmoid=False, iou_weighted=True, loss_weight=1.0),
                      loss_dfl=DistributionFocalLoss(loss_weight=0.5), loss_bbox=GIoULoss(loss_weight=2.5),
                      nms=MultiClassNMS(nms_top_k=1000, keep_top_k=100, score_threshold=0.025,
                                        nms_threshold=0.6),
                      eval_size=[input_size, input_size])
    model = PicoDet(backbone, neck, head)
    model.eval()
    return model


def load_photos(paths: list[Path], size: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB photos stretched to size x size (PIL bilinear) as uint8 NHWC, and their original (h, w)."""
    ims = [Image.open(p).convert("RGB") for p in paths]
    u8 = np.stack([np.asarray(im.resize((size, size), Image.BILINEAR)) for im in ims])
    return u8, np.array([[im.height, im.width] for im in ims], np.int64)


def calibrate_fn(model):
    """A train-mode pass through every BN (backbone, neck, head tower, SE, align) for `randomize`."""
    def calibrate(x):
        feats = model.neck(model.backbone({"image": x}))
        for i, f in enumerate(feats):
            cls_feat, _ = model.head.conv_feat(f, i)
            model.head.cls_align[i](cls_feat)
    return calibrate


def run_forward(model, x: np.ndarray, orig_hw: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """Paddle's eval path in `dtype`: dense outputs before NMS, hooked box logits, and its own detections."""
    import paddle

    size = x.shape[-1]
    regs = {}
    hooks = [conv.register_forward_post_hook(lambda layer, inp, out, i=i: regs.__setitem__(i, out.numpy()))
             for i, conv in enumerate(model.head.head_reg_list)]
    xt = paddle.to_tensor(x.astype(dtype))
    with paddle.no_grad():
        feats = model.neck(model.backbone({"image": xt}))
        scores, boxes = model.head.forward_eval(feats, export_post_process=True)  # [N,C,P], [N,P,4]
        for h in hooks:
            h.remove()
        scale = (size / orig_hw.astype(np.float64)).astype(dtype)  # ppdet's scale_factor: (h, w) resize ratios
        det = model({"image": xt, "im_shape": paddle.to_tensor(np.full((len(x), 2), size, dtype)),
                     "scale_factor": paddle.to_tensor(scale)})
    out = {"scores": scores.numpy().transpose(0, 2, 1), "boxes": boxes.numpy(),
           "nms_bbox": det["bbox"].numpy(), "nms_num": det["bbox_num"].numpy()}
    out.update({f"reg{i}": regs[i] for i in sorted(regs)})
    return out


def write_forward(args) -> None:
    import paddle

    from paddle_reference import CALIB_IMAGES, normalize, randomize, save_state

    variant, size = args.model.split("_")[1], int(args.model.split("_")[2])
    paddle.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    model = build(variant, size)
    model.calibrate = calibrate_fn(model)
    randomize(model, rng, normalize(load_photos(CALIB_IMAGES, size)[0]), args.fp16_weights)
    u8, orig_hw = load_photos(args.images, size)
    x = normalize(u8)
    np.save(args.out / "input_uint8.npy", u8)
    np.save(args.out / "orig_hw.npy", orig_hw)
    res32 = run_forward(model, x, orig_hw, "float32")
    model.to(dtype="float64")
    res64 = run_forward(model, x, orig_hw, "float64")
    model.to(dtype="float32")
    for k, v in res64.items():
        if args.compact and k.startswith("reg"):
            continue
        np.save(args.out / f"{k}_f64.npy", v.astype(np.float32) if args.compact and v.dtype == np.float64 else v)
    for k, v in res32.items():
        if not args.compact or k.startswith("nms_"):
            np.save(args.out / f"{k}.npy", v)
    save_state(model, args.out / "weights.pdparams", args.fp16_weights)  # last: may cast to float16
    meta = {"model": args.model, "seed": args.seed, "fp16_weights": args.fp16_weights, "compact": args.compact,
            "images": [str(Path(p).resolve().relative_to(ROOT)) if Path(p).resolve().is_relative_to(ROOT)
                       else str(p) for p in args.images],
            "orig_hw": orig_hw.tolist(), "paddle": paddle.__version__,
            "detections": [int(n) for n in res64["nms_num"]]}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


def write_params(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        model = build(variant)
        learn = {id(p) for p in model.parameters() if not p.stop_gradient}
        rows = [f"{k}\t{list(t.shape)}\t{'learnable' if id(t) in learn else 'fixed'}"
                for k, t in model.state_dict().items()]
        learnable = sum(int(p.numel()) for p in model.parameters() if not p.stop_gradient)
        path = out / f"picodet_{variant}_params.tsv"
        path.write_text("\n".join(rows) + "\n")
        print(f"picodet_{variant}: {learnable:,} learnable parameters, {len(rows)} state-dict tensors -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("params", help="state-dict name/shape TSVs of the four sizes")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    f = sub.add_parser("forward", help="random weights, photos, Paddle's outputs and detections")
    f.add_argument("--model", required=True, choices=[f"picodet_{v}_{s}" for v in VARIANTS for s in (320, 416)]
                   + ["picodet_l_640"])
    f.add_argument("--out", required=True, type=Path)
    f.add_argument("--images", nargs="*", type=Path, default=DEFAULT_IMAGES)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--fp16-weights", action="store_true")
    f.add_argument("--compact", action="store_true")
    args = ap.parse_args()
    import paddle

    paddle.set_device("cpu")
    if args.cmd == "params":
        write_params(args.out)
    else:
        write_forward(args)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
