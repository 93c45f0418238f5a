"""PicoHeadV2 of PP-PicoDet (PaddleDetection 2.6 `heads/pico_head.py`: PicoFeat, PicoSE, PicoHeadV2).

per level i (stride 8/16/32/64), on the neck feature f:
  cls_feat = [5x5 dw ConvBN + hswish, 1x1 ConvBN + hswish] x num_convs   (cls_conv_dw{i}.j / cls_conv_pw{i}.j)
  se_feat  = hswish(ConvBN1x1(cls_feat * sigmoid(fc(avgpool(cls_feat)))))  (se.i; cls and reg share it)
  cls_logit = head_cls_list.i(se_feat) [C] ; reg = head_reg_list.i(se_feat) [4 x (reg_max+1) bin logits]
  align     = cls_align.i(cls_feat) [1]    (DPModule with one output channel, no final act)
  score     = sqrt(sigmoid(cls_logit) * sigmoid(align) + 1e-9)   (use_align_head)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import ConvBNLayer
from .lcnet import DPModule

ALIGN_EPS = 1e-9  # ppdet pico_head `eps`, added before the square root


class PicoSE(nn.Module):
    """Channel gate from the pooled feature, then a 1x1 ConvBN (`fc`, `conv.conv`, `conv.norm`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.conv = ConvBNLayer(channels, channels, 1, act=None, bn_name="norm")
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feat: torch.Tensor, avg: torch.Tensor) -> torch.Tensor:
        return self.conv(feat * torch.sigmoid(self.fc(avg)))


class PicoFeat(nn.Module):
    """The shared cls/reg tower (share_cls_reg with SE, the only setting the v2.6 configs use). Submodules
    are named `cls_conv_dw{level}.{j}` like Paddle's `add_sublayer('cls_conv_dw{level}.{j}')`."""

    def __init__(self, feat_in: int, feat_out: int, num_levels: int, num_convs: int):
        super().__init__()
        if feat_in != feat_out:
            raise ValueError(f"PicoFeat needs feat_in == feat_out (depthwise first conv), got {feat_in}, {feat_out}")
        self.num_levels, self.num_convs = num_levels, num_convs
        for lvl in range(num_levels):
            self.add_module(f"cls_conv_dw{lvl}", nn.ModuleList(
                ConvBNLayer(feat_out, feat_out, 5, groups=feat_out, bn_name="norm") for _ in range(num_convs)))
            self.add_module(f"cls_conv_pw{lvl}", nn.ModuleList(
                ConvBNLayer(feat_out, feat_out, 1, bn_name="norm") for _ in range(num_convs)))
        self.se = nn.ModuleList(PicoSE(feat_out) for _ in range(num_levels))
        self.act = nn.Hardswish()
        for m in self.modules():  # ConvNormLayer's Normal(0, 0.01); the SE's fc keeps its own 0.001
            if isinstance(m, ConvBNLayer):
                nn.init.normal_(m.conv.weight, std=0.01)

    def forward(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        dws, pws = getattr(self, f"cls_conv_dw{level}"), getattr(self, f"cls_conv_pw{level}")
        for dw, pw in zip(dws, pws):
            x = self.act(pw(self.act(dw(x))))
        se_feat = self.act(self.se[level](x, x.mean((2, 3), keepdim=True)))
        return x, se_feat


class ScaleReg(nn.Module):
    """GFLHead's per-level regression scale. PicoHeadV2 inherits and never uses it, but Paddle registers it
    (`head.p3_feat.scale_reg` ...) and counts it as learnable, so it is kept (frozen: no gradient reaches it,
    and a frozen tensor keeps DDP and the optimizer from waiting for one) to keep state dicts and parameter
    counts equal to Paddle's."""

    def __init__(self):
        super().__init__()
        self.scale_reg = nn.Parameter(torch.ones(1), requires_grad=False)


class Integral(nn.Module):
    """Expected value of each side's distribution over {0, ..., reg_max}: softmax, then dot with `project`."""

    def __init__(self, reg_max: int):
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, reg: torch.Tensor) -> torch.Tensor:
        """[..., 4 * (reg_max + 1)] logits -> [..., 4] distances in grid cells."""
        prob = reg.unflatten(-1, (4, self.reg_max + 1)).softmax(-1)
        return prob @ self.project.to(prob.dtype)


class PicoHeadV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, strides=(8, 16, 32, 64), num_convs: int = 4,
                 reg_max: int = 7, prior_prob: float = 0.01, use_align_head: bool = True):
        super().__init__()
        levels = len(strides)
        self.num_classes, self.reg_max, self.use_align_head = num_classes, reg_max, use_align_head
        self.conv_feat = PicoFeat(in_channels, in_channels, levels, num_convs)
        for s in strides:
            self.add_module(f"p{int(math.log2(s))}_feat", ScaleReg())
        self.distribution_project = Integral(reg_max)
        self.head_cls_list = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 1) for _ in strides)
        self.head_reg_list = nn.ModuleList(nn.Conv2d(in_channels, 4 * (reg_max + 1), 1) for _ in strides)
        self.cls_align = nn.ModuleList(DPModule(in_channels, 1, 5, act_out=False) for _ in strides) \
            if use_align_head else None
        bias_cls = -math.log((1 - prior_prob) / prior_prob)
        for convs, bias in ((self.head_cls_list, bias_cls), (self.head_reg_list, 0.0)):
            for conv in convs:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.constant_(conv.bias, bias)

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """-> (class probabilities [N,C,H,W] per level, box-distribution logits [N,4*(reg_max+1),H,W])."""
        scores, regs = [], []
        for i, f in enumerate(feats):
            cls_feat, se_feat = self.conv_feat(f, i)
            prob = torch.sigmoid(self.head_cls_list[i](se_feat))
            if self.cls_align is not None:
                prob = (prob * torch.sigmoid(self.cls_align[i](cls_feat)) + ALIGN_EPS).sqrt()
            scores.append(prob)
            regs.append(self.head_reg_list[i](se_feat))
        return scores, regs
