"""Paddle parameter naming: dygraph 2.x names <-> static-graph (fluid) names. Pure Python, no torch.

pocketdet's module names equal PaddleDetection's dygraph names (`backbone.conv2.expand_conv.conv.weight`,
`ssd_head.scores0.pw_conv.weight`, `neck.yolo_block.0.conv_module.conv0.batch_norm.weight`), except that BN
statistics are `running_mean/running_var` where Paddle says `_mean/_variance`. The released static-era
weights use the names the static code gives its ParamAttrs (PaddleDetection release/2.4,
static/ppdet/modeling/backbones/mobilenet_v3.py, static/ppdet/modeling/ops.py `SSDLiteMultiBoxHead`,
static/ppdet/modeling/anchor_heads/yolo_head.py); `dygraph_to_static` encodes them:

    backbone.conv1.conv.weight                 conv1_weights
    backbone.conv1.bn.{weight,bias,_mean,_variance}   conv1_bn_{scale,offset,mean,variance}
    backbone.convN.expand_conv.*               convN_expand_weights, convN_expand_bn_*
    backbone.convN.bottleneck_conv.*           convN_depthwise_*
    backbone.convN.linear_conv.*               convN_linear_*
    backbone.convN.mid_se.conv{1,2}.{weight,bias}   convN_se_{1,2}_{weights,offset}
    backbone.conv17.*  (SSD conv_extra)        conv17_weights, conv17_bn_*
    backbone.convN.{pointwise,depthwise,normal}_conv.*   convN_extra1_*, convN_extra2_dw_*, convN_extra2_sep_*
    ssd_head.{boxes,scores}I.dw_conv.weight    {loc,conf}_{I+1}dw_weights   (no underscore before dw/pw)
    ssd_head.{boxes,scores}I.bn.*              {loc,conf}_{I+1}_bn_*
    ssd_head.{boxes,scores}I.pw_conv.weight    {loc,conf}_{I+1}pw_weights
    neck.yolo_block.I.conv_module.conv{0,1,2,3}.*   yolo_block.I.{0.0,0.1,1.0,1.1}.{conv.weights,bn.*}
    neck.yolo_block.I.conv_module.route.*      yolo_block.I.2.*
    neck.yolo_block.I.tip.*                    yolo_block.I.tip.*
    neck.yolo_transition.I.*                   yolo_transition.I.*      (YOLO BN: bn.{scale,offset,mean,var})
    yolo_head.yolo_output.I.{weight,bias}      yolo_output.I.conv.{weights,bias}
    Cascade R-CNN (static only; pocketdet names, see `cascade_to_static`):
    fpn.fpn.inner_blocks.{0,1}.0.*, .2.0.*      fpn_inner_mv3_{0,1}_lateral_{w,b}, fpn_inner_mv3_2_{w,b}
    fpn.fpn.layer_blocks.I.0.*                 fpn_mv3_I_{w,b}
    fpn.fpn.extra_blocks.convs.{0,1}.*         fpn_5_{w,b}, fpn_6_{w,b}
    rpn.head.{conv.0.0,cls_logits,bbox_pred}.* conv_rpn_fpn2_*, rpn_cls_logits_fpn2_*, rpn_bbox_pred_fpn2_*
    roi_heads.stages.S.{fc6,fc7,cls_score,bbox_pred}.*   {fc6,...}{'',_2,_3}_{w,b}  (FC weights [in, out])
"""
from __future__ import annotations

import re

_MNV3_BN = {"weight": "scale", "bias": "offset", "_mean": "mean", "_variance": "variance"}
_YOLO_BN = {"weight": "scale", "bias": "offset", "_mean": "mean", "_variance": "var"}
_MNV3_PART = {"expand_conv": "expand", "bottleneck_conv": "depthwise", "linear_conv": "linear",
              "pointwise_conv": "extra1", "depthwise_conv": "extra2_dw", "normal_conv": "extra2_sep"}
_YOLO_CONV = {"conv0": "0.0", "conv1": "0.1", "conv2": "1.0", "conv3": "1.1", "route": "2"}

