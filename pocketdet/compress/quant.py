"""int8 quantization: post-training (PTQ) and quantization-aware training (QAT), deployed as a QDQ int8 ONNX
model that `pocketdet.Detector` runs with ONNX Runtime.

Why this route (measured, BENCHMARKS.md section `quant`): torch 2.14.1 no longer ships
`torch.ao.quantization.quantize_pt2e` and torchao is not installed, so PT2E is not available here; the deployed
runtime is ONNX Runtime anyway, so both methods end in ORT's static quantizer (`quantize_static`, QDQ format,
per-channel symmetric int8 weights, per-tensor asymmetric uint8 activations: ORT's U8S8 kernels, the fast pair
on x86).

* PTQ: export the float model (`deploy.export.export_onnx`), calibrate activation ranges (MinMax) on N real
  images, quantize.
* QAT: eager fake-quant fine-tuning. Every quantized `nn.Conv2d` is swapped for `QATConv2d`: per-tensor
  fake-quant of its input (moving-average min/max, rate 0.9 as PaddleSlim's `moving_average_abs_max`) and
  per-channel symmetric fake-quant of its weight (abs-max per output channel, PaddleSlim's
  `channel_wise_abs_max`). BN stays live, as in PaddleSlim's quant_aware: with per-channel symmetric weights,
  folding BN at export (w * gamma / sigma per output channel) scales each channel's grid with its weights, so
  the int8 weight values are the same as those trained. After training, the float weights are exported and
  ORT quantizes them with the activation scales learned by the QAT observers (`TensorQuantOverrides` on each
  quantized conv's input); tensors QAT does not observe (conv outputs, adds) are calibrated as in PTQ.
  Deviation from PaddleSlim: activations are asymmetric uint8 (ORT's U8S8 fast path) rather than symmetric
  abs-max int8.

`not_quant` patterns keep layers float. The Paddle recipe's names are accepted (spec §3.7): `res_conv1` = every
backbone depthwise conv (+BN+act) = `backbone.conv*.bottleneck_conv`; `se_block` = every SE block =
`backbone.conv*.mid_se`. Any other pattern is a pocketdet module-name glob (`backbone.conv*.mid_se`) or regex
(`backbone\\.conv\\d+\\.mid_se`), matched against a module's full dotted name or any of its parents.

The quantized checkpoint is a normal pocketdet checkpoint (float weights loadable by `pocketdet.load`) plus
`"quant"`: {method, not_quant, activation_type, weight_type, calibration_images, onnx: uint8 tensor with the
int8 ONNX file's bytes}. `pocketdet export CKPT --format onnx -o q.onnx` writes that int8 file (export.py).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from .ort_quant import (PADDLE_NOT_QUANT, OrtQuantOptions, QuantError, compile_patterns, excluded,  # noqa: F401
                        onnx_node_module, quantize_onnx)

log = logging.getLogger("pocketdet.quant")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


# -- QAT: fake-quant convs ---------------------------------------------------------------------------------
def _act_fake_quant() -> nn.Module:
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    # averaging_constant 0.1 == PaddleSlim moving_rate 0.9
    return FakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine, averaging_constant=0.1)


def _weight_fake_quant() -> nn.Module:
    from torch.ao.quantization import FakeQuantize, PerChannelMinMaxObserver

    # [-127, 127]: the symmetric range ORT uses for int8 weights, so the trained grid is the deployed one
    return FakeQuantize(PerChannelMinMaxObserver, quant_min=-127, quant_max=127, dtype=torch.qint8,
                        qscheme=torch.per_channel_symmetric, ch_axis=0)


class QATConv2d(nn.Conv2d):
    """nn.Conv2d with fake-quantized input (per tensor) and weight (per output channel). Keeps the conv's
    parameter names, so optimizers' param groups and the float state dict are unchanged."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "QATConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode)
        q.weight = conv.weight
        q.bias = conv.bias
        q.act_fq = _act_fake_quant()
        q.weight_fq = _weight_fake_quant()
        return q.to(conv.weight.device)

    def forward(self, x):
        # observe activation ranges only while training: evaluation must not move the learned scales
        self.act_fq.observer_enabled[0] = int(self.training)
        return self._conv_forward(self.act_fq(x), self.weight_fq(self.weight), self.bias)

    def input_qparams(self) -> tuple[float, int]:
        scale, zp = self.act_fq.calculate_qparams()
        return float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])


def prepare_qat(model: nn.Module, not_quant=()) -> list[str]:
    """Swap every conv not matched by `not_quant` for a QATConv2d, in place; returns the quantized names."""
    regexes = compile_patterns(not_quant)
    names = []
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.Conv2d and not excluded(name, regexes):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, QATConv2d.from_conv(mod))
            names.append(name)
    if not names:
        raise QuantError(f"not-quant patterns {list(not_quant)} exclude every conv: nothing to quantize")
    return names


