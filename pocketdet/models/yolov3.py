"""YOLOv3 as PaddleDetection's static configs build it (spec §4 and §5).

Backbones: MobileNetV3-Large (`yolov3_mobilenet_v3.yml`, C3/C4/C5 = outputs of conv7/conv13/conv16) and
ResNet-34 (`yolov3_r34.yml`, the distillation teacher, C3/C4/C5 = res3/res4/res5).

Module names follow Paddle's dygraph port (`neck.yolo_block.0.conv_module.conv0.conv.weight`,
`...batch_norm...`, `neck.yolo_transition.0`, `yolo_head.yolo_output.0`), so the dygraph state dict maps
by renaming BN statistics alone. The static graph (whose names the seed's pruning command uses) names the
same layers `yolo_block.i.j.k`; `STATIC_TO_MODULE` / `static_param_to_torch` translate.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from .base import DetectionModel
from .common import ConvBNLayer
from .mobilenetv3 import MobileNetV3, Tap
from .resnet import ResNet
from .ssdlite import nms_per_class

COCO_ANCHORS = [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198], [373, 326]]
COCO_ANCHOR_MASKS = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]  # coarse (stride 32) to fine (stride 8)
BACKBONES = ("mobilenet_v3_large", "resnet34")

# Static-graph conv name inside a detection block -> dygraph/pocketdet name inside `conv_module`
# (`yolo_block.i.{j}.{k}`: conv pair j, k = 0 the 1x1, k = 1 the 3x3; `.2` the route; `.tip` separate).
_STATIC_BLOCK_CONVS = OrderedDict([("0.0", "conv0"), ("0.1", "conv1"), ("1.0", "conv2"), ("1.1", "conv3"),
                                   ("2", "route")])


def _static_block_map(num_blocks: int = 3) -> dict[str, str]:
    """`yolo_block.i.j.k` / `yolo_block.i.tip` -> the ConvBNLayer's module name in `YOLOv3`."""
    out = {}
    for i in range(num_blocks):
        for static, ours in _STATIC_BLOCK_CONVS.items():
            out[f"yolo_block.{i}.{static}"] = f"neck.yolo_block.{i}.conv_module.{ours}"
        out[f"yolo_block.{i}.tip"] = f"neck.yolo_block.{i}.tip"
    return out


STATIC_TO_MODULE: dict[str, str] = _static_block_map()

# The 18 parameters the seed's prune command names (README `--pruned_params`), mapped to the nn.Conv2d
# module (append `.weight` for the parameter). Pruning and the weight converter use this.
PRUNE_NAME_MAP: dict[str, str] = {f"{k}.conv.weights": f"{v}.conv" for k, v in STATIC_TO_MODULE.items()}

_BN_SUFFIX = {"scale": "weight", "offset": "bias", "mean": "running_mean", "var": "running_var"}


def static_param_to_torch(name: str) -> str:
    """Translate a static-graph head parameter name to the pocketdet state-dict key.

    `yolo_block.1.0.1.conv.weights` -> `neck.yolo_block.1.conv_module.conv1.conv.weight`,
    `yolo_block.0.tip.bn.mean` -> `neck.yolo_block.0.tip.batch_norm.running_mean`,
    `yolo_transition.0.bn.scale` -> `neck.yolo_transition.0.batch_norm.weight`,
    `yolo_output.2.conv.bias` -> `yolo_head.yolo_output.2.bias`.
    """
    m = re.fullmatch(r"yolo_output\.(\d+)\.conv\.(weights|bias)", name)
    if m:
        return f"yolo_head.yolo_output.{m[1]}.{'weight' if m[2] == 'weights' else 'bias'}"
    m = re.fullmatch(r"(yolo_block\.\d+\.[\w.]+|yolo_transition\.\d+)\.(conv\.weights|bn\.(\w+))", name)
    layer = None if not m else STATIC_TO_MODULE.get(m[1]) if m[1].startswith("yolo_block") else f"neck.{m[1]}"
    if layer is None or (m[3] is not None and m[3] not in _BN_SUFFIX):
        raise KeyError(f"not a static YOLOv3 head parameter name: {name!r}")
    return f"{layer}.conv.weight" if m[3] is None else f"{layer}.batch_norm.{_BN_SUFFIX[m[3]]}"