# Keys that classification checkpoints carry next to the backbone (ImageNet head): never mapped, reported.
IMAGENET_CLASSIFIER = re.compile(
    r"^(?:backbone\.)?(?:conv_last_\w+|last_1x1_conv_weights|fc_weights|fc_offset|"          # static PaddleClas
    r"(?:last_second_conv|last_conv|out|fc)\.\S+)$")                                          # dygraph PaddleClas

# Optimizer state and counters that persistables folders hold beside the weights.
OPTIMIZER_STATE = re.compile(
    r"(?:_velocity_\d+|_moment\d_\d+|_beta\d_pow_acc_\d+|\.velocity|_fp32_master_\d+)$|"
    r"^(?:learning_rate(?:_\d+)?|@LR_DECAY_COUNTER@|@step_counter@|global_step|num_steps)$")

# Quantization-aware-training state that PaddleSlim's static passes add to the program (the seed's *_quant.tar):
# activation/weight scales `X.scale`, `X@scale`, `X.quant_dequant.scale`, their moving-average `state_N` /
# `accum_N` (`scale_state@_N`), `.quantized` / `.dequantized` copies. Only tested on keys that map to nothing.
QAT_STATE = re.compile(
    r"[.@](?:scale|state|accum)(?:_\d+)?$|^(?:scale_)?(?:state|accum)@?_?\d+$|\.(?:quantized|dequantized|quant_dequant)$")


def _conv_or_bn(tail: str, bn: dict[str, str], weights: str) -> str | None:
    if tail == "conv.weight":
        return weights
    m = re.fullmatch(r"(?:bn|batch_norm)\.(weight|bias|_mean|_variance)", tail)
    return None if m is None else bn[m[1]]


def mobilenetv3_to_static(rest: str) -> str | None:
    """`conv2.expand_conv.conv.weight` (a dygraph name without the `backbone.` prefix) -> `conv2_expand_weights`."""
    m = re.fullmatch(r"conv(\d+)\.(conv\.weight|bn\.\w+)", rest)
    if m:
        s = _conv_or_bn(m[2], _MNV3_BN, "weights")
        return None if s is None else f"conv{m[1]}_{'weights' if s == 'weights' else 'bn_' + s}"
    m = re.fullmatch(r"conv(\d+)\.mid_se\.conv([12])\.(weight|bias)", rest)
    if m:
        return f"conv{m[1]}_se_{m[2]}_{'weights' if m[3] == 'weight' else 'offset'}"
    m = re.fullmatch(r"conv(\d+)\.(\w+)\.(conv\.weight|bn\.\w+)", rest)
    if m and m[2] in _MNV3_PART:
        s = _conv_or_bn(m[3], _MNV3_BN, "weights")
        if s is None:
            return None
        part = f"conv{m[1]}_{_MNV3_PART[m[2]]}"
        return f"{part}_weights" if s == "weights" else f"{part}_bn_{s}"
    return None


def ssd_head_to_static(rest: str) -> str | None:
    m = re.fullmatch(r"(boxes|scores)(\d+)\.(dw_conv\.weight|pw_conv\.weight|bn\.(\w+))", rest)
    if not m:
        return None
    name = f"{'loc' if m[1] == 'boxes' else 'conf'}_{int(m[2]) + 1}"
    if m[4] is not None:
        return f"{name}_bn_{_MNV3_BN[m[4]]}" if m[4] in _MNV3_BN else None
    return f"{name}{m[3][:2]}_weights"


