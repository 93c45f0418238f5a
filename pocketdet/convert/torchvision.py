"""torchvision MobileNetV3 / SSDLite weights -> pocketdet: only the backbone maps.

`convert_torchvision(file_or_state_dict, "ssdlite320_mobilenet_v3_large")` returns pocketdet's
`ssdlite_mnv3_large_320` with its MobileNetV3 backbone taken from torchvision's detector and its SSD extra
layers and head left at their initialisation. The detector as a whole cannot map, for these reasons:

* Extra layers: torchvision's `_extra_block` is 1x1 (in -> c/2), *plain* depthwise 3x3 stride 2 (c/2 -> c/2),
  1x1 (c/2 -> c); Paddle's ExtraBlockDW is 1x1 (in -> c1), *grouped* 3x3 stride 2 (c1 -> c2 = 2*c1, groups c1),
  1x1 (c2 -> c2). Different tensors, different function.
* Head: torchvision predicts 6 anchors on every level (Paddle: 4 on the first), with other sizes (scales
  0.2..0.95 of the image) and another per-location order, 91 COCO-id classes (Paddle: 80 + background), and
  its 1x1 predictors have a bias (Paddle: none).

Inside the backbone, torchvision differs from Paddle's MobileNetV3 (spec §2.2) in ways handled here:
* BN eps 1e-3 (Paddle 1e-5): exact fix, running_var += 1e-3 - 1e-5.
* SE gate Hardsigmoid = clip(z/6 + 1/2) (Paddle: clip(0.2 z + 1/2)): exact fix, the SE's second conv (weight
  and bias) is scaled by (1/6)/0.2 = 5/6.
* Block 0 has no expand conv in torchvision (its expansion equals its input width). Ours (16 -> 16, BN, ReLU)
  is set to identity plus a +0.375 shift that the ReLU passes untouched (the stem's hard-swish output is
  >= -0.375); the shift is removed again in the next BN's running_mean. Exact except on the one-pixel border
  of the depthwise conv, whose zero padding does not see the shift.
* SE squeeze widths are rounded to multiples of 8 in torchvision: 72 -> 24 (ours 18), 120 -> 32 (ours 30),
  and for Small 16 -> 8 (4), 240 -> 64 (60), 120 -> 32 (30), 144 -> 40 (36). Those SE layers keep their
  initialisation (reported); SE layers of 480, 672, 960, 96, 288, 576 channels map.
* torchvision's COCO SSDLite was trained with `reduced_tail=False` (conv14 out 160, conv15/16 960/160, last
  conv 960) while Paddle's SSDLite halves the tail (multiplier 0.5: 80, 480/80, 480): with that checkpoint
  conv14's linear conv and everything after it keep their initialisation (shape differs, reported).
  `ssdlite320_mobilenet_v3_large(weights_backbone=None)` builds the reduced tail, which maps fully.

`load_torchvision_backbone(model, file)` does the same for torchvision's ImageNet `mobilenet_v3_large` /
`mobilenet_v3_small` classification checkpoints (`features.*`; `classifier.*` ignored) into any pocketdet
model with a MobileNetV3 backbone (`model.backbone`).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import load_config
from ..models import build_model
from .common import ConversionReport, WeightConversionError, check_and_load, model_keys

__all__ = ["convert_torchvision", "load_torchvision_backbone", "TORCHVISION_TARGETS"]

TV_BN_EPS, PADDLE_BN_EPS = 1e-3, 1e-5
SE_GATE_RESCALE = (1.0 / 6.0) / 0.2
HSWISH_MIN = 0.375  # -min over x of x * relu6(x + 3) / 6, reached at x = -1.5
# torchvision detector name -> the pocketdet zoo model its backbone initialises
TORCHVISION_TARGETS = {"ssdlite320_mobilenet_v3_large": "ssdlite_mnv3_large_320"}
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")

_REASONS = [
    (re.compile(r"^classifier\.").search, "ImageNet classifier"),
    (re.compile(r"^backbone\.extra\.").search, "SSD extra block: torchvision plain depthwise 3x3 c/2->c/2 + 1x1 c/2->c, "
                                        "Paddle grouped 3x3 c1->2*c1 + 1x1 (different tensors)"),
    (re.compile(r"^head\.").search, "SSDLite head: 6 anchors on every level (Paddle 4 on the first), other anchor "
                             "sizes/order, 91 classes, predictors with bias"),
]


def _load_state_dict(state_dict_or_file, what: str) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(state_dict_or_file, dict):
        sd, src = state_dict_or_file, f"<{what} state dict>"
    else:
        p = Path(state_dict_or_file)
        src = str(p)
        if not p.is_file():
            raise WeightConversionError(f"{src}: no such file")
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError (not a zip), ...
            raise WeightConversionError(f"{src}: not a torch checkpoint readable with weights_only=True "
                                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):  # torchvision reference-script checkpoint
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightConversionError(f"{src}: expected a state dict of tensors")
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, src


class _TvLayout:
    """Where torchvision keeps MobileNetV3 feature f (0 = stem, 1..n = blocks, n+1 = last conv), sub-layer s."""

    def __init__(self, detector: bool, c4: int | None):
        self.detector, self.c4 = detector, c4

    def unit(self, f: int, sub: int | None) -> str:
        """Prefix of a Conv2dNormActivation (`.0` conv, `.1` BN) or, for an SE sub-layer, the SE module."""
        if not self.detector:
            return f"features.{f}" if sub is None else f"features.{f}.block.{sub}"
        c4 = self.c4
        if f < c4:
            return f"backbone.features.0.{f}" if sub is None else f"backbone.features.0.{f}.block.{sub}"
        if f == c4:  # split: the expand conv ends feature map C4, the rest starts the next stage
            return "backbone.features.0.{}".format(c4) if sub == 0 else f"backbone.features.1.0.{sub}"
        return f"backbone.features.1.{f - c4}" if sub is None else f"backbone.features.1.{f - c4}.block.{sub}"


def _plan(model, layout: _TvLayout):
    """[(our module prefix, torchvision prefix, kind)] for every backbone layer of `model`."""
    bb = model.backbone
    plan = [("backbone.conv1", layout.unit(0, None), "convbn")]
    for i, name in enumerate(bb.block_names):
        blk = getattr(bb, name)
        f = i + 1
        in_ch, exp = blk.expand_conv.conv.in_channels, blk.expand_conv.conv.out_channels
        sub = 0
        if exp != in_ch:  # torchvision builds an expand conv only when it widens
            plan.append((f"backbone.{name}.expand_conv", layout.unit(f, sub), "convbn"))
            sub += 1
        else:
            plan.append((f"backbone.{name}.expand_conv", None, "identity_shift"))
        if blk.expand_only:
            continue
        plan.append((f"backbone.{name}.bottleneck_conv", layout.unit(f, sub),
                     "convbn_shifted" if exp == in_ch else "convbn"))
        sub += 1
        if blk.mid_se is not None:
            plan.append((f"backbone.{name}.mid_se", layout.unit(f, sub), "se"))
            sub += 1
        plan.append((f"backbone.{name}.linear_conv", layout.unit(f, sub), "convbn"))
    if bb.extra_names:  # SSD conv_extra: torchvision's last 1x1 conv (960, or 480 with reduced_tail)
        plan.append((f"backbone.{bb.extra_names[0]}", layout.unit(len(bb.block_names) + 1, None), "convbn"))
    return plan


def _apply_plan(model, sd: dict[str, torch.Tensor], plan, report: ConversionReport):
    """Fill tensors for every plan unit whose shapes agree; record the rest in the report."""
    ours = model_keys(model)
    tensors, used = {}, set()

    def grab(unit_keys: dict[str, str]) -> dict[str, torch.Tensor] | None:
        """our key -> tv key for one unit; None (and a report line) if absent or any shape differs."""
        out = {}
        for o, t in unit_keys.items():
            if t not in sd:
                return None
            out[o] = sd[t]
        bad = [f"{o} (file {tuple(v.shape)}, model {tuple(ours[o].shape)})" for o, v in out.items()
               if tuple(v.shape) != tuple(ours[o].shape)]
        if bad:
            for o in out:
                report.not_loaded[o] = "shape differs: " + "; ".join(bad)
            used.update(unit_keys.values())
            for t in unit_keys.values():
                report.ignored[t] = "shape differs from the model"
            return None
        used.update(unit_keys.values())
        return out

    for ours_p, tv_p, kind in plan:
        if kind == "identity_shift":
            continue  # filled after its depthwise conv, below
        if kind in ("convbn", "convbn_shifted"):
            keys = {f"{ours_p}.conv.weight": f"{tv_p}.0.weight"}
            keys.update({f"{ours_p}.bn.{n}": f"{tv_p}.1.{n}" for n in _BN_FIELDS})
        else:  # se
            keys = {f"{ours_p}.conv{j}.{n}": f"{tv_p}.fc{j}.{n}" for j in (1, 2) for n in ("weight", "bias")}
        got = grab(keys)
        if got is None:
            for o in keys:
                report.not_loaded.setdefault(o, f"torchvision has no {keys[o]}")
            continue
        got = {k: v.detach().clone().float() for k, v in got.items()}
        if kind.startswith("convbn"):
            got[f"{ours_p}.bn.running_var"] += TV_BN_EPS - PADDLE_BN_EPS
            report.transformed[f"{ours_p}.bn.running_var"] = "+ (1e-3 - 1e-5): torchvision BN eps 1e-3"
        if kind == "se":
            for n in ("weight", "bias"):
                got[f"{ours_p}.conv2.{n}"] *= SE_GATE_RESCALE
                report.transformed[f"{ours_p}.conv2.{n}"] = "x 5/6: hardsigmoid slope 1/6 -> Paddle's 0.2"
        if kind == "convbn_shifted":
            # the identity expand conv before it adds HSWISH_MIN to every input channel (see module doc)
            dw = got[f"{ours_p}.conv.weight"]
            got[f"{ours_p}.bn.running_mean"] += HSWISH_MIN * dw.sum(dim=(1, 2, 3))
            report.transformed[f"{ours_p}.bn.running_mean"] = "+ 0.375 * sum(kernel): undoes the expand shift"
            exp_p = ours_p.replace("bottleneck_conv", "expand_conv")
            c = ours[f"{exp_p}.conv.weight"].shape[0]
            got[f"{exp_p}.conv.weight"] = torch.eye(c).view(c, c, 1, 1)
            got[f"{exp_p}.bn.weight"] = torch.ones(c)
            got[f"{exp_p}.bn.bias"] = torch.full((c,), HSWISH_MIN)
            got[f"{exp_p}.bn.running_mean"] = torch.zeros(c)
            got[f"{exp_p}.bn.running_var"] = torch.full((c,), 1.0 - PADDLE_BN_EPS)
            for k in (f"{exp_p}.conv.weight", f"{exp_p}.bn.bias"):
                report.transformed[k] = ("torchvision has no expand conv in this block: identity + 0.375 "
                                         "shift (exact except the depthwise conv's border pixels)")
        tensors.update(got)
    return tensors, used


def _finish(model, sd, src: str, tensors, used, report: ConversionReport, extra_reasons=()):
    unmapped = []
    for k in sd:
        if k in used:
            continue
        for match, why in (*_REASONS, *extra_reasons):
            if match(k):
                report.ignored[k] = why
                break
        else:
            unmapped.append(k)
    for k in model_keys(model):
        if k.startswith("backbone.") and k not in tensors and k not in report.not_loaded:
            report.not_loaded[k] = "no torchvision counterpart"
        elif not k.startswith("backbone.") and k not in tensors:
            report.not_loaded.setdefault(k, "detector layer: torchvision's does not map (module docstring)")
    if not tensors:
        raise WeightConversionError(f"{src}: no tensor fits the model's MobileNetV3 backbone")
    report.loaded = check_and_load(model, tensors, src, sorted(unmapped), strict=False)
    return report


def _c4_feature_index(sd: dict[str, torch.Tensor], src: str) -> int:
    """torchvision splits the detector backbone at the expand conv of block C4: `features.0.{c4}.0.weight`."""
    idx = [int(m[1]) for k in sd if (m := re.match(r"backbone\.features\.0\.(\d+)\.0\.weight$", k))]
    if not idx:
        raise WeightConversionError(f"{src}: not a torchvision SSDLite MobileNetV3 state dict "
                                    "(no backbone.features.0.<i>.0.weight)")
    return max(idx)


def convert_torchvision(state_dict_or_file, model_name: str = "ssdlite320_mobilenet_v3_large"):
    """torchvision SSDLite weights -> (pocketdet model with the backbone loaded, report). See module doc."""
    if model_name not in TORCHVISION_TARGETS:
        raise WeightConversionError(f"unsupported torchvision model {model_name!r}; supported: "
                                    f"{', '.join(TORCHVISION_TARGETS)}")
    sd, src = _load_state_dict(state_dict_or_file, model_name)
    if not any(k.startswith("head.") for k in sd):
        raise WeightConversionError(f"{src}: not a torchvision {model_name} state dict (no head.* keys)")
    cfg = load_config(TORCHVISION_TARGETS[model_name])
    from ..data.coco_names import COCO_CLASSES
    model = build_model(cfg.model, class_names=list(COCO_CLASSES))
    report = ConversionReport(source=src, layout="torch state dict", naming="torchvision", target=cfg.name)
    tensors, used = _apply_plan(model, sd, _plan(model, _TvLayout(True, _c4_feature_index(sd, src))), report)
    _finish(model, sd, src, tensors, used, report)
    report.notes.append("only the MobileNetV3 backbone maps; the SSD extra layers and head keep their "
                        "initialisation: fine-tune before use")
    model.zoo_config = cfg
    return model.eval(), report


def load_torchvision_backbone(model, state_dict_or_file) -> ConversionReport:
    """torchvision `mobilenet_v3_{large,small}` (ImageNet) or SSDLite weights into `model.backbone`."""
    sd, src = _load_state_dict(state_dict_or_file, "torchvision")
    detector = any(k.startswith("backbone.features.") for k in sd)
    if not detector and not any(k.startswith("features.") for k in sd):
        raise WeightConversionError(f"{src}: not a torchvision MobileNetV3 state dict (no features.* keys)")
    layout = _TvLayout(detector, _c4_feature_index(sd, src) if detector else None)
    report = ConversionReport(source=src, layout="torch state dict", naming="torchvision", target="backbone")
    plan = _plan(model, layout)
    tensors, used = _apply_plan(model, sd, plan, report)
    units = {tv_p for _, tv_p, _ in plan if tv_p}
    n_blocks = len(model.backbone.block_names)

    def not_built(k: str) -> bool:  # a torchvision layer past what this model builds (e.g. Cascade's tail)
        unit = re.sub(r"\.(0\.weight|1\.(weight|bias|running_mean|running_var)|fc[12]\.(weight|bias))$", "", k)
        return unit not in units and re.match(r"^(backbone\.)?features\.", k) is not None

    extra = [(re.compile(rf"^features\.{n_blocks + 1}\.").search if not model.backbone.extra_names else
              (lambda k: False), "last 1x1 conv: feeds the ImageNet classifier"),
             (not_built, "MobileNetV3 layer this model does not build")]
    _finish(model, sd, src, tensors, used, report, extra)
    # detector layers outside the backbone are not this function's business
    report.not_loaded = {k: v for k, v in report.not_loaded.items() if k.startswith("backbone.")}
    return report