def qat_input_ranges(model: nn.Module) -> dict[str, tuple[float, int]]:
    """{module name: (input scale, zero point)} of every QATConv2d that has observed data."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QATConv2d) and torch.isfinite(mod.act_fq.activation_post_process.min_val):
            out[name] = mod.input_qparams()
    return out


def float_state_dict(model: nn.Module) -> dict:
    """The state dict without fake-quant buffers: loads into the plain float model."""
    return {k: v for k, v in model.state_dict().items() if ".act_fq." not in k and ".weight_fq." not in k}


# -- calibration images ------------------------------------------------------------------------------------
def calibration_images(data, n: int = 32, split: str = "train") -> list[Path]:
    """Up to n image paths from a dataset YAML's split or a folder of images (sorted, deterministic)."""
    p = Path(data)
    if p.is_dir():
        paths = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise QuantError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {p}")
    elif p.suffix in (".yaml", ".yml"):
        from pocketdet.data import build_dataset, load_dataset_yaml

        ds = build_dataset(load_dataset_yaml(p), split)
        paths = [r.path for r in ds.records]
    else:
        raise QuantError(f"--data {p}: expected a dataset YAML or a folder of images")
    if n < 1:
        raise QuantError(f"need at least one calibration image, got n={n}")
    step = max(1, len(paths) // n)  # spread over the split rather than its first n files
    return paths[::step][:n]


# -- end to end: checkpoint -> quantized checkpoint ---------------------------------------------------------
def _model_and_config(model_or_checkpoint):
    from pocketdet.api import model_from_name_or_checkpoint

    model = model_from_name_or_checkpoint(model_or_checkpoint)
    cfg = getattr(model, "zoo_config", None)
    if cfg is None:
        from pocketdet.config import load_config
        cfg = load_config(str(model_or_checkpoint))
    return model, cfg


def qat_recipe(cfg):
    """The QAT recipe for a float config: the config itself when it has `train.extra.quant`, else the zoo's
    `<name>_quant` entry for the same model (e.g. ssdlite_mnv3_small_320_quant), else None."""
    from pocketdet.config import ConfigError, load_config

    if "quant" in cfg.train.extra:
        return cfg
    try:
        q = load_config(f"{cfg.name}_quant")
    except ConfigError:
        return None
    return q if q.model == cfg.model else None


def bench_int8_export(model, path, name: str, not_quant=()) -> Path:
    """`pocketdet bench`'s int8 models: PTQ calibrated on the bundled coco128 photos that also make the
    bench's weights trained-like, written to `path`."""
    from pocketdet.deploy.trained_like import calibration_images

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ptq(model, calibration_images(), not_quant, name=name))
    return path


def ptq(model, images, not_quant=(), opts: OrtQuantOptions | None = None, name: str | None = None) -> bytes:
    """Float model -> int8 ONNX bytes (ORT static quantization calibrated on `images`)."""
    from pocketdet.deploy.export import export_onnx

    if getattr(model, "arch", None) == "cascade_rcnn":
        from .quant_parts import ptq_two_part
        return ptq_two_part(model, images, not_quant, opts, name)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", name=name)
        out = quantize_onnx(fp32, Path(tmp) / "int8.onnx", images, not_quant, opts=opts,
                            quant_meta={"method": "ptq"})
        return out.read_bytes()


def qat_to_onnx(qat_model, images, not_quant=(), opts: OrtQuantOptions | None = None,
                name: str | None = None) -> bytes:
    """A QAT-trained model (with QATConv2d) -> int8 ONNX bytes whose conv-input scales are the QAT ones."""
    import copy

    from pocketdet.deploy.export import export_onnx

    overrides = qat_input_ranges(qat_model)
    plain = copy.deepcopy(qat_model).cpu().eval()
    for n, m in list(plain.named_modules()):  # back to plain convs for the float export
        if isinstance(m, QATConv2d):
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                             m.groups, m.bias is not None, m.padding_mode)
            conv.weight, conv.bias = m.weight, m.bias
            parent, _, attr = n.rpartition(".")
            setattr(plain.get_submodule(parent) if parent else plain, attr, conv)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(plain, Path(tmp) / "fp32.onnx", name=name)
        out = quantize_onnx(fp32, Path(tmp) / "int8.onnx", images, not_quant, input_overrides=overrides,
                            opts=opts, quant_meta={"method": "qat", "qat_input_scales": len(overrides)})
        return out.read_bytes()


