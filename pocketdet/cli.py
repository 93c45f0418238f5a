"""`pocketdet` command line: train | val | predict | info | zoo (+ export, bench, convert, quantize, prune...).

Multi-GPU / multi-node: `torchrun --nproc_per_node 8 -m pocketdet.cli train ...` (plain torchrun + DDP).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Small, fast object detectors for phones and CPUs (PaddleDetection's mobile zoo in PyTorch).")


def _show_version(value: bool) -> None:
    if value:
        from . import __version__
        typer.echo(f"pocketdet {__version__}")
        raise typer.Exit()


@app.callback()
def _common(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                         help="print the version and exit")):
    pass


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _user_errors():
    from .config import ConfigError
    from .data.errors import DataError
    from .deploy.runtime import ModelFileError
    from .checkpoint import CheckpointError
    from .engine.device import DeviceError
    from .engine.trainer import TrainingError
    return (ConfigError, DataError, CheckpointError, ModelFileError, FileNotFoundError, DeviceError, TrainingError)


@app.command()
def train(
    model: str = typer.Argument(..., help="zoo name (see `pocketdet zoo`) or a config YAML"),
    data: Path = typer.Option(..., "--data", help="dataset YAML (path/train/val/names)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default runs/<model>)"),
    iters: Optional[int] = typer.Option(None, help="override schedule.max_iters (the schedule is rescaled)"),
    batch_size: Optional[int] = typer.Option(None, help="images per process"),
    lr: Optional[float] = typer.Option(None, help="base LR for the reference batch"),
    workers: Optional[int] = typer.Option(None, help="data loader workers per process"),
    device: str = typer.Option("auto", help="auto (a CUDA GPU when there is one) | cpu | cuda | cuda:N"),
    resume: Optional[str] = typer.Option(None, help="checkpoint to resume from, or 'auto' for <out>/last.pt"),
    pretrained: Optional[str] = typer.Option(None, help="backbone weights: path or URL (Paddle/torchvision/pocketdet)"),
    weights: Optional[str] = typer.Option(None, "--weights", help="initialise the whole detector: coco (official "
                                          "weights, downloaded once) | CKPT.pt | FILE.pdparams; other classes: "
                                          "class layers rebuilt, classes with a trained name keep their rows"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip periodic evaluation"),
    set_: list[str] = typer.Option([], "--set", help="config override key=value, e.g. train.ema_decay=0.9998"),
):
    """Train a zoo model on a COCO-format or YOLO-txt dataset.

    SIGTERM or Ctrl-C stops at the end of the current iteration: last.pt is written, the result is printed, and
    the exit code is 143 (SIGTERM) or 130 (SIGINT); `--resume auto` then continues exactly where it stopped."""
    _setup_logging()
    from .config import apply_overrides, load_config
    from .convert.common import WeightConversionError
    from .data import build_dataset, load_dataset_yaml
    from .engine.device import resolve_device
    from .engine.trainer import TrainOptions
    from .engine.trainer import train as run_train

    try:
        device = resolve_device(device)
        cfg = load_config(model)
        overrides = train_overrides(cfg, set_, iters, batch_size, lr, workers)
        if overrides:
            cfg = apply_overrides(cfg, overrides)
        spec = load_dataset_yaml(data)
        train_ds = build_dataset(spec, "train")
        val_ds = None if no_eval or spec.val is None else build_dataset(spec, "val", train_ds.class_names)
        out_dir = out or Path("runs") / cfg.name
        resume_path = (out_dir / "last.pt") if resume == "auto" else (Path(resume) if resume else None)
        if resume == "auto" and not resume_path.exists():
            resume_path = None
        if weights and pretrained:
            _fail("--weights initialises the whole detector, backbone included: drop --pretrained")
        init_fn = (_weights_init(model, weights) if weights else
                   _pretrained_init(pretrained) if pretrained else _frozen_norm_init(train_ds))
        hooks = _family_hooks(cfg)
        result = run_train(cfg, train_ds, TrainOptions(out_dir=out_dir, device=device, resume=resume_path,
                                                        eval_dataset=val_ds, init_fn=init_fn, **hooks))
    except _user_errors() + (WeightConversionError,) as e:
        _fail(str(e))
    from .engine.distributed import is_main
    if is_main():
        typer.echo(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}, indent=2))
    if result.get("interrupted"):
        import signal
        raise typer.Exit(128 + getattr(signal, result["interrupted"], signal.SIGTERM))


def train_overrides(cfg, set_: list[str], iters=None, batch_size=None, lr=None, workers=None) -> list[str]:
    """`pocketdet train` options as config overrides (explicit --set values first, options after)."""
    overrides = list(set_)
    if iters is not None:
        overrides += [f"train.schedule.max_iters={iters}"]
        mixup = cfg.train.extra.get("mixup_iters")
        if isinstance(mixup, int) and mixup > 0 and not any(o.startswith("train.extra.mixup_iters") for o in set_):
            # YOLOv3 mixes up for the first 250k of 500k iterations: keep that fraction of a shorter run
            overrides.append(f"train.extra.mixup_iters={min(round(mixup * iters / cfg.train.schedule.max_iters), iters)}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    if lr is not None:
        overrides.append(f"train.optimizer.lr={lr}")
    if workers is not None:
        overrides.append(f"train.num_workers={workers}")
    return overrides


def _pretrained_init(src: str, min_fraction: float = 1 / 3):
    """Backbone init from Paddle / torchvision / pocketdet weights (a URL goes through torch hub's cache).
    Logs how many backbone tensors loaded; refuses when fewer than `min_fraction` of them did: a checkpoint of
    another family or size fits a few stem layers by shape (SSDLite-Large into Small: 40 of 271) and would
    silently leave the rest random, while real ImageNet weights fill 60% of SSDLite-Small's backbone (its
    extra layers and halved tail are not in them) and all of YOLOv3's."""
    def init(model):
        from .convert import load_backbone_weights
        from .convert.common import WeightConversionError
        try:
            report = load_backbone_weights(model, src)
        except OSError as e:  # URLError, timeouts: offline machines get one line, not a urllib traceback
            raise WeightConversionError(f"--pretrained {src}: cannot read it ({getattr(e, 'reason', None) or e}); "
                                        f"offline? download the file elsewhere and pass its path") from None
        total = len(report.loaded) + len(report.not_loaded)
        logging.getLogger("pocketdet.train").info(
            "--pretrained %s: loaded %d of %d backbone tensors, %d kept their initialisation, %d file entries "
            "ignored", src, len(report.loaded), total, len(report.not_loaded), len(report.ignored))
        if len(report.loaded) < min_fraction * total:
            first = next(iter(report.not_loaded.items()), ("", ""))
            raise WeightConversionError(
                f"--pretrained {src}: only {len(report.loaded)} of {total} backbone tensors fit this model "
                f"(first left out: {first[0]}: {first[1]}); is it a checkpoint of another family or size?")
    return init


