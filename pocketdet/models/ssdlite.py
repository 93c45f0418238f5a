"""SSDLite with a MobileNetV3 backbone, as PaddleDetection's static configs (spec §3)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou

from .base import DetectionModel
from .box_ops import decode_boxes, encode_boxes
from .mobilenetv3 import MobileNetV3, ssdlite_taps

VARIANCE = (0.1, 0.1, 0.2, 0.2)


def ssd_prior_sizes(base_size: int = 320, min_ratio: int = 20, max_ratio: int = 95, levels: int = 6):
    """min/max sizes as Paddle's SSD config computes them (spec §3.2)."""
    step = int(math.floor((max_ratio - min_ratio) / (levels - 2)))
    mins, maxs = [base_size * 0.1], [base_size * 0.2]
    for r in range(min_ratio, max_ratio + 1, step):
        mins.append(base_size * r / 100.0)
        maxs.append(base_size * (r + step) / 100.0)
    return mins[:levels], maxs[:levels]


def expand_aspect_ratios(ars: list[float]) -> list[float]:
    out = [1.0]
    for ar in ars:
        for a in (ar, 1.0 / ar):
            if all(abs(a - o) > 1e-6 for o in out):
                out.append(a)
    return out


def prior_boxes(feat_sizes: list[tuple[int, int]], image_size: int, min_sizes, max_sizes,
                aspect_ratios, steps, offset: float = 0.5) -> torch.Tensor:
    """Paddle `prior_box` (flip, clip, min_max_aspect_ratios_order=False): per location the aspect-ratio
    boxes at min_size in order [1, 2, 1/2, 3, 1/3], then sqrt(min*max). Returns normalised xyxy [P, 4]."""
    all_priors = []
    for (fh, fw), mn, mx, ars, step in zip(feat_sizes, min_sizes, max_sizes, aspect_ratios, steps):
        wh = [(mn * math.sqrt(a), mn / math.sqrt(a)) for a in expand_aspect_ratios(ars)]
        wh.append((math.sqrt(mn * mx),) * 2)
        wh = torch.tensor(wh, dtype=torch.float32) / image_size  # [A, 2]
        cy, cx = torch.meshgrid((torch.arange(fh) + offset) * step / image_size,
                                (torch.arange(fw) + offset) * step / image_size, indexing="ij")
        ctr = torch.stack([cx, cy], -1).reshape(-1, 1, 2)  # [HW, 1, 2]
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1).reshape(-1, 4)
        all_priors.append(boxes)
    return torch.cat(all_priors).clamp_(0.0, 1.0)


