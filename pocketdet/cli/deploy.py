"""Deployment: `pocketdet export | bench` (ONNX / ncnn files, latency and AP per runtime)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from .common import _fail, _setup_logging, _user_errors, _warn_if_random_weights, app


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
    from ..deploy.export import ExportVerificationError, export_model
    from ..deploy.runtime import ModelFileError

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
    section: str = typer.Option("deploy-zoo", "--section", help="Markdown section of --md to replace (another name "
                                "adds a sub-table, e.g. a later run on another machine, leaving the zoo table as is)"),
    title: Optional[str] = typer.Option(None, "--title", help="heading of that section"),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset YAML: measure AP / AP50 of every runtime "
                                                              "and format on it (the deployed predict path)"),
    split: str = typer.Option("val", help="--data split to evaluate on"),
    max_ap_drop: Optional[float] = typer.Option(None, "--max-ap-drop", help="with --data: exit 1 when a format's "
                                                "AP is more than this many AP points (0-100 scale) below torch fp32"),
):
    """Batch-1 latency (median, p90) of models in torch eager, ONNX Runtime and ncnn, and with --data their
    measured AP per format: prints the table and writes files only under --out (or to --md / --png when given)."""
    _setup_logging()
    from ..api import model_from_name_or_checkpoint
    from ..compress.quant import bench_int8_export
    from ..deploy.bench import bench_command, rows_markdown
    from ..deploy.bench_checks import ap_gate, ap_lines, int8_slower
    from ..deploy.timing import machine_info

    if max_ap_drop is not None and data is None:
        _fail("--max-ap-drop needs --data (the dataset to measure AP on)")
    command = "pocketdet bench " + shlex.join(sys.argv[2:])  # quoted: a --title with spaces stays one word
    md, png = md or out / "BENCHMARKS.md", png or out / "latency_vs_ap.png"
    try:
        evaluate = _bench_evaluator(data, split) if data is not None else None
        rows = bench_command(models or None, tuple(runtime), tuple(threads), runs, warmup, md=md, png=png,
                             workdir=out, command=command, progress=typer.echo, merge=merge,
                             int8_export=bench_int8_export, load_model=model_from_name_or_checkpoint,
                             evaluate=evaluate, section=section, **({"title": title} if title else {}))
    except _user_errors() + (ValueError,) as e:
        _fail(str(e))
    typer.echo(rows_markdown(rows))
    for line in ap_lines(rows):
        typer.echo(line)
    for line in int8_slower(rows, machine_info()):
        typer.secho(f"warning: {line}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"table -> {md} (section {section}), plot -> {png}{'' if png.exists() else ' (not drawn)'}, "
               f"rows and exported models -> {out}/")
    if max_ap_drop is not None:
        failed = ap_gate(rows, max_ap_drop)
        for line in failed:
            typer.secho(f"AP gate: {line}", fg=typer.colors.RED, err=True)
        if failed:
            raise typer.Exit(1)


def _bench_evaluator(data: Path, split: str):
    """form (torch model or runtime Detector) -> COCO stats on `data`'s split, one dataset per class list."""
    from ..data import build_dataset, load_dataset_yaml
    from ..engine.evaluate import evaluate, evaluate_predictor

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