def _weights_init(model_spec: str, weights: str):
    """Whole-detector init from `weights` (resolved, downloaded and converted now, before training starts);
    class layers rebuilt when the dataset's classes differ (pocketdet/init_weights.py)."""
    from .api import load, weights_checkpoint
    ckpt = weights_checkpoint(model_spec, weights)

    def init(model):
        from .init_weights import init_from_model
        report = init_from_model(model, load(ckpt), weights)
        logging.getLogger("pocketdet.train").info("%s", report.summary())
    return init


def _frozen_norm_init(dataset, n: int = 16):
    """Without --pretrained, a model with frozen BN (Cascade R-CNN's backbone) gets its frozen statistics from
    the first `n` training photos (`calibrate_frozen_norm`): identity statistics on random weights make the
    activations vanish. Other models are left alone."""
    def init(model):
        if hasattr(model, "calibrate_frozen_norm"):
            model.calibrate_frozen_norm([dataset[i][0].float() / 255 for i in range(min(n, len(dataset)))])
    return init


def _family_hooks(cfg) -> dict:
    """Batch-level augmentation that some families need (YOLOv3 multi-scale + mixup, R-CNN multi-scale)."""
    from .engine.family_hooks import hooks_for
    return hooks_for(cfg)


@app.command()
def val(
    model: str = typer.Argument(..., help="checkpoint (.pt), NAME:coco (official weights), zoo name, ONNX export "
                                          "(fp32 or int8) or ncnn export (NAME.ncnn.param); files are recognised "
                                          "by content"),
    data: Path = typer.Option(..., "--data", help="dataset YAML"),
    split: str = typer.Option("val", help="train | val | test"),
    batch_size: int = typer.Option(8, min=1, help="images per forward pass (torch models)"),
    workers: int = typer.Option(2, min=0, help="data loader workers (0: load in the main process; torch models)"),
    device: str = typer.Option("auto", help="auto (a CUDA GPU when there is one) | cpu | cuda | cuda:N "
                                            "(torch models; exports run on the CPU)"),
    runtime: str = typer.Option("auto", help="auto (from the file) | torch | onnx | ncnn"),
    threads: int = typer.Option(0, min=0, help="CPU threads (0: runtime default)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the stats to this JSON file"),
):
    """COCO box AP of a model on a dataset split. Exports run through the deployed runtime (`Detector.predict`:
    its own decode, resize and NMS), with the same COCO evaluation and stats as torch models."""
    _setup_logging()
    from .data import build_dataset, load_dataset_yaml
    from .engine.device import resolve_device
    from .engine.evaluate import evaluate, evaluate_predictor
    from .model_forms import open_model

    try:
        form = open_model(model, runtime, threads or None)
        if form.model is not None:
            device = resolve_device(device)
        ds = build_dataset(load_dataset_yaml(data), split, form.class_names)
    except _user_errors() + (ImportError,) as e:
        _fail(str(e))
    if form.model is not None:
        stats = evaluate(form.model.to(device), ds, batch_size=batch_size, num_workers=workers, device=device)
    else:
        stats = evaluate_predictor(form.predict, ds)
    stats = {"model": form.source, "format": form.label, **stats}
    typer.echo("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    if json_out:
        json_out.write_text(json.dumps(stats, indent=2))


@app.command()
def predict(
    model: str = typer.Argument(..., help="checkpoint (.pt), NAME:coco (official weights), zoo name, ONNX export or "
                                          "ncnn export (NAME.ncnn.param); files are recognised by content"),
    sources: list[str] = typer.Argument(..., help="image files, folders, glob patterns, .txt lists of images, "
                                                   "video files, or camera indices (0, /dev/video0)"),
    out: Path = typer.Option(Path("runs/predict"), "--out", help="folder for the annotated images / videos and JSON"),
    conf: float = typer.Option(0.3, min=0.0, max=1.0, help="score threshold for drawing and JSON (0..1)"),
    runtime: str = typer.Option("auto", help="auto (from the file) | torch | onnx | ncnn"),
    threads: int = typer.Option(0, help="CPU threads (0: runtime default)"),
    png: bool = typer.Option(False, "--png", help="annotated images as PNG (lossless, ~5x larger) instead of JPEG"),
    stride: int = typer.Option(1, "--stride", min=1, help="videos/cameras: detect on every N-th frame"),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1,
                                             help="videos/cameras: stop after this many processed frames each"),
    no_overlap: bool = typer.Option(False, "--no-overlap", help="decode, detect and write one after another "
                                    "(default: decoding and writing overlap with detection on other threads)"),
):
    """Detect objects in images and videos: annotated JPEGs (+ predictions.json) for images, an annotated .mp4
    and a .jsonl (one line per frame) for each video or camera. Output names follow the sources' file names
    (without suffix); a name that two sources share gets _1, _2, ... appended (JSON "output" says which)."""
    _setup_logging()
    from .predict_run import run_predict
    from .sources import SourceError, collect_sources

    try:
        items = collect_sources(sources)
        _warn_if_random_weights(model)
        prepare, infer, class_names = _predictor(model, runtime, threads)
        from tqdm import tqdm
        bar = tqdm(desc="predict", unit="img")
        counts = run_predict(items, prepare, infer, class_names, out, conf=conf, png=png, stride=stride,
                             max_frames=max_frames, overlap=not no_overlap, progress=lambda _: bar.update())
        bar.close()
    except _user_errors() + (SourceError, ImportError) as e:
        _fail(str(e))
    done = counts["images"] + counts["frames"]
    summary = f"{counts['images']} images" + (f", {counts['frames']} video frames" if counts["frames"] else "")
    summary += f" -> {out}/"
    if counts["skipped"]:
        summary += f" ({counts['skipped']} unreadable, skipped: see the warnings)"
    if done == 0:
        _fail(f"nothing could be read: {summary}")
    typer.echo(summary)


