"""Is int8 faster than fp32 on *this* CPU? Measured, not assumed (issue 15 item 5).

ORT's int8 convolutions beat fp32 only where the CPU has fast 8-bit dot products (AVX-512 VNNI / AVX-VNNI /
AMX on x86, dot-product instructions on ARM); depthwise convolutions and the Quantize/Dequantize pairs
around float ops can still make a depthwise-heavy model (SSDLite) slower than fp32. `pocketdet quantize` and
`pocketdet bench` time both graphs interleaved on the running machine and say so, with the ratio and the CPU
flags, when int8 loses.
"""
from __future__ import annotations

import numpy as np

from pocketdet.deploy.timing import machine_info, time_interleaved

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_tile")


def time_fp32_vs_int8(fp32_path, int8_path, runs: int = 10, warmup: int = 2, threads: int = 1) -> dict:
    """Median forward ms of both ONNX files in ORT at `threads`, interleaved (same load for both), on one
    coco128 photo pre-processed by the runtime; {"fp32_ms", "int8_ms", "ratio", "threads", "runs"}."""
    from pocketdet.deploy import npops
    from pocketdet.deploy.trained_like import calibration_images
    from pocketdet.deploy.runtime import Detector

    fp32, int8 = Detector(fp32_path, threads=threads), Detector(int8_path, threads=threads)
    x, _ = fp32.preprocess(npops.load_rgb(calibration_images(1)[0]))
    t = time_interleaved({"fp32": lambda: fp32.forward(x), "int8": lambda: int8.forward(x)}, runs, warmup)
    f, q = float(np.median(t["fp32"]) * 1e3), float(np.median(t["int8"]) * 1e3)
    return {"fp32_ms": round(f, 2), "int8_ms": round(q, 2), "ratio": round(q / f, 3), "threads": threads,
            "runs": runs}


def slower_warning(speed: dict, info: dict | None = None) -> str | None:
    """The user-facing sentence when int8 measured slower than fp32, else None."""
    if speed["ratio"] <= 1.0:
        return None
    info = info or machine_info()
    flags = info.get("flags", [])
    why = ("" if set(VNNI_FLAGS) & set(flags) else
           "; this CPU has no VNNI/AMX, so ORT's int8 convolutions cannot beat fp32 here: deploy fp32")
    return (f"int8 is SLOWER than fp32 on this CPU: forward {speed['ratio']:.2f}x ({speed['int8_ms']:.1f} vs "
            f"{speed['fp32_ms']:.1f} ms, {speed['threads']} thread(s), median of {speed['runs']} interleaved runs); "
            f"CPU {info.get('cpu')}, flags {' '.join(flags) or 'none known'}{why}")
