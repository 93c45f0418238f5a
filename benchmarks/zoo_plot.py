"""docs/latency_vs_ap.png from the zoo latency tables in BENCHMARKS.md when they come from different runs.

`pocketdet bench` draws the plot from the rows of one run. The PP-PicoDet rows were measured later, on another
machine, into their own section (`deploy-zoo-picodet`, `pocketdet bench --section`) together with two seed
models re-measured there; their milliseconds are not comparable with the main table's. This script draws both
runs on one plot: the main table's points filled, the later run's hollow, so the seed models appear twice and
the offset between the two machines shows. A full `make bench` on one machine makes it unnecessary again.

    python benchmarks/zoo_plot.py   # reads BENCHMARKS.md, writes docs/latency_vs_ap.png (1 thread, predict)
"""
from __future__ import annotations

import re

from harness import BENCHMARKS_MD, ROOT

SECTIONS = ("deploy-zoo", "deploy-zoo-picodet")
MARKERS = {"torch": "o", "onnxruntime": "s", "ncnn": "^", "onnxruntime-int8": "D"}


def section_rows(text: str, marker: str) -> tuple[str, list[dict]]:
    """(the section's first 'Commands:' line's date and CPU, its table rows at 1 thread with a predict time)."""
    body = text.split(f"<!-- {marker}:start -->", 1)[1].split(f"<!-- {marker}:end -->", 1)[0]
    date = re.search(r"(\d{4}-\d{2}-\d{2})\. Machine: ([^,]+)", body)
    rows = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 8 or cells[2] != "1" or "/" not in cells[4]:
            continue
        try:
            rows.append({"model": cells[0], "runtime": cells[1].replace(" (fp32)", ""),
                         "predict_ms": float(cells[4].split("/")[0]),
                         "ap": float(cells[7])})
        except ValueError:  # header, or "—" for a missing figure
            continue
    return (f"{date.group(1)}, {date.group(2)}" if date else marker), rows


def main() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = BENCHMARKS_MD.read_text()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colors = {}
    for k, marker in enumerate(SECTIONS):
        label, rows = section_rows(text, marker)
        for rt in dict.fromkeys(r["runtime"] for r in rows):
            sel = [r for r in rows if r["runtime"] == rt]
            c = colors.setdefault(rt, f"C{len(colors)}")
            ax.scatter([r["predict_ms"] for r in sel], [r["ap"] for r in sel], marker=MARKERS.get(rt, "x"),
                       facecolors=c if k == 0 else "none", edgecolors=c, label=f"{rt} ({label})")
        for r in rows:
            if r["runtime"] == "onnxruntime":
                ax.annotate(r["model"] + ("" if k == 0 else " *"), (r["predict_ms"], r["ap"]), fontsize=6,
                            xytext=(4, 3 if k == 0 else -8), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("predict latency, ms (batch 1, 1 thread, log scale)")
    ax.set_ylabel("published COCO box AP (Paddle)")
    ax.set_title("filled: main zoo table; hollow / *: later PicoDet run (other machine, seeds re-measured)",
                 fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    out = ROOT / "docs" / "latency_vs_ap.png"
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