def _warn_if_random_weights(spec: str, role: str = "model") -> None:
    """A bare zoo name builds the architecture with random weights: fine for latency and export checks, but its
    detections are noise. Say so before anything runs on it."""
    from .config import zoo_names

    if not Path(spec).exists() and spec in zoo_names():
        logging.getLogger("pocketdet").warning(
            "%s %s is a zoo name without weights: the model has RANDOM weights and its detections mean nothing "
            "(pass a checkpoint .pt, e.g. from `pocketdet train` or `pocketdet convert`)", role, spec)


def _predictor(model: str, runtime: str, threads: int):
    """-> (prepare(rgb), infer(prepared) -> (boxes, scores, labels), class names). `prepare` is the
    decode-side work (reduce, resize) that `predict_run` overlaps with `infer` on another thread. Every model
    form runs (`model_forms.open_model`: checkpoint, zoo name, ONNX or ncnn export, told by content)."""
    from .model_forms import open_model

    form = open_model(model, runtime, threads or None)
    if form.detector is not None:  # ONNX Runtime / ncnn: the deployed pre- and post-processing
        det = form.detector

        def infer_deployed(prepared):
            x, wh = prepared
            r = det.postprocess(det.forward(x), wh)
            return r["boxes"], r["scores"], r["labels"]
        return det.preprocess, infer_deployed, det.class_names
    import numpy as np

    from .models.inputs import to_tensor_list
    m = form.model

    def prepare_torch(rgb):
        tensors, sizes = to_tensor_list(rgb, min_wh=m.input_wh)  # reduced like Detector; orig size kept
        return tensors[0], sizes[0]

    def infer_torch(prepared):
        t, (w, h) = prepared
        o = m.predict(t)[0]
        th, tw = t.shape[-2:]
        boxes = o["boxes"].numpy() * np.array([w / tw, h / th, w / tw, h / th], np.float32)
        return boxes, o["scores"].numpy(), o["labels"].numpy()
    return prepare_torch, infer_torch, m.class_names


