"""Convert PaddleDetection / PaddleClas weights into pocketdet models, without Paddle installed.

`convert_paddle(path, "ssdlite_mnv3_large_320")` reads any of the layouts in `paddle_io` (dygraph or static
`.pdparams` pickle, persistables folder, `.tar`), recognises the naming convention (dygraph 2.x or static
fluid, `paddle_names`), maps every tensor onto the zoo model and refuses, naming each key, whatever does not
fit: file keys it cannot map, model keys the file lacks, shape mismatches.

What changes on the way:
* BN statistics `_mean/_variance` (static: `_bn_mean/_bn_variance`, YOLO `.bn.mean/.bn.var`) become
  `running_mean/running_var`; BN `scale/offset` become `weight/bias`.
* SSDLite class scores: pocketdet (like static Paddle) has background at class index 0; **dygraph Paddle puts
  it last** (ppdet SSDLoss uses bg_index = C-1, BBoxPostProcess passes background_label = num_classes).
  For dygraph files the `scores{i}.pw_conv` output channels are permuted per prior, a*(C+1)+[C, 0..C-1].
* Conv weights are [out, in/groups, kh, kw] in both frameworks: copied as they are. Paddle Linear (fluid
  `fc`) weights are [in, out] and are transposed (Cascade R-CNN's box heads).
* A pruned YOLOv3 head (the seed's FPGM model) is rebuilt with the widths found in the file.
* Static Cascade R-CNN files hold MobileNetV3 blocks past conv14's expand conv that the detector never uses
  (Paddle's static graph builds them anyway); they are skipped by name and reported.
* Inputs: every zoo model here was trained on RGB images (DecodeImage to_rgb), ImageNet mean/std on 0..1,
  exactly pocketdet's preprocessing; none expects BGR.
* Optimizer state in persistables folders (`*_velocity_0`, `learning_rate_0`, `@LR_DECAY_COUNTER@`) is
  skipped and listed in the report.

`load_backbone_weights(model, path_or_url)` initialises only the MobileNetV3 backbone from ImageNet weights:
PaddleClas static (`conv1_weights`, ..., `MobileNetV3_large_x1_0_ssld_pretrained`), dygraph (`conv1.conv.weight`
with or without `backbone.`), torchvision's `mobilenet_v3_large` (see `torchvision.py` for what cannot
map), or another pocketdet checkpoint (its `backbone.*` tensors of equal shape). The ImageNet classifier is
ignored; layers whose shape differs (SSDLite's multiplier 0.5 on the last blocks) or that the file lacks (the
SSD extra layers) keep their initialisation and are listed.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch

from ..config import load_config
from ..models import build_model
from .common import ConversionReport, WeightConversionError, check_and_load, model_keys, save_converted
from .paddle_io import PaddleFormatError, read_paddle_weights
from .paddle_names import (IMAGENET_CLASSIFIER, OPTIMIZER_STATE, QAT_STATE, dygraph_to_static,
                           mobilenetv3_to_static, to_paddle_dygraph)
from .paddle_picodet import fold_head_aliases, picodet_class_count

__all__ = ["convert_paddle", "save_converted", "load_backbone_weights", "PaddleFormatError",
           "WeightConversionError", "KNOWN_SHA256"]

# sha256 of published files, checked after a download. None recorded yet (this project builds offline);
# `load_backbone_weights(..., sha256=...)` takes one explicitly.
KNOWN_SHA256: dict[str, str] = {}


def _coco_names() -> list[str]:
    from ..data.coco_names import COCO_CLASSES
    return list(COCO_CLASSES)


# --------------------------------------------------------------------------------------------------
# name matching
# --------------------------------------------------------------------------------------------------
def _candidate_tables(keys: list[str]) -> dict[str, dict[str, str]]:
    """naming -> {source name: pocketdet key} for every naming convention we know."""
    dyg = {to_paddle_dygraph(k): k for k in keys}
    static = {}
    for d, k in dyg.items():
        try:
            static[dygraph_to_static(d)] = k
        except KeyError:
            pass
    return {"dygraph": dyg, "static": static}


def _pick_naming(tables: dict[str, dict[str, str]], names: list[str], source: str, target: str):
    hits = {n: sum(1 for s in names if s in t) for n, t in tables.items()}
    best = max(hits, key=hits.get)
    if hits[best] == 0:
        raise WeightConversionError(
            f"{source}: none of its {len(names)} keys matches {target} in Paddle dygraph or static naming "
            f"(first keys: {', '.join(sorted(names)[:8])}); is it the weights of another model?")
    return best, tables[best]


def _background_last_to_first(w: np.ndarray, num_priors: int) -> np.ndarray:
    """Reorder [A*(C+1), ...] conv output channels from per-prior [cls0..clsC-1, bg] to [bg, cls0..]."""
    k = w.shape[0] // num_priors
    perm = np.concatenate([a * k + np.r_[k - 1, 0:k - 1] for a in range(num_priors)])
    return w[perm]


def _class_count(arch: str, model, tensors: dict[str, np.ndarray]) -> int | None:
    """Number of object classes the file was trained for, read from its class-output shape."""
    if arch == "ssdlite":
        w = tensors.get("ssd_head.scores0.pw_conv.weight")
        if w is None:
            return None
        a0 = model.ssd_head.boxes0.pw_conv.out_channels // 4
        return w.shape[0] // a0 - 1
    if arch == "yolov3":
        w = tensors.get("yolo_head.yolo_output.0.weight")
        if w is None:
            return None
        return w.shape[0] // len(model.anchor_masks[0]) - 5
    if arch == "cascade_rcnn":
        w = tensors.get("roi_heads.stages.0.cls_score.weight")
        return None if w is None else w.shape[0] - 1  # [out, in] after the transpose; background included
    if arch == "picodet":
        return picodet_class_count(tensors)  # sigmoid scores: no background class
    return None


def _unused_backbone_layer(name: str, model) -> bool:
    """A static-graph backbone layer past the detector's last tap: Paddle's MobileNetV3RCNN builds all 15
    blocks although Cascade R-CNN reads only up to conv14's expand conv; pocketdet does not build them."""
    m = re.match(r"^(?:backbone\.)?conv(\d+)[._](\w+)", name)
    if not m or not hasattr(model.backbone, "block_names"):  # MobileNetV3 backbones only
        return False
    bb = model.backbone
    block = f"conv{m[1]}"
    if block == "conv1" or block in bb.extra_names:
        return False
    if block not in bb.block_names:
        return int(m[1]) > int(bb.block_names[-1][4:])
    return getattr(bb, block).expand_only and not m[2].startswith("expand")


