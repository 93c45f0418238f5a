"""C++ runner (deploy/cpp) vs the Python ncnn runtime: latency per stage at 1 thread, same photo, same files.

    make cpp-runner && python benchmarks/cpp_runner.py [--rounds 5] [--runs 10]

Per family (SSDLite-S and PicoDet-XS: the fitted fixtures when present; YOLOv3 and pruned YOLOv3: trained-like
weights, whose values do not change the network's cost), one coco128 photo decoded once and given to both as the
same RGB array (a PPM for the C++ CLI). Interleaved: each round runs the C++ CLI (`--runs N`, its own medians)
then N Python `NcnnDetector` calls. Reports medians over the rounds of: pre-processing (resize), network,
post-processing (decode + NMS), detect() end to end; plus JPEG decoding (stb_image vs PIL) separately.
Note: the C++ runner links ncnn built as one AVX2+FMA variant (deploy/cpp/build_ncnn.sh) while the `ncnn` wheel
dispatches at run time (AVX-512/VNNI here): network times differ by kernels, not by language.
Writes BENCHMARKS.md section `cpp-runner`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness import ROOT, command_line, machine_info, machine_line, parser, replace_section

from pocketdet.api import load  # noqa: E402
from pocketdet.config import load_config  # noqa: E402
from pocketdet.deploy import npops  # noqa: E402
from pocketdet.deploy.trained_like import make_trained_like  # noqa: E402
from pocketdet.deploy.mobile import NcnnDetector, export_ncnn  # noqa: E402
from pocketdet.models import build_model  # noqa: E402

RUNNER = ROOT / ".cache" / "cpp-runner" / "pocketdet_detect"
FITTED = {"ssdlite_mnv3_small_320": ROOT / "tests" / "fixtures" / "fitted" / "ssdlite_small_fit.pt",
          "picodet_xs_320": ROOT / "tests" / "fixtures" / "fitted" / "picodet_xs_fit.pt"}
TRAIN = sorted((ROOT / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))
FAMILIES = ["ssdlite_mnv3_small_320", "yolov3_mnv3_large_320", "yolov3_mnv3_large_320_prune_fpgm", "picodet_xs_320"]


def export(name: str, tmp: Path) -> tuple[Path, str]:
    if name in FITTED and FITTED[name].is_file():
        return export_ncnn(load(FITTED[name]).eval(), tmp / f"fitted_{name}", name=name), "fitted fixture"
    torch.manual_seed(0)
    m = make_trained_like(build_model(load_config(name).model), TRAIN[:8])
    return export_ncnn(m, tmp / name, name=name), "trained-like"


def python_round(det: NcnnDetector, rgb: np.ndarray, runs: int) -> dict[str, float]:
    t = {"pre": [], "net": [], "post": [], "detect": []}
    for _ in range(runs):
        t0 = time.perf_counter()
        x, wh = det.preprocess(rgb)
        t1 = time.perf_counter()
        out = det.forward(x)
        t2 = time.perf_counter()
        det.postprocess(out, wh)
        t3 = time.perf_counter()
        t["pre"].append(t1 - t0)
        t["net"].append(t2 - t1)
        t["post"].append(t3 - t2)
        t["detect"].append(t3 - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in t.items()}


def cpp_round(param: Path, image: Path, runs: int) -> dict[str, float]:
    res = subprocess.run([str(RUNNER), str(param), str(image), "--threads", "1", "--runs", str(runs)],
                         capture_output=True, text=True, check=True)
    ms = json.loads(res.stdout)["ms"]
    return {"pre": ms["preprocess_median"], "net": ms["network_median"], "post": ms["postprocess_median"],
            "detect": ms["detect_median"], "decode": ms["decode"]}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    if not RUNNER.is_file():
        sys.exit(f"{RUNNER} not built: run `make cpp-runner`")
    torch.set_num_threads(1)
    machine = machine_info()  # its load average: at the start
    tmp = Path(tempfile.mkdtemp(prefix="cpp-runner-bench-"))
    photo = TRAIN[0]
    rgb = npops.load_rgb(photo)
    ppm = tmp / "photo.ppm"
    Image.fromarray(rgb).save(ppm)
    rows = []
    for name in FAMILIES:
        param, weights = export(name, tmp)
        det = NcnnDetector(param, threads=1)
        cpp, py = [], []
        for _ in range(args.rounds):
            cpp.append(cpp_round(param, ppm, args.runs))
            py.append(python_round(det, rgb, args.runs))
        c = {k: float(np.median([r[k] for r in cpp])) for k in cpp[0]}
        p = {k: float(np.median([r[k] for r in py])) for k in py[0]}
        rows.append(f"| {name} ({weights}) | {c['pre']:.2f} / {p['pre']:.2f} | {c['net']:.1f} / {p['net']:.1f} | "
                    f"{c['post']:.2f} / {p['post']:.2f} | {c['detect']:.1f} / {p['detect']:.1f} | "
                    f"{(p['pre'] + p['post']) / max(c['pre'] + c['post'], 1e-9):.1f}x |")
        print(rows[-1], flush=True)
    # JPEG decoding, not part of detect(): stb_image (C++ CLI) vs PIL (npops.load_rgb)
    dec_cpp = float(np.median([cpp_round(param, photo, 1)["decode"] for _ in range(args.rounds)]))
    dec_py = []
    for _ in range(args.rounds * args.runs):
        t0 = time.perf_counter()
        npops.load_rgb(photo)
        dec_py.append(time.perf_counter() - t0)
    body = "\n".join([
        "## C++ runner vs Python runtime (issue 20)", "",
        f"`{command_line(__file__)}`, {machine_line(machine)} Load average at the end "
        f"{[round(v, 2) for v in os.getloadavg()]}. Photo {photo.name} ({rgb.shape[1]}x{rgb.shape[0]}), ncnn 1 "
        "thread. The machine was shared with other sessions: medians of interleaved rounds; read the ratios.",
        "The C++ side links ncnn built from the PyPI sdist as one AVX2+FMA variant; the Python side is the `ncnn` "
        "wheel (runtime dispatch, AVX-512 here), so the network column compares builds, not languages. "
        "What Python costs around the network is the pre + post columns.", "",
        "| model | resize ms C++ / Py | network ms C++ / Py | decode+NMS ms C++ / Py | detect() ms C++ / Py | "
        "Py/C++ pre+post |", "|---|---|---|---|---|---|", *rows, "",
        f"JPEG decoding of {photo.name} (outside detect()): stb_image {dec_cpp:.2f} ms, PIL {np.median(dec_py) * 1e3:.2f} ms."])
    replace_section(args.md, "cpp-runner", body)
    print(f"-> {args.md} (section cpp-runner)")


if __name__ == "__main__":
    main()