@app.command()
def info(model: str = typer.Argument(..., help="zoo name, NAME:coco (official weights) or checkpoint"),
         size: Optional[int] = typer.Option(None, help="input size for FLOPs (default: the model's)")):
    """Parameter count and FLOPs."""
    from .api import count_flops, count_params, model_from_name_or_checkpoint

    try:
        m = model_from_name_or_checkpoint(model)
    except _user_errors() as e:
        _fail(str(e))
    s = size or m.input_size
    flops = count_flops(m, s)
    typer.echo(f"model       {model} ({m.arch}, {m.num_classes} classes)")
    typer.echo(f"parameters  {count_params(m):,} learnable")
    typer.echo(f"FLOPs       {flops / 1e9:.3f} G at {s}x{s}  ({flops / 2e9:.3f} GMACs)")


@app.command()
def zoo():
    """List the zoo models with their published COCO box AP and official weights (`NAME:coco`)."""
    from .config import load_config, zoo_names

    for name in zoo_names():
        cfg = load_config(name)
        ap = cfg.reference.get("box_ap")
        tags = f"  [weights: {', '.join(f'{name}:{t}' for t in cfg.weights)}]" if cfg.weights else ""
        typer.echo(f"{name:45s} AP {ap if ap is not None else '-':>5}  {cfg.description}{tags}")


# -- convert: Paddle / torchvision weights -> pocketdet checkpoints --------------------------------------
convert_app = typer.Typer(no_args_is_help=True,
                          help="Convert PaddleDetection or torchvision weights into a pocketdet checkpoint.")
app.add_typer(convert_app, name="convert")


def _convert_errors():
    from .config import ConfigError
    from .convert.common import WeightConversionError
    from .convert.paddle_io import PaddleFormatError
    return (ConfigError, WeightConversionError, PaddleFormatError)


