"""Compression: `pocketdet quantize | prune | distill`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import _fail, _setup_logging, _user_errors, _warn_if_random_weights, app


@app.command()
def quantize(
    model: str = typer.Argument(..., help="float checkpoint (.pt), NAME:coco (official weights) or zoo name"),
    method: str = typer.Option("ptq", "--method", help="ptq (calibrate only) | qat (fake-quant fine-tuning)"),
    data: Path = typer.Option(..., "--data", help="dataset YAML (QAT trains on its train split; PTQ calibrates "
                                                  "on it) or, for PTQ, a folder of images"),
    out: Path = typer.Option(..., "-o", "--out", help="quantized checkpoint to write (.pt)"),
    not_quant: list[str] = typer.Option([], "--not-quant", help="layers kept float: Paddle scopes res_conv1 / "
                                        "se_block, or module-name globs/regexes; repeatable"),
    calib_images: int = typer.Option(32, "--calib-images", help="calibration images"),
    iters: Optional[int] = typer.Option(None, help="QAT: override schedule.max_iters"),
    lr: Optional[float] = typer.Option(None, help="QAT: base LR (no batch scaling)"),
    batch_size: Optional[int] = typer.Option(None, help="QAT: images per step"),
    fmt: str = typer.Option("onnx", "--format", help="onnx: int8 checkpoint for ONNX Runtime | ncnn: MODEL is an "
                            "fp32 ncnn export, -o the int8 .ncnn.param to write (PTQ; --not-quant: ncnn layer "
                            "types kept fp32, e.g. ConvolutionDepthWise)"),
    float_depthwise: bool = typer.Option(False, "--float-depthwise", help="keep depthwise (grouped) convs fp32 "
                                         "(faster on some CPUs: see BENCHMARKS.md int8-layers)"),
    speed_check: bool = typer.Option(True, "--speed-check/--no-speed-check",
                                     help="time int8 against fp32 on this CPU and warn when int8 is slower"),
):
    """int8 quantization (ONNX Runtime QDQ); `pocketdet export OUT --format onnx` then writes the int8 model.
    `--format ncnn`: calibrate an ncnn export on real photos and write its int8 form."""
    _setup_logging()
    from ..compress.quant import OrtQuantOptions, QuantError, calibration_images, quantize_checkpoint

    if fmt == "ncnn":
        from ..deploy.ncnn_int8 import quantize_ncnn

        if method != "ptq":
            _fail("--format ncnn supports --method ptq only (calibration of an exported model)")
        try:
            images = calibration_images(data, calib_images)
            summary = quantize_ncnn(model, images, out, skip_types=tuple(not_quant))
        except _user_errors() + (QuantError, ValueError) as e:
            _fail(str(e))
        typer.echo(json.dumps(summary, indent=2))
        return
    if fmt != "onnx":
        _fail(f"--format must be onnx or ncnn, got {fmt!r}")
    try:
        summary = quantize_checkpoint(model, method, data, out, not_quant, calib_images, iters, lr, batch_size,
                                      opts=OrtQuantOptions(float_depthwise=float_depthwise), speed_check=speed_check)
    except _user_errors() + (QuantError,) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))


@app.command("prune")
def prune_cmd(
    model: str = typer.Argument(..., help="YOLOv3 checkpoint (.pt), NAME:coco or zoo name (random init)"),
    params: list[str] = typer.Option([], "--params", help="convs to prune: static Paddle names "
                                     "(yolo_block.0.0.0.conv.weights), module names or globs; comma-separated "
                                     "or repeated. Default: the seed's 18 head convs"),
    ratios: list[str] = typer.Option([], "--ratios", help="fraction of filters removed: one for all, or one per "
                                     "param (comma-separated or repeated). Default: the seed's 0.75 x12, 0.875 x6"),
    criterion: str = typer.Option("fpgm", "--criterion", help="fpgm | l1 | l2"),
    out: Path = typer.Option(..., "-o", "--out", help="pruned checkpoint to write (.pt)"),
):
    """Structured FPGM / L1 / L2 filter pruning of the YOLOv3 head (the seed's "prune75875" by default)."""
    _setup_logging()
    from ..compress.prune import SEED_PRUNE_PARAMS, SEED_PRUNE_RATIOS, PruneError, prune_checkpoint

    names = [p for item in params for p in item.split(",") if p.strip()] or SEED_PRUNE_PARAMS
    try:
        rs = [float(r) for item in ratios for r in item.split(",") if r.strip()]
    except ValueError:
        _fail(f"--ratios must be numbers, got {ratios}")
    if not rs and params:
        _fail("--ratios is required with --params")
    rs = rs or SEED_PRUNE_RATIOS
    try:
        summary = prune_checkpoint(model, out, [n.strip() for n in names], rs, criterion)
    except _user_errors() + (PruneError,) as e:
        _fail(str(e))
    summary.pop("pruned", None)
    typer.echo(json.dumps(summary, indent=2))


@app.command("distill")
def distill_cmd(
    teacher: str = typer.Option(..., "--teacher", help="teacher YOLOv3 checkpoint (e.g. YOLOv3-ResNet34) or NAME:coco"),
    student: str = typer.Option(..., "--student", help="student checkpoint (e.g. from `pocketdet prune`) or NAME:coco"),
    data: Path = typer.Option(..., "--data", help="dataset YAML (trains on its train split)"),
    iters: int = typer.Option(..., "--iters", help="training iterations"),
    out: Path = typer.Option(..., "-o", "--out", help="distilled checkpoint to write (.pt)"),
    batch_size: Optional[int] = typer.Option(None, help="images per step (default: the student recipe's)"),
    lr: Optional[float] = typer.Option(None, help="LR used as is (default: recipe LR scaled to the batch)"),
    device: str = typer.Option("auto", help="auto (a CUDA GPU when there is one) | cpu | cuda | cuda:N"),
    workers: int = typer.Option(0, min=0, help="data loader workers (0: load in the main process)"),
):
    """Fine-tune a student with its YOLOv3 loss + split distillation (x1000) from a frozen teacher, as
    PaddleDetection's slim recipe for the pruned YOLOv3-MobileNetV3 does."""
    _setup_logging()
    from ..compress.distill import DistillError, distill_checkpoint
    from ..engine.device import resolve_device

    try:
        device = resolve_device(device)
        _warn_if_random_weights(teacher, "--teacher")
        _warn_if_random_weights(student, "--student")
        summary = distill_checkpoint(teacher, student, data, iters, out, batch_size, lr, device, workers)
    except _user_errors() + (DistillError,) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))
