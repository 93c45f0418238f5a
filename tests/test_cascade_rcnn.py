"""Cascade R-CNN MobileNetV3-Large FPN (spec §6): size arithmetic, components, data pipeline, overfit.

No Paddle run exists for this model (static graph only, spec §6 / paddle_reference.md), so the reference
for parameter counts and FLOPs is the spec's configuration, recomputed here by hand arithmetic from the
block table (spec §2.1) and the layer sizes of §6.3-6.5, independently of the model code.
"""
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision import tv_tensors
from torchvision.ops import FrozenBatchNorm2d

from pocketdet.config import ConfigError, load_config
from pocketdet.data.rcnn_aug import SCALE_KEY, RCNNMultiScaleCollate, build_rcnn_transforms, rcnn_scale
from pocketdet.engine.family_hooks import rcnn_hooks as train_hooks
from pocketdet.models import CascadeRCNN, build_model, pixel_boxes
from pocketdet.models.cascade_rcnn import RoIStagesExport, balanced_l1_loss

ROOT = Path(__file__).resolve().parents[1]
ZOO = {320: "cascade_rcnn_mnv3_large_fpn_320", 640: "cascade_rcnn_mnv3_large_fpn_640"}

# spec §2.1, MobileNetV3-Large rows 0..11 (k, exp, out, SE, stride); row 12 (conv14) only has its
# 112 -> 672 expand conv, whose output is C4 (spec §6.2).
LARGE_ROWS = [(3, 16, 16, False, 1), (3, 64, 24, False, 2), (3, 72, 24, False, 1), (5, 72, 40, True, 2),
              (5, 120, 40, True, 1), (5, 120, 40, True, 1), (3, 240, 80, False, 2), (3, 200, 80, False, 1),
              (3, 184, 80, False, 1), (3, 184, 80, False, 1), (3, 480, 112, True, 1), (3, 672, 112, True, 1)]
FPN_CH, MLP, CLASSES = 48, 128, 81


