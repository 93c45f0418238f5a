"""Latency benchmarks (batch 1): torch eager vs ONNX Runtime vs ncnn, for every zoo model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .bench_checks import INT8, ap_lines, measure_ap
from .timing import machine_info, machine_markdown, stats_ms, time_interleaved
from .trained_like import _load_chw, calibration_images, make_trained_like


def dense_flops(model) -> int:
    """FLOPs (2 x MACs) of `forward_raw` on one input-size image (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    s = model.input_size
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.forward_raw(torch.zeros(1, 3, s, s))
    return int(fc.get_total_flops())


@dataclass
class BenchRow:
    model: str
    runtime: str
    threads: int
    forward: dict            # dense graph only, on a resized [1,3,S,S] input
    end_to_end: dict | None  # predict() on a decoded HxWx3 photo: resize + forward + decode + NMS
    gflops: float            # dense-graph FLOPs / 1e9
    box_ap: float | None     # published (Paddle) COCO box AP of the zoo entry; not measured here
    note: str = ""
    ap: float | None = None    # measured COCO box AP x100 on `bench --data` (same for every thread count)
    ap50: float | None = None


RUNTIMES = ("torch", "onnxruntime", "ncnn")
# INT8 (PTQ int8 QDQ in ONNX Runtime) needs an `int8_export` (the CLI passes compress.quant's)


def _runtime_available(rt: str) -> str | None:
    if rt == "ncnn":
        try:
            import ncnn  # noqa: F401
            import pnnx  # noqa: F401
        except ImportError:
            return "ncnn/pnnx not installed (pip install 'pocketdet[mobile]')"
    return None


def run_bench(models=None, runtimes=RUNTIMES, threads=(1, 2), runs: int = 50, warmup: int = 5,
              image=None, workdir="runs/bench", trained_like: bool = True, progress=print,
              on_model_done=None, int8_export=None, load_model=None, evaluate=None) -> list[BenchRow]:
    """Latency of every (model, runtime, threads), batch 1. `models`: zoo names (default: all of
    pocketdet/zoo), or `NAME:coco` for official weights, loaded by `load_model(spec)` (deploy does not import
    the API; `pocketdet bench` passes `api.model_from_name_or_checkpoint`). Runtimes of one (model, threads)
    run interleaved. With `trained_like`, random weights are made to look trained (`make_trained_like`) so post-processing sees a realistic number of candidates.
    A runtime that fails to export or load a model becomes a row with the error as its note.
    `on_model_done(rows_so_far)` is called after each model (bench_command writes partial reports).

    int8: runtime `onnxruntime-int8` times a PTQ int8 model made by `int8_export(model, path, name, not_quant)`
    (deploy does not import compress; `pocketdet bench` passes `compress.quant.bench_int8_export`). A zoo entry
    with a quantization recipe (`train.extra.quant`, e.g. ssdlite_mnv3_small_320_quant) is timed as int8 with
    its recipe's not-quant patterns next to its float graph in ONNX Runtime, in the same interleaved run; its
    torch/ncnn rows would only repeat the float entry's and are skipped.

    A model may also be a pocketdet checkpoint (trained weights, timed as they are). `evaluate(form)` -> COCO
    stats (0..1), given a torch model or a runtime `Detector`, adds measured AP / AP50 to every row (`pocketdet
    bench --data` passes one over a dataset split; deploy does not import engine)."""
    from pocketdet.config import zoo_names

    from .export import export_onnx
    from .graphs import GRAPH_WRAPPERS, graph_spec
    from .runtime import Detector

    if runs < 1:
        raise ValueError("runs must be >= 1")
    models = list(models or zoo_names())
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    image = image or (Path(__file__).resolve().parents[2] / "data" / "coco128" / "images" / "val2017" /
                      "000000000139.jpg")
    from . import npops

    rgb = npops.load_rgb(image)
    rows: list[BenchRow] = []
    calib = calibration_images() if trained_like else []
    for spec_name in models:
        name, cfg, model, trained, published = bench_model(spec_name, load_model)
        recipe = cfg.train.extra.get("quant") if isinstance(cfg.train.extra, dict) else None
        model_runtimes = ("onnxruntime", INT8) if recipe else tuple(runtimes)
        if INT8 in model_runtimes and "onnxruntime" not in model_runtimes:
            # an int8 row means something only next to the fp32 graph timed in the same interleaved run
            model_runtimes = ("onnxruntime",) + model_runtimes
        if trained_like and not trained:
            make_trained_like(model, calib)
        flops = dense_flops(model) / 1e9
        ap = cfg.reference.get("box_ap") if published else None  # the zoo entry's number: not a checkpoint's
        backends, notes = {}, {}
        exportable = model.arch in GRAPH_WRAPPERS
        for rt in model_runtimes:
            why = _runtime_available(rt)
            if rt == INT8 and int8_export is None:
                why = "no int8 exporter given (pocketdet bench passes one)"
            if rt != "torch" and not exportable:
                why = f"no export graph for arch {model.arch}"
            if why:
                notes[rt] = why
                continue
            try:
                if rt == "onnxruntime":
                    backends[rt] = Detector(export_onnx(model, workdir / f"{name}.onnx", name=name))
                elif rt == INT8:
                    not_quant = list((recipe or {}).get("not_quant", []))
                    backends[rt] = Detector(int8_export(model, workdir / f"{name}.int8.onnx", name, not_quant))
                elif rt == "ncnn":
                    from .mobile import NcnnDetector, export_ncnn
                    backends[rt] = NcnnDetector(export_ncnn(model, workdir / name, name=name))
            except Exception as e:  # one runtime's failure must not lose the other measurements
                notes[rt] = f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                progress(f"bench {name} {rt}: {notes[rt]}")
        aps = measure_ap(evaluate, model, backends, model_runtimes, progress, name, min(threads)) if evaluate else {}
        spec = graph_spec(model) if exportable else None
        if spec is not None and spec.prepare_input is not None:  # Cascade R-CNN: aspect kept, mean padding
            x = np.ascontiguousarray(spec.graph_input(model, [_load_chw(image)]).numpy())
        else:
            x = npops.resize_chw(rgb, model.input_size)
        xt = torch.from_numpy(x)
        for th in threads:
            torch.set_num_threads(th)
            fns, e2e = {}, {}
            with torch.no_grad():
                dense = spec.module if spec is not None else (lambda t: model.forward_raw(model.normalize(t)))
                fns["torch"] = lambda: dense(xt)
                e2e["torch"] = lambda: model.predict(rgb)
                for rt, loaded in backends.items():
                    det = type(loaded)(loaded.source, threads=th)
                    fns[rt] = (lambda d: lambda: d.forward(x))(det)
                    e2e[rt] = (lambda d: lambda: d.predict(rgb))(det)
                progress(f"bench {name} threads={th}: {', '.join(k for k in fns if k in model_runtimes)}")
                # forward and predict of every runtime in one round-robin: their ratio sees the same load
                both = {**{("fwd", k): v for k, v in fns.items() if k in model_runtimes},
                        **{("e2e", k): v for k, v in e2e.items() if k in model_runtimes}}
                t_both = time_interleaved(both, runs, warmup)
                t_fwd = {k: v for (kind, k), v in t_both.items() if kind == "fwd"}
                t_e2e = {k: v for (kind, k), v in t_both.items() if kind == "e2e"}
            for rt in model_runtimes:
                if rt in t_fwd:
                    rows.append(BenchRow(name, rt, th, stats_ms(t_fwd[rt]), stats_ms(t_e2e[rt]), flops, ap,
                                         **aps.get(rt, {})))
                else:
                    rows.append(BenchRow(name, rt, th, {}, None, flops, ap, notes.get(rt, ""), **aps.get(rt, {})))
        if on_model_done is not None:
            on_model_done(rows)
    return rows


def bench_model(spec: str, load_model=None):
    """(row name, zoo config, eval-mode model, has real weights, published AP applies) for a zoo name (random
    weights), `NAME:coco` (official weights) or a checkpoint file; the last two load through `load_model`
    (`pocketdet bench` passes `api.model_from_name_or_checkpoint`; deploy does not import the API)."""
    from pocketdet.config import load_config
    from pocketdet.models import build_model

    is_file = Path(spec).is_file() or Path(spec).suffix in (".pt", ".pth")
    zoo_name, _, weights_tag = str(spec).partition(":")
    if is_file or weights_tag:
        if load_model is None:
            raise ValueError(f"{spec}: real weights need a load_model (pocketdet bench passes one)")
        model = load_model(spec).eval()
        cfg = getattr(model, "zoo_config", None) or load_config(zoo_name)
        return (Path(spec).stem if is_file else spec.replace(":", "-")), cfg, model, True, not is_file
    cfg = load_config(spec)
    return spec, cfg, build_model(cfg.model).eval(), False, True


# -- reports --------------------------------------------------------------------------------------------------
def rows_markdown(rows: list[BenchRow]) -> str:
    measured = any(r.ap is not None for r in rows)
    lines = ["| model | runtime | threads | forward median / p90 (ms) | predict median / p90 (ms) | predict / forward "
             "| GFLOPs | published AP |" + (" measured AP / AP50 |" if measured else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if measured else "")]
    with_int8 = {r.model for r in rows if r.runtime == INT8}
    for r in rows:
        if r.runtime == "onnxruntime" and r.model in with_int8:
            r = dataclasses.replace(r, runtime="onnxruntime (fp32)")
        ap_cell = ""
        if measured:
            ap_cell = f" {r.ap:.1f} / {r.ap50:.1f} |" if r.ap is not None else " — |"
        if not r.forward:
            lines.append(f"| {r.model} | {r.runtime} | {r.threads} | — ({r.note}) | — | — | {r.gflops:.2f} | "
                         f"{r.box_ap if r.box_ap is not None else '—'} |" + ap_cell)
            continue
        f, e = r.forward, r.end_to_end
        lines.append(f"| {r.model} | {r.runtime} | {r.threads} | {f['median_ms']:.1f} / {f['p90_ms']:.1f} | "
                     f"{e['median_ms']:.1f} / {e['p90_ms']:.1f} | {e['median_ms'] / f['median_ms']:.2f} | "
                     f"{r.gflops:.2f} | {r.box_ap if r.box_ap is not None else '—'} |" + ap_cell)
    return "\n".join(lines)


def plot_latency_vs_ap(rows: list[BenchRow], path, threads: int = 1) -> Path | None:
    """Predict latency (x) vs AP (y), one marker per runtime, at `threads`: the measured AP when the rows have
    it (`bench --data`), else the published Paddle AP."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    measured = any(r.ap is not None for r in rows)
    if measured:
        rows = [dataclasses.replace(r, box_ap=r.ap) for r in rows]
    pts = [r for r in rows if r.threads == threads and r.end_to_end and r.box_ap is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for rt, marker in zip(RUNTIMES + (INT8,), "os^D"):
        sel = [r for r in pts if r.runtime == rt]
        if sel:
            ax.scatter([r.end_to_end["median_ms"] for r in sel], [r.box_ap for r in sel], marker=marker, label=rt)
    for r in pts:
        if r.runtime == "onnxruntime" or not any(p.model == r.model and p.runtime == "onnxruntime" for p in pts):
            ax.annotate(r.model, (r.end_to_end["median_ms"], r.box_ap), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"predict latency, ms (batch 1, {threads} thread{'s' if threads > 1 else ''}, log scale)")
    ax.set_ylabel("measured COCO box AP (bench --data)" if measured else "published COCO box AP (Paddle)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _replace_block(text: str, marker: str, body: str, parent: str | None = None) -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        return head + block + rest.split(end, 1)[1]
    if parent is not None:  # a new sub-section goes at the end of its parent section
        p_end = f"<!-- {parent}:end -->"
        if p_end not in text:
            text = _replace_block(text, parent, "## Deployment: export, runtimes, latency")
        head, tail = text.split(p_end, 1)
        return head.rstrip() + "\n\n" + block + "\n" + p_end + tail
    return text.rstrip() + "\n\n" + block + "\n"


def replace_section(path, marker: str, body: str, parent: str | None = None, title: str = "# Benchmarks") -> None:
    """Replace the text between `<!-- {marker}:start -->` and `<!-- {marker}:end -->` in `path`, leaving the
    other sections of a shared file alone. An absent section is appended, inside section `parent` if given
    (BENCHMARKS.md: `deploy-zoo` and `deploy-peers` live inside `deploy`)."""
    path = Path(path)
    text = path.read_text() if path.exists() else title + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_replace_block(text, marker, body, parent))


ZOO_TITLE = "Zoo latency: torch eager vs ONNX Runtime vs ncnn (`pocketdet bench`)"


def bench_report(rows: list[BenchRow], info: dict, command: str, png: Path | None, title: str = ZOO_TITLE) -> str:
    import datetime

    lines = [f"### {title}", "",
             f"Commands: `{command}`; {datetime.date.today().isoformat()}. {machine_markdown(info)}",
             "Batch 1. *forward*: the exported dense graph (eager: the same wrapper module) on a resized input. "
             "*predict*: a decoded 640x427 photo to final boxes (resize, normalise, network, decode, NMS). "
             "Zoo names run random weights made trained-like (`make_trained_like`: BN statistics from real photos, "
             "sharpened class logits) so that post-processing sees a realistic number of candidates; checkpoints "
             "run their own weights. "
             "Cascade R-CNN: *forward* is its dense part (backbone, FPN, RPN head) on the long-side-resized, "
             "padded input; *predict* adds the numpy proposals, the RoI part (3 stages on 100 RoIs) and NMS. "
             "*published AP*: the Paddle number of the zoo entry (— for checkpoints); *measured AP*, with "
             "`--data` only: see below.", "",
             rows_markdown(rows)]
    if any(r.ap is not None for r in rows):
        lines += ["", "Measured AP: COCO box AP (x100) of each runtime and format on the `--data` split, through the "
                  "deployed `predict` path (each runtime's own resize, decode and NMS). Difference from torch fp32:",
                  "", *[f"- {ln}" for ln in ap_lines(rows)]]
    by_key = {(r.model, r.runtime, r.threads): r for r in rows if r.forward}
    ratios = [f"{m} at {th} thread(s): forward {q.forward['median_ms'] / f.forward['median_ms']:.2f}x, predict "
              f"{q.end_to_end['median_ms'] / f.end_to_end['median_ms']:.2f}x"
              for (m, rt, th), q in by_key.items() if rt == INT8
              for f in [by_key.get((m, "onnxruntime", th))] if f is not None]
    if ratios:
        lines += ["", "int8 / fp32 in ONNX Runtime, same interleaved run (PTQ int8 QDQ; *_quant entries use their "
                  "recipe's not-quant patterns, others quantize every conv): " + "; ".join(ratios) + "."]
    if png is not None:
        lines += ["", f"![latency vs AP]({png.as_posix()})"]
    return "\n".join(lines)


def bench_command(models=None, runtimes=RUNTIMES, threads=(1, 2), runs: int = 50, warmup: int = 5,
                  md=None, png=None, workdir="runs/bench", command: str = "",
                  progress=print, merge: bool = False, int8_export=None, load_model=None,
                  evaluate=None, section: str = "deploy-zoo", title: str = ZOO_TITLE) -> list[BenchRow]:
    """What `pocketdet bench` does: `run_bench`, then the Markdown table into `md` between
    `<!-- deploy-zoo:start -->` / `<!-- deploy-zoo:end -->` and the latency-vs-AP plot into `png`; both
    default to files inside `workdir` (`BENCHMARKS.md`, `latency_vs_ap.png`), so nothing outside it is
    written unless asked for (`make bench` passes the repo's BENCHMARKS.md and docs/ plot).
    Rows are also saved to `workdir/rows.json`; with `merge`, earlier rows of other (model, runtime,
    threads) combinations are kept, so a long benchmark can be run in parts. `section` / `title`: another
    Markdown section (inside `deploy`) for a run that must not replace the zoo table, e.g. one measured later
    on another machine. Returns every row reported (merged ones included)."""
    import dataclasses
    import json

    info = machine_info()
    md = Path(workdir) / "BENCHMARKS.md" if md is None else md
    png = Path(workdir) / "latency_vs_ap.png" if png is None else png
    store = Path(workdir) / "rows.json"
    old = []
    if merge and store.exists():
        old = [BenchRow(**r) for r in json.loads(store.read_text())]
    commands = [command or "pocketdet bench"]
    if merge and (Path(workdir) / "commands.json").exists():
        commands = json.loads((Path(workdir) / "commands.json").read_text()) + commands

    reported: list[BenchRow] = []

    def report(new_rows):
        keys = {(r.model, r.runtime, r.threads) for r in new_rows}
        rows = [r for r in old if (r.model, r.runtime, r.threads) not in keys] + list(new_rows)
        rank = {rt: i for i, rt in enumerate(RUNTIMES + (INT8,))}
        rows.sort(key=lambda r: (r.model, r.threads, rank.get(r.runtime, len(rank))))
        reported[:] = rows
        Path(workdir).mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
        (Path(workdir) / "commands.json").write_text(json.dumps(commands))
        png_path = plot_latency_vs_ap(rows, png, threads=min(threads)) if png else None
        if png_path is not None and md:
            try:  # a repo-relative link when both live in the repo
                png_path = png_path.resolve().relative_to(Path(md).resolve().parent)
            except ValueError:
                pass
        if md:
            replace_section(md, section, bench_report(rows, info, "`; `".join(commands), png_path, title),
                            parent="deploy")

    run_bench(models, runtimes, threads, runs, warmup, workdir=workdir, progress=progress,
              on_model_done=report, int8_export=int8_export, load_model=load_model, evaluate=evaluate)
    return reported
