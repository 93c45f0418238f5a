"""Using a model: `pocketdet val | predict | info | zoo`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import _fail, _setup_logging, _user_errors, _warn_if_random_weights, app


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
    from ..data import build_dataset, load_dataset_yaml
    from ..engine.device import resolve_device
    from ..engine.evaluate import evaluate, evaluate_predictor
    from ..model_forms import open_model

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
    from ..predict_run import run_predict
    from ..sources import SourceError, collect_sources

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



def _predictor(model: str, runtime: str, threads: int):
    """-> (prepare(rgb), infer(prepared) -> (boxes, scores, labels), class names). `prepare` is the
    decode-side work (reduce, resize) that `predict_run` overlaps with `infer` on another thread. Every model
    form runs (`model_forms.open_model`: checkpoint, zoo name, ONNX or ncnn export, told by content)."""
    from ..model_forms import open_model

    form = open_model(model, runtime, threads or None)
    if form.detector is not None:  # ONNX Runtime / ncnn: the deployed pre- and post-processing
        det = form.detector

        def infer_deployed(prepared):
            x, wh = prepared
            r = det.postprocess(det.forward(x), wh)
            return r["boxes"], r["scores"], r["labels"]
        return det.preprocess, infer_deployed, det.class_names
    import numpy as np

    from ..models.inputs import to_tensor_list
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
    from ..api import count_flops, count_params, model_from_name_or_checkpoint

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
    from ..config import load_config, zoo_names

    for name in zoo_names():
        cfg = load_config(name)
        ap = cfg.reference.get("box_ap")
        tags = f"  [weights: {', '.join(f'{name}:{t}' for t in cfg.weights)}]" if cfg.weights else ""
        typer.echo(f"{name:45s} AP {ap if ap is not None else '-':>5}  {cfg.description}{tags}")