def spec_params() -> dict[str, int]:
    """Learnable parameters per part by hand arithmetic (frozen BN counted apart)."""
    conv, bn_ch, cin = 3 * 3 * 3 * 16, 16, 16                       # stem 3x3 s2 -> 16, BN
    for k, exp, out, se, _ in LARGE_ROWS:
        conv += cin * exp + k * k * exp + exp * out                  # expand 1x1, depthwise kxk, linear 1x1
        bn_ch += exp + exp + out
        if se:                                                       # 1x1 exp -> exp//4 -> exp, with biases
            conv += exp * (exp // 4) + exp // 4 + (exp // 4) * exp + exp
        cin = out
    conv += 112 * 672                                                # conv14 expand
    bn_ch += 672
    fpn = sum(c * FPN_CH + FPN_CH for c in (72, 240, 672))            # laterals 1x1 + bias
    fpn += 3 * (9 * FPN_CH * FPN_CH + FPN_CH)                        # P2-P4 output 3x3
    fpn += 9 * 672 * FPN_CH + FPN_CH + 9 * FPN_CH * FPN_CH + FPN_CH  # P5 from C4, P6 from ReLU(P5)
    rpn = 9 * FPN_CH * FPN_CH + FPN_CH + (FPN_CH * 3 + 3) + (FPN_CH * 12 + 12)
    stage = (FPN_CH * 49 * MLP + MLP) + (MLP * MLP + MLP) + (MLP * CLASSES + CLASSES) + (MLP * 8 + 8)
    return {"backbone": conv, "backbone_bn_channels": bn_ch, "fpn": fpn, "rpn": rpn, "roi_heads": 3 * stage}


def spec_dense_macs(h: int, w: int) -> dict[str, int]:
    """Multiply-accumulates of convolutions in the dense part for an h x w input (multiple of 64)."""
    macs = (h // 2) * (w // 2) * 27 * 16
    hh, ww, cin = h // 2, w // 2, 16
    for k, exp, out, se, s in LARGE_ROWS:
        macs += hh * ww * cin * exp                                  # expand at the input resolution
        hh, ww = hh // s, ww // s
        macs += hh * ww * (k * k * exp + exp * out)                  # depthwise (stride s) + linear
        if se:
            macs += 2 * exp * (exp // 4)
        cin = out
    macs += hh * ww * 112 * 672                                      # conv14 expand at stride 16
    lv = {lvl: (h // 2 ** lvl) * (w // 2 ** lvl) for lvl in range(2, 7)}
    fpn = lv[2] * 72 * FPN_CH + lv[3] * 240 * FPN_CH + lv[4] * 672 * FPN_CH
    fpn += (lv[2] + lv[3] + lv[4]) * 9 * FPN_CH * FPN_CH + lv[5] * 9 * 672 * FPN_CH + lv[6] * 9 * FPN_CH * FPN_CH
    rpn = sum(lv.values()) * (9 * FPN_CH * FPN_CH + FPN_CH * 3 + FPN_CH * 12)
    return {"backbone": macs, "fpn": fpn, "rpn": rpn}


def build(size: int, **over) -> CascadeRCNN:
    cfg = load_config(ZOO[size])
    return build_model({**cfg.model, **over}, num_classes=80)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size", [320, 640])
def test_param_breakdown_matches_spec_arithmetic(size):
    m = build(size)
    ref = spec_params()
    assert n_params(m.backbone) == ref["backbone"] == 855_022
    assert n_params(m.fpn) == ref["fpn"] == 420_864
    assert n_params(m.rpn) == ref["rpn"] == 21_519
    assert n_params(m.roi_heads) == ref["roi_heads"] == 987_531
    assert n_params(m) == 2_284_936
    # frozen BN: no learnable parameters; scale/offset + mean/var kept as buffers under the names `bn.*`
    frozen = [mod for mod in m.backbone.modules() if isinstance(mod, FrozenBatchNorm2d)]
    assert sum(f.weight.numel() for f in frozen) == ref["backbone_bn_channels"] == 6264
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())


@pytest.mark.parametrize("size", [320, 640])
def test_dense_flops_breakdown_matches_spec_arithmetic(size):
    m = build(size).eval()
    with torch.no_grad(), FlopCounterMode(display=False, depth=1) as fc:
        m.forward_raw(torch.zeros(1, 3, size, size))
    counts = {k: sum(v.values()) // 2 for k, v in fc.get_flop_counts().items()}  # flops = 2 x MACs
    ref = spec_dense_macs(size, size)
    assert counts["MobileNetV3"] == ref["backbone"]
    assert counts["PaddleFPN"] == ref["fpn"]
    assert counts["RPNHead"] == ref["rpn"]
    assert counts["Global"] == sum(ref.values())
    # 320: 0.347 + 0.257 + 0.183 = 0.787 GMACs; 640: just under 4x (the SE 1x1 convs act on pooled maps)
    assert sum(ref.values()) == {320: 786_799_984, 640: 3_146_125_984}[size]


def test_roi_head_flops_per_image():
    """Inference runs 5 head passes per RoI: stages 1-3 on their own RoIs, then the stage-1 and stage-2
    classifiers again on the stage-3 RoI features (spec §6.6)."""
    m = build(320).eval()
    feats = [torch.zeros(1, FPN_CH, 320 // 2 ** lvl, 320 // 2 ** lvl) for lvl in range(2, 7)]
    props = [torch.tensor([[10.0, 10.0, 200.0, 150.0]]).repeat(100, 1)]
    with FlopCounterMode(display=False) as fc:
        m.roi_heads.forward_test(m._feature_dict(feats), props, [torch.tensor([320.0, 320.0, 1.0])])
    per_pass = FPN_CH * 49 * MLP + MLP * MLP + MLP * CLASSES + MLP * 8
    assert fc.get_total_flops() // 2 == 5 * 100 * per_pass == 164_416_000


def test_backbone_taps_and_fpn_levels():
    m = build(320).eval()
    x = torch.zeros(1, 3, 320, 256)
    with torch.no_grad():
        c = m.backbone(x)
        p = m.fpn(c)
    assert [f.shape[1:] for f in c] == [(72, 80, 64), (240, 40, 32), (672, 20, 16)]
    assert list(p) == ["p2", "p3", "p4", "p5", "p6"]
    assert [tuple(v.shape[-2:]) for v in p.values()] == [(80, 64), (40, 32), (20, 16), (10, 8), (5, 4)]
    assert {v.shape[1] for v in p.values()} == {FPN_CH}
    # P5 is computed from raw C4 (672 ch), P6 from ReLU(P5)
    convs = m.fpn.fpn.extra_blocks.convs
    assert convs[0].in_channels == 672 and convs[0].stride == (2, 2) and convs[1].in_channels == FPN_CH


def test_state_dict_keeps_paddle_backbone_names():
    sd = build(320).state_dict()
    for key in ["backbone.conv1.conv.weight", "backbone.conv1.bn.weight", "backbone.conv2.expand_conv.bn.running_mean",
                "backbone.conv5.mid_se.conv1.bias", "backbone.conv14.expand_conv.conv.weight",
                "roi_heads.stages.2.bbox_pred.weight"]:
        assert key in sd, key
    assert "backbone.conv14.bottleneck_conv.conv.weight" not in sd  # conv14 is built expand-only
    assert sd["roi_heads.stages.0.fc6.weight"].shape == (MLP, FPN_CH * 49)
    assert sd["roi_heads.stages.0.bbox_pred.weight"].shape == (8, MLP)


@pytest.mark.parametrize("size,anchors", [(320, [16, 32, 64, 128, 256]), (640, [24, 48, 96, 192, 384])])
def test_anchors_one_size_per_level_centred_in_cells(size, anchors):
    m = build(size)
    feats = [torch.zeros(1, 1, 64 // 2 ** lvl, 64 // 2 ** lvl) for lvl in range(2, 7)]
    a = m.anchors_for(feats)
    per_level = [3 * f.shape[-1] * f.shape[-2] for f in feats]
    assert a.shape == (sum(per_level), 4)
    for lvl, chunk in zip(range(2, 7), a.split(per_level)):
        stride = 2 ** lvl
        ctr = (chunk[:, :2] + chunk[:, 2:]) / 2
        assert torch.allclose(ctr[0], torch.tensor([stride / 2, stride / 2]), atol=0.51)
        wh = chunk[:3, 2:] - chunk[:3, :2] + 1  # inclusive boxes, +1 widths (static anchor_generator)
        size_l = anchors[lvl - 2]
        # ratios 0.5, 1, 2 (h / w): sqrt(w*h) ~ size, h/w ~ ratio; the op rounds a stride-sized base box
        # before scaling (P2 ratio 0.5: 6 x 3 -> 24 x 12, sqrt 16.97 for size 16)
        assert torch.allclose((wh[:, 0] * wh[:, 1]).sqrt(), torch.full((3,), float(size_l)), rtol=0.065)
        assert torch.allclose(wh[:, 1] / wh[:, 0], torch.tensor([0.5, 1.0, 2.0]), rtol=0.1)


@pytest.mark.parametrize("size,expected", [
    (320, {28: 2, 56: 2, 112: 3, 224: 4, 600: 4}),   # P2-P4, canonical level 3 at 112 px
    (640, {28: 2, 56: 2, 112: 3, 224: 4, 448: 5, 900: 5}),  # P2-P5, canonical level 4 at 224 px
])
def test_roi_level_mapping(size, expected):
    """Each pooled level is filled with its level number; the pooled value reveals the level used."""
    m = build(size)
    names = m.roi_heads.box_roi_pool.featmap_names
    feats = {n: torch.full((1, FPN_CH, 1024 // 2 ** int(n[1:]), 1024 // 2 ** int(n[1:])), float(n[1:]))
             for n in names}
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in expected])
    # inclusive boxes (+1 widths): side s spans s pixels as 0..s-1
    boxes = boxes - torch.tensor([0.0, 0.0, 1.0, 1.0])
    pooled = m.roi_heads.box_roi_pool([feats[n] for n in names], [boxes])
    assert pooled[:, 0, 3, 3].tolist() == [float(v) for v in expected.values()]


def test_balanced_l1_formula_and_continuity():
    alpha, gamma, beta = 0.5, 1.5, 1.0
    b = math.exp(gamma / alpha) - 1
    d = torch.tensor([0.0, 0.3, -0.7, 1.0, 2.5])
    got = balanced_l1_loss(d, torch.zeros_like(d), alpha, gamma, beta)
    x = d.abs()
    small = alpha / b * (b * x + 1) * torch.log(b * x / beta + 1) - alpha * x
    large = gamma * x + gamma / b - alpha * beta
    assert torch.allclose(got, torch.where(x < beta, small, large))
    eps = 1e-4  # the two branches meet at |d| = beta (that is how b is chosen)
    left = balanced_l1_loss(torch.tensor([beta - eps]), torch.zeros(1), alpha, gamma, beta)
    assert abs(float(left) - float(got[3])) < 1e-3


def test_rpn_ignores_anchors_crossing_the_image_border():
    m = build(320)
    anchors = torch.tensor([[-8.0, 10, 40, 50], [10, 10, 60, 60], [200, 100, 330, 180], [100, 100, 140, 140]])
    target = {"boxes": torch.tensor([[12.0, 12, 58, 58]]), "labels": torch.tensor([0]),
              "image_size": torch.tensor([240, 320])}
    labels, matched = m.rpn.assign_targets_to_anchors([anchors], [target])
    # outside (x1 < 0, x2 > 320): ignored (-1); the overlapping inside anchor positive; the far one negative
    assert labels[0].tolist() == [-1.0, 1.0, -1.0, 0.0]
    assert torch.equal(matched[0][1], target["boxes"][0])


def test_cascade_assignment_stage1_samples_later_stages_keep_all():
    m = build(320)
    heads = m.roi_heads
    gt = torch.tensor([[10.0, 10, 110, 110], [150, 150, 250, 200]])
    t = {"boxes": gt, "labels": torch.tensor([3, 7])}
    # proposals that overlap no GT: the only foreground candidates are the GT boxes put in front (Paddle)
    far = torch.tensor([[260.0, 0, 300, 40]]).repeat(600, 1)
    rois, labels, _, max_iou = heads.assign(0, far, None, t)
    # RoIs are inclusive boxes (static +1 convention): the GT [x1, x2) enters as [x1, x2 - 1]
    gt_incl = pixel_boxes.to_inclusive(gt)
    assert len(rois) == 512 and torch.equal(rois[labels > 0], gt_incl) and labels[labels > 0].tolist() == [4, 8]
    # random proposals: 512 sampled, at most 25% foreground, foreground exactly the IoU >= 0.5 ones
    torch.manual_seed(0)
    xy = torch.rand(2000, 2) * 250
    props = torch.cat([xy, xy + 10 + torch.rand(2000, 2) * 60], 1)
    rois, labels, reg, max_iou = heads.assign(0, props, None, t)
    fg = labels > 0
    assert len(rois) == 512 and 0 < int(fg.sum()) <= 128
    assert (max_iou[fg] >= 0.5).all() and (max_iou[~fg] < 0.5).all()
    # regression targets encode the matched GT with stage-1 weights (10,10,5,5): decoding gives it back
    dec = heads.box_coders[0].decode_single(reg[fg], pixel_boxes.to_continuous(rois[fg]))
    assert torch.allclose(dec, gt[(labels[fg] == 8).long()], atol=1e-3)
    # and the inference decode (+1 convention, inclusive RoIs) inverts them to the inclusive GT
    assert torch.allclose(heads.decode(0, reg[fg], rois[fg]), gt_incl[(labels[fg] == 8).long()], atol=1e-3)
    # stage 2 (Paddle is_cascade_rcnn): earlier GT copies (max IoU 1) dropped, GT put back once, no sampling
    rois2, labels2, reg2, max_iou2 = heads.assign(1, rois, max_iou, t)
    assert len(rois2) == len(rois) - int((max_iou >= 1).sum()) + len(gt)
    assert torch.equal(rois2[: int((labels2 > 0).sum())][(max_iou2[labels2 > 0] >= 1)], gt_incl)
    assert ((max_iou2 >= 0.6) == (labels2 > 0)).all()
    dec2 = heads.box_coders[1].decode_single(reg2[labels2 > 0], pixel_boxes.to_continuous(rois2[labels2 > 0]))
    assert torch.allclose(dec2, gt[(labels2[labels2 > 0] == 8).long()], atol=1e-3)


def _real_images(n=2):
    from pocketdet.data import CocoDetection

    ds = CocoDetection(ROOT / "data/coco128/images/train2017",
                       ROOT / "data/coco128/annotations/instances_train2017.json")
    out = [ds[i] for i in range(1, 1 + n)]
    return [(im, {**t, "boxes": t["boxes"], "labels": t["labels"]}) for im, t in out]


@pytest.mark.parametrize("size", [320, 640])
def test_train_losses_finite_and_eval_outputs(size):
    torch.manual_seed(0)
    m = build(size)
    samples = _real_images(2)
    images = [im.as_subclass(torch.Tensor).float() / 255 for im, _ in samples]
    targets = [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for _, t in samples]
    m.calibrate_frozen_norm(images)
    m.train()
    losses = m(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_reg"} | {f"loss_{k}_stage{i}" for k in ("cls", "box")
                                                               for i in (1, 2, 3)}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in (m.backbone, m.fpn, m.rpn, m.roi_heads):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    # stage weights 1, 0.5, 0.25 on softmax CE: at init (uniform over 81 classes) each ~ w * ln(81)
    assert abs(float(losses["loss_cls_stage1"].detach()) / float(losses["loss_cls_stage3"].detach()) - 4.0) < 0.2
    m.eval()
    # a very low threshold so the untrained model returns detections whose geometry can be checked
    m.postprocess_cfg["score_thresh"] = 0.0
    outs = m(images)
    for o, im in zip(outs, images):
        h, w = im.shape[-2:]
        assert set(o) == {"boxes", "scores", "labels"}
        assert 0 < len(o["boxes"]) <= 100 and o["boxes"].shape[1] == 4
        assert o["labels"].dtype == torch.long and int(o["labels"].max()) < 80
        assert (o["boxes"][:, 0] >= 0).all() and (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all()
        assert (o["scores"][:-1] >= o["scores"][1:]).all()


def test_eval_resize_keeps_aspect_long_side_and_pads_to_32():
    m = build(320)
    assert m.resized_size(480, 640) == (240, 320)
    assert m.resized_size(640, 427) == (320, 214)   # 213.5 rounds half to even, like cv2
    x, sizes = m.resize_images([torch.rand(3, 480, 640), torch.rand(3, 640, 427)])
    assert sizes == [(480, 640), (640, 427)] and x.shape == (2, 3, 320, 320)
    x, _ = m.resize_images([torch.rand(3, 100, 300)])
    assert x.shape == (1, 3, 128, 320)   # 107 x 320 -> padded to 128 x 320
    # normalisation happens before padding: padded pixels are exactly 0 after it (Paddle PadBatch)
    xn = m._normalize_padded(x, [m.resized_size(100, 300)])
    assert xn[:, :, 107:].abs().max() == 0 and xn[:, :, :107].abs().max() > 0


def test_rcnn_collate_multiscale_resize_and_pad():
    assert rcnn_scale(480, 640, 288, 512) == pytest.approx(0.6)
    assert rcnn_scale(200, 1000, 384, 512) == pytest.approx(0.512)     # long side capped at 512
    collate = RCNNMultiScaleCollate([224, 256, 288, 320, 352, 384], 512)
    img = tv_tensors.Image(torch.randint(0, 255, (3, 480, 640), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[64.0, 48, 320, 240]]), format="XYXY", canvas_size=(480, 640))
    t = {"boxes": boxes, "labels": torch.tensor([2]), "image_id": 7}
    batch = [(img, {**t, SCALE_KEY: torch.tensor(0.0)}), (img, {**t, SCALE_KEY: torch.tensor(0.99)})]
    x, targets = collate(batch)
    assert [tuple(tt["image_size"].tolist()) for tt in targets] == [(224, 299), (384, 512)]
    assert x.shape == (2, 3, 384, 512) and x.dtype == torch.float32 and float(x.max()) <= 1.0
    assert x[0, :, 224:].abs().max() == 0 and x[0, :, :, 299:].abs().max() == 0   # zero padding
    assert torch.allclose(targets[1]["boxes"], torch.tensor([[51.2, 38.4, 256.0, 192.0]]))
    assert SCALE_KEY not in targets[0] and targets[0]["image_id"] == 7


def test_rcnn_transforms_draw_scale_under_the_sample_seed():
    tf = build_rcnn_transforms()
    img = tv_tensors.Image(torch.randint(0, 255, (3, 40, 60), dtype=torch.uint8))
    t = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[5.0, 5, 20, 30]]), format="XYXY", canvas_size=(40, 60)),
         "labels": torch.tensor([1])}
    torch.manual_seed(3)
    _, a = tf(img, t)
    torch.manual_seed(3)
    _, b = tf(img, t)
    assert float(a[SCALE_KEY]) == float(b[SCALE_KEY])


def test_collated_batch_gives_the_same_loss_as_the_models_own_resize():
    """The collate configured like Paddle's eval resize (target 320, max 320) reproduces the model's own
    resize path exactly."""
    m = build(320)
    samples = _real_images(2)   # 640x426 and 640x428 -> long side 320
    collate = RCNNMultiScaleCollate([320], 320)
    x, tg = collate(samples)
    images = [im.as_subclass(torch.Tensor).float() / 255 for im, _ in samples]
    targets = [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for _, t in samples]
    assert [tuple(t["image_size"].tolist()) for t in tg] == [m.resized_size(*im.shape[-2:]) for im in images]
    m.train()
    torch.manual_seed(0)
    a = m(list(x), tg)
    torch.manual_seed(0)
    b = m(images, targets)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


def test_zoo_configs_and_train_hooks():
    c320, c640 = load_config(ZOO[320]), load_config(ZOO[640])
    assert c320.train.batch_size == 2 and c320.train.reference_batch == 16 and c320.train.augment == "rcnn"
    assert c320.model["lr_mult_list"] == [0.25, 0.25, 0.5, 0.5, 0.75] and c640.model["lr_mult_list"] == [1.0] * 5
    hooks = train_hooks(c640)
    assert hooks["collate_fn"].short_sizes == list(range(416, 673, 32)) and hooks["collate_fn"].max_size == 1000
    broken = c320.model_copy(deep=True)
    broken.train.extra.pop("max_size")
    with pytest.raises(ConfigError, match="train.extra.max_size"):
        train_hooks(broken)
    m = build_model(c320.model, num_classes=80)
    mults = m.param_lr_mults()
    assert mults["backbone.conv14"] == 0.75 and mults["roi_heads.stages.2."] == 4.0


def test_roi_export_module_matches_model_inference():
    torch.manual_seed(0)
    m = build(320).eval()
    m.calibrate_frozen_norm([torch.rand(3, 240, 320)])
    x = m._normalize_padded(torch.rand(1, 3, 256, 320), [(240, 320)])
    feats, _, _ = m.forward_raw(x)
    rois = torch.tensor([[5.0, 10, 60, 100], [50, 60, 300, 200], [0, 0, 320, 240], [100, 100, 120, 130]])
    info = m.image_info(480, 640)
    ref = m.roi_heads.forward_test(m._feature_dict(feats), [rois], [info])[0]
    scores, boxes = RoIStagesExport(m)(*feats[:3], rois, info)
    assert torch.allclose(scores, ref["scores"], atol=1e-6) and torch.allclose(boxes, ref["boxes"], atol=1e-4)


OVERFIT_SCHEDULES = (60, 120)  # iterations: the first try, then the cap


def _overfit_module():
    spec = importlib.util.spec_from_file_location("overfit_cascade", ROOT / "benchmarks" / "overfit_cascade.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def overfit_result():
    """The short version of benchmarks/overfit_cascade.py: 2 photos, 60 iterations, trained here (~45 s of
    CPU time). In development runs AP50 reached 1.0 by iteration 50 at 1 and 2 threads. CPUs differ in float
    kernels and so in trajectory: a run that misses the target is repeated once with a longer schedule (the
    step cap), so the test asks whether the model fits, not how fast on this CPU."""
    for iters in OVERFIT_SCHEDULES:
        res = _overfit_module().run_overfit(num_images=2, iters=iters, lr=1e-3, max_boxes=4)
        if res["ap50"] >= 0.8:
            break
    return res


def test_overfit_reaches_ap50(overfit_result):
    assert overfit_result["first_loss"] > 3 * overfit_result["last_loss"]
    assert overfit_result["ap50"] >= 0.8, overfit_result


def test_cascade_stages_keep_or_improve_localisation(overfit_result):
    rpn, s1, s2, s3 = overfit_result["stage_ious"]
    tol = 0.01
    assert s1 > rpn and s2 >= s1 - tol and s3 >= s2 - tol, overfit_result["stage_ious"]