def default_block_widths(num_blocks: int = 3) -> list[list[int]]:
    """Output widths of [conv0, conv1, conv2, conv3, route, tip] per block: ch, 2ch, ch, 2ch, ch, 2ch with
    ch = 512 / 2^i (spec §4.2). FPGM pruning shrinks them (spec §5.1)."""
    return [[c, 2 * c, c, 2 * c, c, 2 * c] for c in (512 // 2 ** i for i in range(num_blocks))]


def _cbl(in_ch: int, out_ch: int, k: int) -> ConvBNLayer:
    # conv (no bias) -> BN (named batch_norm, as Paddle's dygraph YOLO neck) -> LeakyReLU(0.1)
    return ConvBNLayer(in_ch, out_ch, k, act="leaky", bn_name="batch_norm")


class YoloDetBlock(nn.Module):
    """Two (1x1, 3x3) conv pairs and the 1x1 route in `conv_module`, then the 3x3 `tip`."""

    def __init__(self, in_ch: int, widths: list[int]):
        super().__init__()
        if len(widths) != 6:
            raise ValueError(f"a YOLO detection block needs 6 widths (conv0-3, route, tip), got {widths}")
        c0, c1, c2, c3, route, tip = widths
        self.conv_module = nn.Sequential(OrderedDict([
            ("conv0", _cbl(in_ch, c0, 1)), ("conv1", _cbl(c0, c1, 3)),
            ("conv2", _cbl(c1, c2, 1)), ("conv3", _cbl(c2, c3, 3)), ("route", _cbl(c3, route, 1))]))
        self.tip = _cbl(route, tip, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        route = self.conv_module(x)
        return route, self.tip(route)


class YOLOv3FPN(nn.Module):
    """Coarse-to-fine detection blocks; block i>0 takes concat(upsample(transition(route)), C_{5-i})."""

    def __init__(self, in_channels: list[int], block_widths: list[list[int]]):
        super().__init__()
        n = len(in_channels)
        if len(block_widths) != n:
            raise ValueError(f"{len(block_widths)} block widths given for {n} feature levels")
        self.yolo_block = nn.ModuleList()
        self.yolo_transition = nn.ModuleList()
        upsampled = 0
        for i, c in enumerate(reversed(in_channels)):  # C5 first
            self.yolo_block.append(YoloDetBlock(upsampled + c, block_widths[i]))
            if i < n - 1:
                upsampled = 256 // 2 ** i  # transition widths 256, 128: never pruned (spec §5.1)
                self.yolo_transition.append(_cbl(block_widths[i][4], upsampled, 1))
        self.out_channels = [w[5] for w in block_widths]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        tips, route = [], None
        for i, f in enumerate(reversed(feats)):
            if route is not None:
                # Static Paddle uses resize_nearest(align_corners=True); for an exact x2 upscale its source
                # index round(i*(n-1)/(2n-1)) equals floor(i/2), i.e. plain nearest (tested).
                f = torch.cat([F.interpolate(route, scale_factor=2.0, mode="nearest"), f], 1)
            route, tip = self.yolo_block[i](f)
            tips.append(tip)
            if i < len(self.yolo_transition):
                route = self.yolo_transition[i](route)
        return tips


class YOLOv3Head(nn.Module):
    """One 1x1 conv with bias per level: A * (5 + C) channels ordered [x, y, w, h, obj, cls...] per anchor."""

    def __init__(self, in_channels: list[int], anchors_per_level: list[int], num_classes: int):
        super().__init__()
        self.yolo_output = nn.ModuleList(
            nn.Conv2d(c, a * (5 + num_classes), 1) for c, a in zip(in_channels, anchors_per_level))

    def forward(self, tips: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(t) for conv, t in zip(self.yolo_output, tips)]


def build_backbone(name: str) -> nn.Module:
    if name == "mobilenet_v3_large":
        # C3 = conv7 out (40 ch, s8), C4 = conv13 out (112, s16), C5 = conv16 out (160, s32) (spec §4.1)
        return MobileNetV3("large", 1.0, 1.0, taps=[Tap("out", 5), Tap("out", 11), Tap("out", 14)])
    if name == "resnet34":
        return ResNet(34, return_stages=(3, 4, 5))  # 128 / 256 / 512 ch (spec §5.2)
    raise ValueError(f"unknown YOLOv3 backbone {name!r}; expected one of {', '.join(BACKBONES)}")


class YOLOv3(DetectionModel):
    arch = "yolov3"

    def __init__(self, backbone: str = "mobilenet_v3_large", num_classes: int = 80, class_names=None,
                 input_size: int = 320, anchors=COCO_ANCHORS, anchor_masks=COCO_ANCHOR_MASKS,
                 downsample_ratios=(32, 16, 8), ignore_thresh: float = 0.7, label_smooth: bool = False,
                 block_widths: list[list[int]] | None = None, conf_thresh: float = 0.01,
                 score_thresh: float = 0.01, nms_thresh: float = 0.45, nms_top_k: int = 1000,
                 keep_top_k: int = 100, clip_bbox: bool = True):
        super().__init__(num_classes, class_names, input_size)
        self.backbone_name = backbone
        self.anchors = [list(map(float, a)) for a in anchors]
        self.anchor_masks = [list(map(int, m)) for m in anchor_masks]
        self.downsample_ratios = [int(d) for d in downsample_ratios]
        self.multiscale_multiple = max(self.downsample_ratios)  # RandomShape sizes (spec §4.5) train as they are
        if len(self.anchor_masks) != len(self.downsample_ratios):
            raise ValueError(f"{len(self.anchor_masks)} anchor masks for {len(self.downsample_ratios)} "
                             "downsample ratios")
        if any(not 0 <= i < len(self.anchors) for m in self.anchor_masks for i in m):
            raise ValueError(f"anchor_masks {self.anchor_masks} index outside the {len(self.anchors)} anchors")
        if input_size % max(self.downsample_ratios):
            raise ValueError(f"input_size {input_size} must be a multiple of {max(self.downsample_ratios)}")
        self.ignore_thresh = float(ignore_thresh)
        self.label_smooth = bool(label_smooth)
        self.clip_bbox = bool(clip_bbox)
        self.backbone = build_backbone(backbone)
        if len(self.backbone.channels) != len(self.anchor_masks):
            raise ValueError("the backbone emits 3 levels; anchor_masks must have 3 entries")
        self.block_widths = [list(w) for w in (block_widths or default_block_widths(len(self.anchor_masks)))]
        self.neck = YOLOv3FPN(self.backbone.channels, self.block_widths)
        self.yolo_head = YOLOv3Head(self.neck.out_channels, [len(m) for m in self.anchor_masks], num_classes)
        self.register_buffer("anchor_wh", torch.tensor(self.anchors, dtype=torch.float32), persistent=False)
        self.postprocess_cfg = dict(conf_thresh=conf_thresh, score_thresh=score_thresh, nms_thresh=nms_thresh,
                                    nms_top_k=nms_top_k, keep_top_k=keep_top_k)
        self._init_weights()

    def _init_weights(self):
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # fluid's conv2d default initializer is Normal(0, sqrt(2 / fan_in)), bias 0: the static head sets none
        for m in [*self.neck.modules(), *self.yolo_head.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- network ----------------------------------------------------------------------------------
    def forward_raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw head maps, coarse to fine: [N, A*(5+C), H/32, W/32], [.., H/16, ..], [.., H/8, ..]."""
        return self.yolo_head(self.neck(self.backbone(x)))

    # -- training ---------------------------------------------------------------------------------
    def compute_loss(self, x: torch.Tensor, targets) -> dict[str, torch.Tensor]:
        return self.yolo_loss(self.forward_raw(x), targets, (int(x.shape[-2]), int(x.shape[-1])))

    @staticmethod
    def pad_targets(targets, device) -> dict[str, torch.Tensor]:
        """Stack per-image targets into [N, B, ...] tensors with a validity mask (B = most boxes)."""
        n, b = len(targets), max([len(t["boxes"]) for t in targets] + [1])
        boxes = torch.zeros(n, b, 4, device=device)
        labels = torch.zeros(n, b, dtype=torch.long, device=device)
        scores = torch.zeros(n, b, device=device)
        valid = torch.zeros(n, b, dtype=torch.bool, device=device)
        for i, t in enumerate(targets):
            k = len(t["boxes"])
            if k == 0:
                continue
            boxes[i, :k] = torch.as_tensor(t["boxes"], device=device).float().reshape(k, 4)
            labels[i, :k] = torch.as_tensor(t["labels"], device=device).long()
            sc = t.get("scores")
            scores[i, :k] = 1.0 if sc is None else torch.as_tensor(sc, device=device).float()
            valid[i, :k] = True
        return {"boxes": boxes, "labels": labels, "scores": scores, "valid": valid}

    def yolo_loss(self, outputs: list[torch.Tensor], targets, input_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """fluid `yolov3_loss` per level (spec §4.3), summed over levels; each term is summed per image and
        averaged over the batch. `targets[i]["boxes"]` are xyxy pixels of the network input; optional
        `scores` (mixup weights) scale every loss term of their GT."""
        outputs = [o.float() for o in outputs]  # under autocast: exp() and the sums need fp32
        dev = outputs[0].device
        n = outputs[0].shape[0]
        in_h, in_w = input_hw
        gt = self.pad_targets(targets, dev)
        xyxy = gt["boxes"]
        wh = xyxy[..., 2:] - xyxy[..., :2]
        ctr = (xyxy[..., :2] + xyxy[..., 2:]) / 2
        norm_wh = wh / torch.tensor([in_w, in_h], device=dev, dtype=wh.dtype)
        # Paddle drops GTs whose normalised w or h is below 1e-6 (GtValid)
        valid = gt["valid"] & (norm_wh > 1e-6).all(-1) & (gt["labels"] >= 0) & (gt["labels"] < self.num_classes)
        bad = gt["valid"] & ((gt["labels"] < 0) | (gt["labels"] >= self.num_classes))
        if bad.any():
            raise ValueError(f"target label out of range 0..{self.num_classes - 1}: "
                             f"{gt['labels'][bad].unique().tolist()}")

        # best of all anchors by w/h IoU (boxes aligned at a common centre); argmax keeps the first of ties as
        # the op's strict `>` does
        anchors = self.anchor_wh.to(dev)
        inter = torch.minimum(wh[..., None, 0], anchors[:, 0]) * torch.minimum(wh[..., None, 1], anchors[:, 1])
        shape_iou = inter / (wh.prod(-1, keepdim=True) + anchors.prod(-1) - inter).clamp(min=1e-12)
        best_anchor = shape_iou.argmax(-1)  # [N, B]

        # the op's label smoothing: positive 1 - w, negative w, w = min(1/C, 1/40) (1/80 for COCO)
        smooth = min(1.0 / self.num_classes, 1.0 / 40) if self.label_smooth else 0.0
        pos_t, neg_t = 1.0 - smooth, smooth

        zero = outputs[0].new_zeros(())
        loss_xy, loss_wh, loss_obj, loss_cls = zero, zero, zero, zero
        for out, mask, ds in zip(outputs, self.anchor_masks, self.downsample_ratios):
            a_n, (h, w) = len(mask), out.shape[-2:]
            if h * ds != in_h or w * ds != in_w:
                raise ValueError(f"head map {h}x{w} at stride {ds} does not match the input {in_h}x{in_w}")
            p = out.view(n, a_n, 5 + self.num_classes, h, w)
            level_anchors = anchors[mask]  # [A, 2]

            # objectness target: 0 = negative, -1 = ignored, > 0 = positive weighted by its GT score
            obj_t = self._ignore_mask(p, level_anchors, ds, xyxy, valid).to(p.dtype).neg()

            local = torch.full((len(self.anchors),), -1, dtype=torch.long, device=dev)
            local[torch.tensor(mask, device=dev)] = torch.arange(a_n, device=dev)
            owned = valid & (local[best_anchor] >= 0)
            bi, gi_ = owned.nonzero(as_tuple=True)
            if bi.numel():
                a = local[best_anchor[bi, gi_]]
                c = ctr[bi, gi_] / ds  # centre in grid units
                cell = c.long()
                cell[:, 0].clamp_(0, w - 1)  # Paddle does not clamp; a centre on the far edge would overflow
                cell[:, 1].clamp_(0, h - 1)
                score = gt["scores"][bi, gi_]
                box_w = (2.0 - norm_wh[bi, gi_].prod(-1)) * score
                pred = p[bi, a, :, cell[:, 1], cell[:, 0]]  # [P, 5 + C]
                t_xy = c - cell
                t_wh = torch.log(wh[bi, gi_] / anchors[best_anchor[bi, gi_]])
                xy = F.binary_cross_entropy_with_logits(pred[:, :2], t_xy, reduction="none").sum(1)
                loss_xy = loss_xy + (xy * box_w).sum()
                loss_wh = loss_wh + ((pred[:, 2:4] - t_wh).abs().sum(1) * box_w).sum()
                cls_t = torch.full_like(pred[:, 5:], neg_t)
                cls_t[torch.arange(len(bi), device=dev), gt["labels"][bi, gi_]] = pos_t
                cls = F.binary_cross_entropy_with_logits(pred[:, 5:], cls_t, reduction="none").sum(1)
                loss_cls = loss_cls + (cls * score).sum()
                # positives override "ignored"; with two GTs on one cell/anchor the op keeps the last one's score
                obj_t[bi, a, cell[:, 1], cell[:, 0]] = score.to(obj_t.dtype)

            logit = p[:, :, 4]
            pos = obj_t > 1e-5
            neg = (obj_t > -0.5) & ~pos
            loss_obj = loss_obj + (F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit),
                                                                      reduction="none") * obj_t)[pos].sum()
            loss_obj = loss_obj + F.binary_cross_entropy_with_logits(logit[neg], torch.zeros_like(logit[neg]),
                                                                     reduction="sum")
        return {"loss_xy": loss_xy / n, "loss_wh": loss_wh / n, "loss_obj": loss_obj / n, "loss_cls": loss_cls / n}

    @torch.no_grad()
    def _ignore_mask(self, p: torch.Tensor, level_anchors: torch.Tensor, ds: int, gt_xyxy: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
        """[N, A, H, W] bool: predicted boxes whose best IoU with any GT of their image is > ignore_thresh."""
        n, a_n, _, h, w = p.shape
        boxes = self._decode_level(p, level_anchors, ds).reshape(n, -1, 4)
        ignore = torch.zeros(n, a_n * h * w, dtype=torch.bool, device=p.device)
        for i in range(n):
            if valid[i].any():
                ignore[i] = box_iou(boxes[i].float(), gt_xyxy[i][valid[i]]).amax(1) > self.ignore_thresh
        return ignore.view(n, a_n, h, w)

    @staticmethod
    def _decode_level(p: torch.Tensor, level_anchors: torch.Tensor, ds: int) -> torch.Tensor:
        """[N, A, 5+C, H, W] raw -> [N, A, H, W, 4] xyxy boxes in input pixels (yolo_box geometry)."""
        h, w = p.shape[-2:]
        gy, gx = torch.meshgrid(torch.arange(h, device=p.device, dtype=p.dtype),
                                torch.arange(w, device=p.device, dtype=p.dtype), indexing="ij")
        cx = (gx + p[:, :, 0].sigmoid()) * ds
        cy = (gy + p[:, :, 1].sigmoid()) * ds
        bw = p[:, :, 2].exp() * level_anchors[:, 0].view(1, -1, 1, 1)
        bh = p[:, :, 3].exp() * level_anchors[:, 1].view(1, -1, 1, 1)
        return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)

    # -- inference ----------------------------------------------------------------------------------
    def decode(self, raw: list[torch.Tensor], input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """yolo_box on all levels: boxes [N, P, 4] xyxy in input pixels and scores [N, P, C] =
        sigmoid(obj) * sigmoid(cls), zeroed where sigmoid(obj) < conf_thresh. P runs level by level, then
        anchor, row, column (Paddle's order)."""
        all_boxes, all_scores = [], []
        anchors = self.anchor_wh.to(raw[0].device)
        for out, mask, ds in zip(raw, self.anchor_masks, self.downsample_ratios):
            n, _, h, w = out.shape
            p = out.view(n, len(mask), 5 + self.num_classes, h, w)
            boxes = self._decode_level(p, anchors[mask], input_hw[0] // h)
            obj = p[:, :, 4].sigmoid()
            scores = obj[:, :, None] * p[:, :, 5:].sigmoid()
            scores = scores * (obj >= self.postprocess_cfg["conf_thresh"])[:, :, None]
            all_boxes.append(boxes.reshape(n, -1, 4))
            all_scores.append(scores.permute(0, 1, 3, 4, 2).reshape(n, -1, self.num_classes))
        return torch.cat(all_boxes, 1), torch.cat(all_scores, 1)

    def boxes_in_images(self, raw, sizes) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """yolo_box per image: (boxes [P,4] xyxy in that image's pixels, scores [P,C]), before NMS. The input
        was the image stretched to the network size (aspect not kept); boxes are clipped to
        [0, W-1] x [0, H-1] as Paddle's yolo_box(clip_bbox=True) does."""
        in_hw = (raw[0].shape[-2] * self.downsample_ratios[0], raw[0].shape[-1] * self.downsample_ratios[0])
        boxes, scores = self.decode(raw, in_hw)
        out = []
        for b, s, (h, w) in zip(boxes, scores, sizes):
            b = b * torch.tensor([w / in_hw[1], h / in_hw[0]] * 2, device=b.device, dtype=b.dtype)
            if self.clip_bbox:
                b = torch.stack([b[:, 0].clamp(0, w - 1), b[:, 1].clamp(0, h - 1),
                                 b[:, 2].clamp(0, w - 1), b[:, 3].clamp(0, h - 1)], 1)
            out.append((b, s))
        return out

    def postprocess(self, raw, sizes):
        """yolo_box, then class-aware NMS (spec §4.4: per class the nms_top_k best above score_thresh, IoU
        nms_thresh, keep_top_k overall). Paddle's NMS (normalized=false) measures areas with +1 pixel;
        torchvision's batched_nms does not."""
        return [nms_per_class(b, s, self.postprocess_cfg, (1, 1))  # (1, 1): boxes are already pixels
                for b, s in self.boxes_in_images(raw, sizes)]
