"""Accuracy next to latency in `pocketdet bench`: measured AP per runtime (`--data`), each format's AP against
torch fp32, the AP gate (`--max-ap-drop`), and int8 that runs slower than fp32 on this CPU."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bench import BenchRow

FP32_REFERENCE = "torch"
INT8 = "onnxruntime-int8"  # PTQ int8 (QDQ) in ONNX Runtime


def measure_ap(evaluate, model, backends: dict, model_runtimes, progress, name: str, threads: int) -> dict:
    """{runtime: {"ap", "ap50"} (x100)} from `evaluate` on the torch model and each loaded backend, run at
    `threads` (a runtime's default may oversubscribe a shared machine: ncnn spins on every core)."""
    out = {}
    for rt in model_runtimes:
        form = model if rt == "torch" else backends.get(rt)
        if form is None:
            continue
        if rt != "torch":
            form = type(form)(form.source, threads=threads)
        progress(f"bench {name} {rt}: measuring AP")
        st = evaluate(form)
        out[rt] = {"ap": round(100 * st["AP"], 3), "ap50": round(100 * st["AP50"], 3)}
    return out


def ap_differences(rows: list[BenchRow]) -> list[dict]:
    """One entry per (model, runtime) with a measured AP: {model, runtime, ap, ap50, diff} where diff is the
    AP minus the same model's torch fp32 AP (None without a torch row)."""
    seen, out = set(), []
    ref = {r.model: r.ap for r in rows if r.runtime == FP32_REFERENCE and r.ap is not None}
    for r in rows:
        if r.ap is None or (r.model, r.runtime) in seen:
            continue
        seen.add((r.model, r.runtime))
        base = ref.get(r.model)
        out.append({"model": r.model, "runtime": r.runtime, "ap": r.ap, "ap50": r.ap50,
                    "diff": None if base is None else round(r.ap - base, 3)})
    return out


def ap_lines(rows: list[BenchRow]) -> list[str]:
    lines = []
    for d in ap_differences(rows):
        if d["runtime"] == FP32_REFERENCE:
            vs = "(reference)"
        elif d["diff"] is None:
            vs = "(no torch fp32 row to compare with)"
        else:
            vs = f"{d['diff']:+.2f} AP vs torch fp32"
        lines.append(f"{d['model']} {d['runtime']}: AP {d['ap']:.2f}, AP50 {d['ap50']:.2f}  {vs}")
    return lines


def ap_gate(rows: list[BenchRow], max_drop: float) -> list[str]:
    """Formats whose AP falls more than `max_drop` AP points (x100 scale) below torch fp32, as sentences."""
    return [f"{d['model']} {d['runtime']}: AP {d['ap']:.2f} is {-d['diff']:.2f} below torch fp32 "
            f"(allowed {max_drop:g})" for d in ap_differences(rows) if d["diff"] is not None and -d["diff"] > max_drop]


def int8_slower(rows: list[BenchRow], info: dict) -> list[str]:
    """A warning per (model, threads) where the int8 model's forward is slower than fp32 in ONNX Runtime,
    with the measured ratio and the CPU's SIMD flags (int8 convolutions need VNNI to beat fp32)."""
    by_key = {(r.model, r.runtime, r.threads): r for r in rows if r.forward}
    out = []
    for (m, rt, th), q in sorted(by_key.items()):
        f = by_key.get((m, "onnxruntime", th))
        if rt != INT8 or f is None:
            continue
        ratio = q.forward["median_ms"] / f.forward["median_ms"]
        if ratio > 1.0:
            out.append(f"{m}: int8 is SLOWER than fp32 on this CPU at {th} thread(s): forward {ratio:.2f}x "
                       f"({q.forward['median_ms']:.1f} vs {f.forward['median_ms']:.1f} ms); CPU {info.get('cpu')}, "
                       f"flags {' '.join(info.get('flags', [])) or 'none known'}"
                       + ("" if {"avx512_vnni", "avx_vnni"} & set(info.get("flags", [])) else
                          " (no VNNI: ORT's int8 kernels cannot beat fp32 here; deploy fp32)"))
    return out