def _yolo_block_widths(tensors: dict[str, np.ndarray], num_blocks: int) -> list[list[int]] | None:
    """Head widths [conv0..3, route, tip] per block read from the file (FPGM-pruned heads are narrower)."""
    widths = []
    for i in range(num_blocks):
        row = []
        for part in ("conv_module.conv0", "conv_module.conv1", "conv_module.conv2", "conv_module.conv3",
                     "conv_module.route", "tip"):
            w = tensors.get(f"neck.yolo_block.{i}.{part}.conv.weight")
            if w is None:
                return None
            row.append(int(w.shape[0]))
        widths.append(row)
    return widths


# --------------------------------------------------------------------------------------------------
# full detectors
# --------------------------------------------------------------------------------------------------
def convert_paddle(path: str | Path, model_name: str, class_names: list[str] | None = None):
    """Read Paddle weights at `path` into the zoo model `model_name`; returns (model in eval mode, report).

    The class count comes from the file; `class_names` must be given when it is not COCO's 80."""
    cfg = load_config(model_name)
    arch = cfg.model["arch"]
    w = read_paddle_weights(path)
    src = w.source
    report = ConversionReport(source=src, layout=w.layout, naming="", target=cfg.name)
    for f in w.skipped_files:
        report.ignored[f] = "not a weight file"
    params = {}
    for k, v in w.arrays.items():
        if OPTIMIZER_STATE.search(k):
            report.ignored[k] = "optimizer state / step counter"
        else:
            params[k] = v
    if arch == "picodet":
        params = fold_head_aliases(params, report, src)

    probe = build_model(cfg.model)  # the 80-class default: names do not depend on the class count
    naming, table = _pick_naming(_candidate_tables(list(model_keys(probe))), list(params), src, cfg.name)
    report.naming = naming
    tensors = {table[s]: v for s, v in params.items() if s in table}
    unmapped = []
    for s in sorted(params):
        if s in table:
            continue
        if _unused_backbone_layer(s, probe):
            report.ignored[s] = "backbone layer after the last feature tap (unused by the detector)"
        elif QAT_STATE.search(s):
            report.ignored[s] = "quantization-aware training scale/state (int8 ranges: `pocketdet quantize`)"
        else:
            unmapped.append(s)
    # Paddle Linear weights are [in, out]; torch's are [out, in]
    linear = {f"{n}.weight" for n, mod in probe.named_modules() if isinstance(mod, torch.nn.Linear)}
    for k in linear & tensors.keys():
        if tensors[k].ndim == 2:
            tensors[k] = np.ascontiguousarray(tensors[k].T)
            report.transformed[k] = "transposed: Paddle Linear weight is [in, out]"

    model_cfg = dict(cfg.model)
    if arch == "yolov3":
        widths = _yolo_block_widths(tensors, len(probe.anchor_masks))
        if widths is not None and widths != probe.block_widths:
            model_cfg["block_widths"] = widths  # a pruned head: build the model to the file's widths
            report.notes.append(f"head widths read from the file (pruned): {widths}")
    n_file = _class_count(arch, probe, tensors)
    if class_names is None:
        if n_file not in (None, 80):
            raise WeightConversionError(f"{src}: the weights predict {n_file} classes, not COCO's 80; "
                                        f"pass class_names with {n_file} names")
        class_names = _coco_names()
    elif n_file is not None and n_file != len(class_names):
        raise WeightConversionError(f"{src}: the weights predict {n_file} classes but {len(class_names)} "
                                    "class names were given")
    model = build_model(model_cfg, class_names=class_names)

    if arch == "ssdlite" and naming == "dygraph":
        for i in range(model.ssd_head.levels):
            key = f"ssd_head.scores{i}.pw_conv.weight"
            if key in tensors:
                a = getattr(model.ssd_head, f"boxes{i}").pw_conv.out_channels // 4  # priors per location
                if tensors[key].shape[0] == a * (len(class_names) + 1):
                    tensors[key] = _background_last_to_first(tensors[key], a)
                    report.transformed[key] = "class channels reordered: dygraph background last -> first"
    report.loaded = check_and_load(model, tensors, src, unmapped, strict=True)
    if any(v.dtype == np.float16 for v in tensors.values()):
        report.notes.append("float16 values widened to float32")
    if arch == "ssdlite" and naming == "static":
        report.notes.append("static Paddle SSD: background already at class index 0")
    model.zoo_config = cfg.model_copy(update={"model": model_cfg}) if model_cfg != cfg.model else cfg
    return model.eval(), report