@convert_app.command("paddle")
def convert_paddle_cmd(
    src: Path = typer.Argument(..., help=".pdparams (dygraph or static), persistables folder, or .tar of either"),
    model: str = typer.Option(..., "--model", help="zoo name, e.g. ssdlite_mnv3_large_320"),
    out: Path = typer.Option(..., "-o", "--out", help="pocketdet checkpoint to write (.pt)"),
    names: Optional[Path] = typer.Option(None, "--names",
                                         help="class names, one per line (needed when not COCO's 80)"),
):
    """Paddle weights -> pocketdet checkpoint (refuses, naming them, keys that do not fit)."""
    from .convert.common import save_converted
    from .convert.paddle import convert_paddle

    try:
        class_names = [n.strip() for n in names.read_text().splitlines() if n.strip()] if names else None
        m, report = convert_paddle(src, model, class_names=class_names)
    except _convert_errors() + (OSError,) as e:
        _fail(str(e))
    save_converted(m, out)
    typer.echo(report.summary())
    typer.echo(f"wrote {out}")


@convert_app.command("torchvision")
def convert_torchvision_cmd(
    src: Path = typer.Argument(..., help="torchvision state dict (.pth)"),
    model: str = typer.Option("ssdlite320_mobilenet_v3_large", "--model", help="torchvision model name"),
    out: Path = typer.Option(..., "-o", "--out", help="pocketdet checkpoint to write (.pt)"),
):
    """torchvision SSDLite -> pocketdet checkpoint: the backbone maps, extras and head need fine-tuning."""
    from .convert.common import save_converted
    from .convert.torchvision import convert_torchvision

    try:
        m, report = convert_torchvision(src, model)
    except _convert_errors() as e:
        _fail(str(e))
    save_converted(m, out)
    typer.echo(report.summary())
    typer.echo(f"wrote {out}")


@app.command()
def export(
    model: str = typer.Argument(..., help="checkpoint (.pt), NAME:coco (official weights) or zoo name"),
    format: str = typer.Option("onnx", "--format", help="onnx | ncnn, any case (ncnn needs the 'mobile' extra: "
                                                        "ncnn + pnnx)"),
    out: Path = typer.Option(..., "-o", "--out", help="output file (.onnx) or ncnn name (writes NAME.ncnn.param/.bin/.json)"),
    opset: int = typer.Option(17, help="ONNX opset (>= 17)"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="ONNX: dynamic batch dimension"),
    no_verify: bool = typer.Option(False, "--no-verify", help="skip the torch-vs-runtime check on real photos"),
    images: list[Path] = typer.Option([], "--image", help="photos for verification (default: 4 from data/coco128)"),
):
    """Export for deployment, then verify raw outputs and detections against torch (fails on a mismatch)."""
    _setup_logging()
    from .deploy.export import ExportVerificationError, export_model
    from .deploy.runtime import ModelFileError

    try:
        _warn_if_random_weights(model)
        path, report = export_model(model, out, format=format.lower(), verify=not no_verify, images=images or None,
                                    opset=opset, dynamic_batch=dynamic_batch)
    except _user_errors() + (ExportVerificationError, ModelFileError, ValueError, ImportError, NotImplementedError) as e:
        _fail(str(e))
    if report is not None:
        typer.echo(report.summary())
    typer.echo(f"wrote {path}")