def yolo_to_static(name: str) -> str | None:
    m = re.fullmatch(r"yolo_head\.yolo_output\.(\d+)\.(weight|bias)", name)
    if m:
        return f"yolo_output.{m[1]}.conv.{'weights' if m[2] == 'weight' else 'bias'}"
    m = re.fullmatch(r"neck\.(yolo_block\.(\d+)\.conv_module\.(\w+)|yolo_block\.(\d+)\.tip|yolo_transition\.(\d+))"
                     r"\.(conv\.weight|batch_norm\.\w+)", name)
    if not m:
        return None
    if m[3] is not None:
        if m[3] not in _YOLO_CONV:
            return None
        layer = f"yolo_block.{m[2]}.{_YOLO_CONV[m[3]]}"
    elif m[4] is not None:
        layer = f"yolo_block.{m[4]}.tip"
    else:
        layer = f"yolo_transition.{m[5]}"
    s = _conv_or_bn(m[6], _YOLO_BN, "weights")
    if s is None:
        return None
    return f"{layer}.conv.weights" if s == "weights" else f"{layer}.bn.{s}"


def cascade_to_static(name: str, num_taps: int = 3, min_level: int = 2) -> str | None:
    """pocketdet Cascade R-CNN names (torchvision FPN / RPN pieces) -> static names (PaddleDetection
    release/2.4 static/ppdet/modeling/backbones/fpn.py, anchor_heads/rpn_head.py FPNRPNHead,
    roi_heads/cascade_head.py, architectures/cascade_rcnn.py stage suffix '' / '_2' / '_3').

    FPN body names are MobileNetV3RCNN's `mv3_0..mv3_{n-1}` (C2..C4): the top level is `fpn_inner_mv3_2`,
    the others `fpn_inner_mv3_{i}_lateral`; outputs `fpn_mv3_{i}`; extra levels `fpn_5`, `fpn_6`. The RPN
    convs are shared across levels under the lowest level's names (`conv_rpn_fpn2`, ...)."""
    wb = {"weight": "w", "bias": "b"}
    m = re.fullmatch(r"fpn\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.0\.(weight|bias)", name)
    if m:
        i = int(m[2])
        if m[1] == "layer_blocks":
            return f"fpn_mv3_{i}_{wb[m[3]]}"
        return f"fpn_inner_mv3_{i}{'' if i == num_taps - 1 else '_lateral'}_{wb[m[3]]}"
    m = re.fullmatch(r"fpn\.fpn\.extra_blocks\.convs\.(\d+)\.(weight|bias)", name)
    if m:
        return f"fpn_{min_level + num_taps + int(m[1])}_{wb[m[2]]}"
    m = re.fullmatch(r"rpn\.head\.(conv\.0\.0|cls_logits|bbox_pred)\.(weight|bias)", name)
    if m:
        base = {"conv.0.0": "conv_rpn_fpn", "cls_logits": "rpn_cls_logits_fpn", "bbox_pred": "rpn_bbox_pred_fpn"}
        return f"{base[m[1]]}{min_level}_{wb[m[2]]}"
    m = re.fullmatch(r"roi_heads\.stages\.(\d+)\.(fc6|fc7|cls_score|bbox_pred)\.(weight|bias)", name)
    if m:
        stage = "" if m[1] == "0" else f"_{int(m[1]) + 1}"
        return f"{m[2]}{stage}_{wb[m[3]]}"
    return None


def dygraph_to_static(name: str) -> str:
    """The static-graph name of a Paddle dygraph parameter name; KeyError when the layer has none."""
    out = None
    if name.startswith("backbone."):
        out = mobilenetv3_to_static(name[len("backbone."):])
    elif name.startswith("ssd_head."):
        out = ssd_head_to_static(name[len("ssd_head."):])
    elif name.startswith(("neck.", "yolo_head.")):
        out = yolo_to_static(name)
    elif name.startswith(("fpn.", "rpn.", "roi_heads.")):
        out = cascade_to_static(name)
    if out is None:
        raise KeyError(f"no static-graph name known for {name!r}")
    return out


def to_paddle_dygraph(pocketdet_key: str) -> str:
    """pocketdet state-dict key -> Paddle dygraph name (BN statistics are the only difference)."""
    if pocketdet_key.endswith(".running_mean"):
        return pocketdet_key[: -len("running_mean")] + "_mean"
    if pocketdet_key.endswith(".running_var"):
        return pocketdet_key[: -len("running_var")] + "_variance"
    return pocketdet_key
