"""ResNet-18/34 feature extractor laid out like PaddleDetection's static `ResNet` (variant b).

Used as the YOLOv3 distillation teacher's backbone (spec §5.2: ResNet34, feature_maps [3, 4, 5], sync_bn,
freeze_at 0, norm_decay 0). The blocks are torchvision's `BasicBlock` and the module names are torchvision's
(`conv1`, `bn1`, `layer1`..`layer4`), so torchvision ImageNet weights load with `strict=False` apart from
the one extra shortcut below.

Where Paddle's ResNet34 differs from torchvision's resnet34:
- Paddle gives the *first* block of res2 (torchvision `layer1.0`) a projection shortcut (1x1 conv 64->64 +
  BN) although its stride is 1 and its channels do not change: `_shortcut(..., is_first)` is true for
  depth < 50 at stage 2 block 0 (S24 static/ppdet/modeling/backbones/resnet.py). torchvision uses an
  identity there. `paddle_shortcut=True` (default) builds it as `layer1.0.downsample`, so Paddle's
  `res2a_branch1` weights have a place to go (+4,224 learnable parameters).
- Variant b only moves the stride inside *bottleneck* blocks; for basic blocks it is the same as torchvision's
  (stride on the first 3x3). The stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool) is the same.
- BN: eps 1e-5 and Paddle momentum 0.9 (torch 0.1), which are torch's defaults.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STAGE_CHANNELS = (64, 128, 256, 512)


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(nn.Module):
    """Returns the outputs of the requested stages; `return_stages` uses Paddle's numbering (2..5 = torchvision
    layer1..layer4), so YOLOv3's C3/C4/C5 are stages (3, 4, 5). Stages after the last requested one are not
    built."""

    def __init__(self, depth: int = 34, return_stages: tuple[int, ...] = (3, 4, 5), paddle_shortcut: bool = True):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth {depth} not supported; expected one of {sorted(DEPTHS)}")
        if not return_stages or any(s not in (2, 3, 4, 5) for s in return_stages):
            raise ValueError(f"return_stages must be a non-empty subset of 2..5, got {return_stages}")
        self.return_stages = tuple(return_stages)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        self.stage_names: list[str] = []
        for stage, (blocks, ch) in enumerate(zip(DEPTHS[depth], STAGE_CHANNELS), start=2):
            if stage > max(self.return_stages):
                break
            stride = 1 if stage == 2 else 2
            layers = []
            for b in range(blocks):
                s = stride if b == 0 else 1
                needs_proj = s != 1 or in_ch != ch or (paddle_shortcut and stage == 2 and b == 0)
                layers.append(BasicBlock(in_ch, ch, s, _projection(in_ch, ch, s) if needs_proj else None))
                in_ch = ch
            name = f"layer{stage - 1}"
            self.add_module(name, nn.Sequential(*layers))
            self.stage_names.append(name)
        self.channels = [STAGE_CHANNELS[s - 2] for s in self.return_stages]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for stage, name in enumerate(self.stage_names, start=2):
            x = getattr(self, name)(x)
            if stage in self.return_stages:
                feats.append(x)
        return feats