@app.command()
def bench(
    models: list[str] = typer.Argument(None, help="zoo names (random weights made to look trained), NAME:coco for "
                                       "official weights, or checkpoints (default: every zoo model)"),
    runtime: list[str] = typer.Option(["torch", "onnxruntime", "ncnn"], "--runtime",
                                      help="torch | onnxruntime | ncnn | onnxruntime-int8 (PTQ int8, timed next to "
                                           "ONNX Runtime fp32); zoo "
                                           "entries with a quant recipe (*_quant) always run fp32 + int8 in ORT"),
    threads: list[int] = typer.Option([1, 2], "--threads", help="thread counts to measure"),
    runs: int = typer.Option(50, help="timed runs per measurement (after warmup)"),
    warmup: int = typer.Option(5, help="untimed runs first"),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="folder for everything written: exported models, "
                             "rows.json, BENCHMARKS.md (the table), latency_vs_ap.png"),
    md: Optional[Path] = typer.Option(None, help="Markdown file whose deploy-zoo section is replaced "
                                      "(default <out>/BENCHMARKS.md; `make bench` passes the repo's)"),
    png: Optional[Path] = typer.Option(None, help="latency-vs-AP plot (default <out>/latency_vs_ap.png)"),
    merge: bool = typer.Option(False, "--merge", help="keep earlier rows (<out>/rows.json) of other models/threads"),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset YAML: measure AP / AP50 of every runtime "
                                                              "and format on it (the deployed predict path)"),
    split: str = typer.Option("val", help="--data split to evaluate on"),
    max_ap_drop: Optional[float] = typer.Option(None, "--max-ap-drop", help="with --data: exit 1 when a format's "
                                                "AP is more than this many AP points (0-100 scale) below torch fp32"),
):
    """Batch-1 latency (median, p90) of models in torch eager, ONNX Runtime and ncnn, and with --data their
    measured AP per format: prints the table and writes files only under --out (or to --md / --png when given)."""
    _setup_logging()
    from .api import model_from_name_or_checkpoint
    from .compress.quant import bench_int8_export
    from .deploy.bench import bench_command, machine_info
    from .deploy.bench_checks import ap_gate, ap_lines, int8_slower

    from .deploy.bench import rows_markdown

    if max_ap_drop is not None and data is None:
        _fail("--max-ap-drop needs --data (the dataset to measure AP on)")
    command = "pocketdet bench " + " ".join(sys.argv[2:])
    md, png = md or out / "BENCHMARKS.md", png or out / "latency_vs_ap.png"
    try:
        evaluate = _bench_evaluator(data, split) if data is not None else None
        rows = bench_command(models or None, tuple(runtime), tuple(threads), runs, warmup, md=md, png=png,
                             workdir=out, command=command, progress=typer.echo, merge=merge,
                             int8_export=bench_int8_export, load_model=model_from_name_or_checkpoint,
                             evaluate=evaluate)
    except _user_errors() + (ValueError,) as e:
        _fail(str(e))
    typer.echo(rows_markdown(rows))
    for line in ap_lines(rows):
        typer.echo(line)
    for line in int8_slower(rows, machine_info()):
        typer.secho(f"warning: {line}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"table -> {md} (section deploy-zoo), plot -> {png}{'' if png.exists() else ' (not drawn)'}, "
               f"rows and exported models -> {out}/")
    if max_ap_drop is not None:
        failed = ap_gate(rows, max_ap_drop)
        for line in failed:
            typer.secho(f"AP gate: {line}", fg=typer.colors.RED, err=True)
        if failed:
            raise typer.Exit(1)


def _bench_evaluator(data: Path, split: str):
    """form (torch model or runtime Detector) -> COCO stats on `data`'s split, one dataset per class list."""
    from .data import build_dataset, load_dataset_yaml
    from .engine.evaluate import evaluate, evaluate_predictor

    spec = load_dataset_yaml(data)
    datasets = {}

    def run(form):
        names = tuple(form.class_names)
        if names not in datasets:
            datasets[names] = build_dataset(spec, split, list(names))
        ds = datasets[names]
        if hasattr(form, "forward_raw"):  # a torch model: batched, as `pocketdet val`
            return evaluate(form, ds, batch_size=8, num_workers=0, progress=False)
        return evaluate_predictor(form.predict, ds, progress=False)
    return run


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
    from .compress.quant import OrtQuantOptions, QuantError, calibration_images, quantize_checkpoint

    if fmt == "ncnn":
        from .deploy.ncnn_int8 import quantize_ncnn

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
    from .compress.prune import SEED_PRUNE_PARAMS, SEED_PRUNE_RATIOS, PruneError, prune_checkpoint

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
    from .compress.distill import DistillError, distill_checkpoint
    from .engine.device import resolve_device

    try:
        device = resolve_device(device)
        _warn_if_random_weights(teacher, "--teacher")
        _warn_if_random_weights(student, "--student")
        summary = distill_checkpoint(teacher, student, data, iters, out, batch_size, lr, device, workers)
    except _user_errors() + (DistillError,) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))


def main():
    app()


if __name__ == "__main__":
    sys.exit(app())