def qat_finetune(model, cfg, train_dataset, not_quant=(), out_dir=None, iters: int | None = None,
                 lr: float | None = None, batch_size: int | None = None, workers: int = 0,
                 device: str = "cpu", progress: bool = True):
    """Fake-quant fine-tuning of `model`'s weights with the trainer and the config's recipe (overridable);
    returns the trained model with QATConv2d modules."""
    from pocketdet.config import apply_overrides
    from pocketdet.checkpoint import load_checkpoint
    from pocketdet.engine.trainer import TrainOptions, train

    overrides = [f"train.num_workers={workers}"]
    if iters is not None:
        overrides += [f"train.schedule.max_iters={iters}", f"train.schedule.warmup_iters={min(iters // 10, 50)}",
                      f"train.checkpoint_interval={iters}", f"train.eval_interval={iters}"]
    if lr is not None:
        overrides += [f"train.optimizer.lr={lr}", "train.scale_lr=false"]
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    cfg = apply_overrides(cfg, overrides)
    state = float_state_dict(model)

    def init(m):  # the trainer builds a fresh model: start it from the float weights, then fake-quant it
        m.load_state_dict(state)
        prepare_qat(m, not_quant)

    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="pocketdet_qat_"))
    result = train(cfg, train_dataset, TrainOptions(out_dir=out_dir, device=device, init_fn=init,
                                                    progress=progress))
    ck = load_checkpoint(result["last"])
    trained = _fresh_like(model, cfg)
    prepare_qat(trained, not_quant)
    trained.load_state_dict(ck["model"])
    return trained.eval()


def _fresh_like(model, cfg):
    from pocketdet.models import build_model

    return build_model(cfg.model, class_names=list(model.class_names))


def quantize_checkpoint(model_or_checkpoint, method: str, data, output, not_quant=(), calib_images: int = 32,
                        iters: int | None = None, lr: float | None = None, batch_size: int | None = None,
                        opts: OrtQuantOptions | None = None, progress: bool = True,
                        speed_check: bool = True) -> dict:
    """`pocketdet quantize`: float checkpoint (or zoo name) -> quantized checkpoint at `output`.
    Returns a summary dict; with `speed_check`, int8 vs fp32 forward time on this CPU (`quant_speed`)."""
    from pocketdet.checkpoint import save_atomic
    from pocketdet.engine.trainer import checkpoint_state

    if method not in ("ptq", "qat"):
        raise QuantError(f"unknown --method {method!r} (choose ptq or qat)")
    model, cfg = _model_and_config(model_or_checkpoint)
    model = model.cpu().float().eval()
    images = calibration_images(data, calib_images)
    recipe = qat_recipe(cfg) if method == "qat" else None
    if recipe is not None:  # the zoo's QAT recipe: its schedule/LR, and its not-quant patterns by default
        cfg = recipe
        not_quant = list(not_quant) or list(recipe.train.extra["quant"].get("not_quant", []))
    # logged once the recipe's defaults are known: the log and the summary name the same layers
    log.info("%s of %s: %d calibration images from %s, not-quant %s", method.upper(), cfg.name, len(images), data,
             list(not_quant) or "none")
    if method == "ptq":
        onnx_bytes = ptq(model, images, not_quant, opts, name=cfg.name)
        state_model = model
    else:
        if Path(data).suffix not in (".yaml", ".yml"):
            raise QuantError(f"--method qat trains: --data must be a dataset YAML with a train split, got {data}")
        from pocketdet.data import build_dataset, load_dataset_yaml

        train_ds = build_dataset(load_dataset_yaml(data), "train", list(model.class_names))
        state_model = qat_finetune(model, cfg, train_ds, not_quant, iters=iters, lr=lr, batch_size=batch_size,
                                   progress=progress)
        onnx_bytes = qat_to_onnx(state_model, images, not_quant, opts, name=cfg.name)
    quant = {"method": method, "not_quant": list(not_quant), "activation_type": "uint8 per-tensor asymmetric",
             "weight_type": "int8 per-channel symmetric", "format": "onnx-qdq",
             "calibration_images": len(images),
             "onnx": torch.frombuffer(bytearray(onnx_bytes), dtype=torch.uint8)}
    state = checkpoint_state(model, cfg, model.class_names, quant=quant)
    state["model"] = float_state_dict(state_model)
    save_atomic(state, output)
    summary = {"output": str(output), "method": method, "int8_onnx_bytes": len(onnx_bytes),
               "calibration_images": len(images), "not_quant": list(not_quant)}
    if speed_check:
        summary.update(_speed_check(model, onnx_bytes, cfg.name))
    return summary


def _speed_check(model, onnx_bytes: bytes, name: str) -> dict:
    """int8 vs fp32 forward on this CPU (quant_speed); a logged warning when int8 is slower."""
    from pocketdet.deploy.export import export_onnx

    from .quant_speed import slower_warning, time_fp32_vs_int8

    from pocketdet.deploy.runtime import ModelFileError

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", name=name)
        int8 = Path(tmp) / "int8.onnx"
        int8.write_bytes(onnx_bytes)
        try:
            speed = time_fp32_vs_int8(fp32, int8)
        except ModelFileError as e:  # the checkpoint is written already; say why there is no timing
            log.warning("int8 speed check skipped: %s", e)
            return {"int8_vs_fp32": {"error": str(e)}}
    warning = slower_warning(speed)
    if warning:
        log.warning(warning)
    return {"int8_vs_fp32": speed, **({"warning": warning} if warning else {})}