class SepConvPredictor(nn.Module):
    """3x3 depthwise (no bias) -> BN -> ReLU6 -> 1x1 pointwise (no bias, no BN), spec §3.2."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.dw_conv = nn.Conv2d(in_ch, in_ch, 3, 1, 1, groups=in_ch, bias=False)
        self.bn = nn.BatchNorm2d(in_ch, eps=1e-5, momentum=0.1)
        self.act = nn.ReLU6(inplace=True)
        self.pw_conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x):
        return self.pw_conv(self.act(self.bn(self.dw_conv(x))))


class SSDLiteHead(nn.Module):
    def __init__(self, in_channels: list[int], priors_per_loc: list[int], num_classes: int):
        super().__init__()
        self.num_classes = num_classes  # including background at index 0 (static Paddle convention)
        for i, (c, a) in enumerate(zip(in_channels, priors_per_loc)):
            self.add_module(f"boxes{i}", SepConvPredictor(c, a * 4))
            self.add_module(f"scores{i}", SepConvPredictor(c, a * num_classes))
        self.levels = len(in_channels)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        locs, confs = [], []
        for i, f in enumerate(feats):
            n = f.shape[0]
            locs.append(getattr(self, f"boxes{i}")(f).permute(0, 2, 3, 1).reshape(n, -1, 4))
            confs.append(getattr(self, f"scores{i}")(f).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes))
        return torch.cat(locs, 1), torch.cat(confs, 1)


class SSDLite(DetectionModel):
    arch = "ssdlite"

    def __init__(self, variant: str = "large", num_classes: int = 80, class_names=None, input_size: int = 320,
                 multiplier: float = 0.5, extra_block_filters=((256, 512), (128, 256), (128, 256), (64, 128)),
                 lr_mult_list=(0.25, 0.25, 0.5, 0.5, 0.75), aspect_ratios=((2.0,), (2.0, 3.0), (2.0, 3.0),
                 (2.0, 3.0), (2.0, 3.0), (2.0, 3.0)), steps=(16, 32, 64, 107, 160, 320),
                 min_ratio: int = 20, max_ratio: int = 95, overlap_threshold: float = 0.5,
                 neg_pos_ratio: float = 3.0, neg_overlap: float = 0.5, score_thresh: float = 0.01,
                 nms_thresh: float = 0.45, nms_top_k: int = 400, keep_top_k: int = 200):
        super().__init__(num_classes, class_names, input_size)
        self.variant = variant
        self.backbone = MobileNetV3(variant, 1.0, multiplier, taps=ssdlite_taps(variant),
                                    extra_block_filters=[list(f) for f in extra_block_filters],
                                    lr_mult_list=list(lr_mult_list))
        self.aspect_ratios = [list(a) for a in aspect_ratios]
        self.steps = list(steps)
        self.min_sizes, self.max_sizes = ssd_prior_sizes(input_size, min_ratio, max_ratio, len(steps))
        per_loc = [len(expand_aspect_ratios(a)) + 1 for a in self.aspect_ratios]
        self.ssd_head = SSDLiteHead(self.backbone.channels, per_loc, num_classes + 1)
        self.overlap_threshold, self.neg_pos_ratio, self.neg_overlap = overlap_threshold, neg_pos_ratio, neg_overlap
        self.postprocess_cfg = dict(score_thresh=score_thresh, nms_thresh=nms_thresh,
                                    nms_top_k=nms_top_k, keep_top_k=keep_top_k)
        self._priors_cache: dict = {}
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.ssd_head.modules():  # small outputs at start: near-uniform class scores
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
                nn.init.normal_(m.weight, std=0.01)

    def priors(self, feats: list[torch.Tensor]) -> torch.Tensor:
        sizes = tuple((int(f.shape[-2]), int(f.shape[-1])) for f in feats)
        key = (sizes, feats[0].device)
        if key not in self._priors_cache:
            self._priors_cache[key] = prior_boxes(list(sizes), self.input_size, self.min_sizes, self.max_sizes,
                                                  self.aspect_ratios, self.steps).to(feats[0].device)
        return self._priors_cache[key]

    def forward_raw(self, x: torch.Tensor):
        """Returns (loc deltas [N,P,4], class logits [N,P,C+1] with background at 0, priors [P,4])."""
        feats = self.backbone(x)
        loc, conf = self.ssd_head(feats)
        return loc, conf, self.priors(feats)

    # -- training ---------------------------------------------------------------------------------
    def match(self, gt_boxes: torch.Tensor, priors: torch.Tensor):
        """Bipartite then per-prediction matching (fluid ssd_loss). Returns (gt index or -1, max IoU)."""
        num_p = priors.shape[0]
        matched = torch.full((num_p,), -1, dtype=torch.long, device=priors.device)
        if gt_boxes.numel() == 0:
            return matched, torch.zeros(num_p, device=priors.device)
        iou = box_iou(gt_boxes, priors)  # [G, P]
        max_iou, best_gt = iou.max(0)
        work = iou.clone()
        for _ in range(gt_boxes.shape[0]):  # greedy bipartite: global best pair first
            flat = int(work.argmax())
            g, p = divmod(flat, num_p)
            if work[g, p] <= 0:
                break
            matched[p] = g
            work[g, :] = -1
            work[:, p] = -1
        extra = (matched < 0) & (max_iou >= self.overlap_threshold)
        matched[extra] = best_gt[extra]
        return matched, max_iou

    def compute_loss(self, x, targets):
        loc, conf, priors = self.forward_raw(x)
        s = float(self.input_size)
        labels, loc_t, neg_ok = [], [], []
        for t in targets:
            boxes = t["boxes"] / s
            m, max_iou = self.match(boxes, priors)
            pos = m >= 0
            lab = torch.zeros_like(m)
            lab[pos] = t["labels"].to(m.device)[m[pos]] + 1
            tgt = torch.zeros_like(priors)
            if pos.any():
                tgt[pos] = encode_boxes(boxes[m[pos]], priors[pos], VARIANCE)
            labels.append(lab)
            loc_t.append(tgt)
            neg_ok.append((~pos) & (max_iou < self.neg_overlap))
        labels, loc_t, neg_ok = torch.stack(labels), torch.stack(loc_t), torch.stack(neg_ok)
        pos = labels > 0
        ce = F.cross_entropy(conf.reshape(-1, conf.shape[-1]), labels.reshape(-1),
                             reduction="none").view(labels.shape)
        # hard-negative mining: the neg_pos_ratio x #pos candidates with the highest conf loss, per image
        num_neg = (pos.sum(1, keepdim=True) * self.neg_pos_ratio).long()
        mining = ce.detach().masked_fill(~neg_ok, float("-inf"))
        rank = mining.argsort(1, descending=True).argsort(1)
        neg = (rank < num_neg) & neg_ok
        loss_conf = ce[pos | neg].sum()
        loss_loc = F.smooth_l1_loss(loc[pos], loc_t[pos], beta=1.0, reduction="sum")
        norm = self.loss_normalizer(pos.sum())
        return {"loss_loc": loss_loc / norm, "loss_conf": loss_conf / norm}

    @staticmethod
    def loss_normalizer(num_pos: torch.Tensor) -> torch.Tensor:
        """Number of positives in the *global* batch divided by world size, so that DDP's gradient
        averaging equals one process normalising by the total number of positives."""
        n = num_pos.detach().float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            n = n.clone()
            torch.distributed.all_reduce(n)
            n = n / torch.distributed.get_world_size()
        return n.clamp(min=1.0)

    # -- inference ----------------------------------------------------------------------------------
    def postprocess(self, raw, sizes):
        loc, conf, priors = raw
        cfg = self.postprocess_cfg
        scores = conf.softmax(-1)[..., 1:]  # drop background
        boxes = decode_boxes(loc, priors[None], VARIANCE).clamp(0.0, 1.0)
        return [nms_per_class(b, s, cfg, (w, h)) for b, s, (h, w) in zip(boxes, scores, sizes)]


def nms_per_class(boxes: torch.Tensor, scores: torch.Tensor, cfg: dict, wh: tuple[int, int]) -> dict:
    """Class-wise NMS on [P,4] normalised boxes and [P,C] scores: per class the nms_top_k best above
    score_thresh, then NMS, then keep_top_k overall. Boxes are returned in image pixels."""
    k = min(cfg["nms_top_k"], scores.shape[0])
    top_s, top_i = scores.topk(k, dim=0)  # [k, C]
    keep = top_s > cfg["score_thresh"]
    cls = torch.arange(scores.shape[1], device=scores.device).expand(k, -1)[keep]
    sc, idx = top_s[keep], top_i[keep]
    bx = boxes[idx]
    kept = batched_nms(bx, sc, cls, cfg["nms_thresh"])[: cfg["keep_top_k"]]
    scale = torch.tensor([wh[0], wh[1], wh[0], wh[1]], dtype=bx.dtype, device=bx.device)
    return {"boxes": bx[kept] * scale, "scores": sc[kept], "labels": cls[kept]}