def paddle_static_arrays(model) -> dict[str, np.ndarray]:
    """The inverse mapping: a pocketdet detector's weights under static Paddle names, as the seed's files hold
    them (background class first, Linear weights [in, out]). Writes test fixtures and mirrors."""
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    out = {}
    for k, v in model_keys(model).items():
        a = v.detach().cpu().numpy()
        out[dygraph_to_static(to_paddle_dygraph(k))] = np.ascontiguousarray(a.T) if k in linear else a
    return out


# --------------------------------------------------------------------------------------------------
# ImageNet backbone initialisation
# --------------------------------------------------------------------------------------------------
def _download(url: str, sha256: str | None) -> Path:
    """Into torch hub's cache (`$TORCH_HOME/hub/checkpoints`), verified against sha256 when one is known."""
    dst = Path(torch.hub.get_dir()) / "checkpoints" / url.rstrip("/").rsplit("/", 1)[-1]
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dst), progress=True)
    expected = sha256 or KNOWN_SHA256.get(dst.name)
    if expected:
        digest = hashlib.sha256(dst.read_bytes()).hexdigest()
        if digest != expected:
            dst.unlink()
            raise WeightConversionError(f"{url}: sha256 {digest} does not match the expected {expected}")
    return dst


def _is_torch_file(p: Path) -> bool:
    if p.is_dir():
        return False
    with p.open("rb") as f:
        return f.read(2) == b"PK"  # torch.save's zip container


