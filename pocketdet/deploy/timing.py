"""Timing on shared machines: the machine line every benchmark prints (CPU, SIMD flags, load, versions), a GEMM
peak, round-robin timing of several functions, and median / p90 statistics."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def machine_info() -> dict:
    """CPU model, logical cores, the SIMD flags that matter for inference, load average."""
    import os
    import platform

    info = {"cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "model name":
                info["cpu"] = val.strip()
            elif key == "flags" and not info["flags"]:
                have = set(val.split())
                info["flags"] = [f for f in ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni",
                                             "avx_vnni", "amx_tile") if f in have]
    except OSError:
        pass
    try:
        info["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    import onnxruntime
    info["versions"] = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                        "numpy": np.__version__}
    try:
        import ncnn
        info["versions"]["ncnn"] = getattr(ncnn, "__version__", "?")
    except ImportError:
        pass
    return info


def gemm_peak_gflops(threads: int = 1, n: int = 1024, seconds: float = 1.5) -> float:
    """Measured fp32 GEMM throughput (torch.mm, n x n), best of repeated runs: the machine's practical peak."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
        return 2 * n ** 3 / best / 1e9
    finally:
        torch.set_num_threads(prev)


def time_interleaved(fns: dict, runs: int, warmup: int) -> dict[str, list[float]]:
    """Run every function `runs` times, round-robin, so that load changes on a shared machine hit all of
    them alike; returns seconds per call."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return times


def stats_ms(ts: list[float]) -> dict:
    a = np.asarray(ts) * 1e3
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "min_ms": float(a.min())}


def machine_markdown(info: dict) -> str:
    v = ", ".join(f"{k} {val}" for k, val in info.get("versions", {}).items())
    return (f"Machine: {info['cpu']}, {info['logical_cores']} logical cores, flags {' '.join(info['flags'])}; "
            f"load average at start {info.get('load_avg')}; {v}.")