def _torch_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightConversionError(f"{path}: not a torch checkpoint readable with weights_only=True "
                                    f"({type(e).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # pocketdet / reference-script checkpoint
        obj = obj["model"]
    return obj if isinstance(obj, dict) else {}


def _load_pocketdet_backbone(model, sd: dict, src: str) -> ConversionReport:
    """Another pocketdet model's checkpoint: its `backbone.*` tensors of equal shape."""
    report = ConversionReport(source=src, layout="pocketdet checkpoint", naming="pocketdet", target="backbone")
    ours = {k: v for k, v in model_keys(model).items() if k.startswith("backbone.")}
    tensors = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        if not k.startswith("backbone."):
            report.ignored[k] = "detector layer outside the backbone"
        elif k not in ours:
            report.ignored[k] = "backbone layer this model does not build"
        elif tuple(v.shape) != tuple(ours[k].shape):
            report.not_loaded[k] = f"shape differs (file {tuple(v.shape)}, model {tuple(ours[k].shape)})"
        else:
            tensors[k] = v
    for k in ours:
        if k not in tensors and k not in report.not_loaded:
            report.not_loaded[k] = "not in the file"
    if not tensors:
        raise WeightConversionError(f"{src}: no backbone tensor fits the model")
    report.loaded = check_and_load(model, tensors, src, [], strict=False)
    return report


def load_backbone_weights(model, path_or_url: str | Path, sha256: str | None = None) -> ConversionReport:
    """Load ImageNet (or detector) MobileNetV3 weights into `model.backbone`; returns the report.

    File keys that are neither backbone weights nor a known classifier/optimizer entry are refused."""
    spec = str(path_or_url)
    path = _download(spec, sha256) if re.match(r"^https?://", spec) else Path(spec)
    if not path.exists():
        raise WeightConversionError(f"{path}: no such file or directory")
    if _is_torch_file(path):
        sd = _torch_state_dict(path)
        if any(k.startswith("backbone.conv1.") for k in sd):
            return _load_pocketdet_backbone(model, sd, str(path))
        from .torchvision import load_torchvision_backbone
        return load_torchvision_backbone(model, path)
    w = read_paddle_weights(path)
    src = w.source
    report = ConversionReport(source=src, layout=w.layout, naming="", target="backbone")
    ours = {k: v for k, v in model_keys(model).items() if k.startswith("backbone.")}
    rests = {k[len("backbone."):]: k for k in ours}
    tables = {
        "dygraph": {to_paddle_dygraph(r): k for r, k in rests.items()},
        "dygraph (backbone.)": {"backbone." + to_paddle_dygraph(r): k for r, k in rests.items()},
        "static": {s: k for r, k in rests.items() if (s := mobilenetv3_to_static(to_paddle_dygraph(r)))},
    }
    naming, table = _pick_naming(tables, list(w.arrays), src, "the MobileNetV3 backbone")
    report.naming = naming
    detector_file = any(k.startswith("backbone.") for k in w.arrays)
    tensors, unmapped = {}, []
    for k, v in w.arrays.items():
        if k in table:
            dst = table[k]
            if tuple(v.shape) == tuple(ours[dst].shape):
                tensors[dst] = v
            else:
                report.not_loaded[dst] = f"shape differs (file {tuple(v.shape)}, model {tuple(ours[dst].shape)})"
                report.ignored[k] = "shape differs from the model"
        elif IMAGENET_CLASSIFIER.match(k):
            report.ignored[k] = "ImageNet classifier"
        elif OPTIMIZER_STATE.search(k):
            report.ignored[k] = "optimizer state / step counter"
        elif detector_file and not k.startswith("backbone."):
            report.ignored[k] = "detector layer outside the backbone"
        else:
            unmapped.append(k)
    for dst in ours:
        if dst not in tensors and dst not in report.not_loaded:
            report.not_loaded[dst] = "not in the file"
    if not tensors:
        raise WeightConversionError(f"{src}: no backbone tensor fits the model")
    report.loaded = check_and_load(model, tensors, src, sorted(unmapped), strict=False)
    return report
