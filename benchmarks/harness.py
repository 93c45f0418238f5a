"""What every benchmark script shares, so that each script is only its experiment: the repository on
`sys.path`, interleaved timing of named callables (A, B, A, B, ... medians: load changes on a shared machine hit
every candidate alike), the machine line printed next to figures, the command that produced a section, and the
writing of a Markdown section into BENCHMARKS.md (or docs/*.md).

The helpers themselves live in `pocketdet.deploy.bench` (`pocketdet bench`, the demo and compress use them too);
this module is their one entry point for the scripts. A script run as `python benchmarks/X.py` finds this module
next to it; a script loaded by file path (tests use importlib) puts its folder on `sys.path` first."""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"

from pocketdet.deploy.bench import replace_section  # noqa: E402,F401
from pocketdet.deploy.timing import (machine_info, machine_markdown, stats_ms,  # noqa: E402,F401
                                     time_interleaved)


def today() -> str:
    return datetime.date.today().isoformat()


def medians_ms(fns: dict, runs: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each named callable, timed round-robin (`time_interleaved`)."""
    return {k: stats_ms(v)["median_ms"] for k, v in time_interleaved(fns, runs, warmup).items()}


def machine_line(info: dict | None = None) -> str:
    """`YYYY-MM-DD. Machine: CPU, cores, SIMD flags (AVX2/AVX-512/VNNI/AMX), load average; versions.`"""
    return f"{today()}. {machine_markdown(info or machine_info())}"


def command_line(script: str, argv: list[str] | None = None, prefix: str = "python") -> str:
    """The command that produced a section: `python benchmarks/<script> <args>` (`script`: the caller's
    `__file__`; `argv`: its arguments, default sys.argv[1:])."""
    args = " ".join(sys.argv[1:] if argv is None else argv)
    return f"{prefix} benchmarks/{Path(script).name} {args}".strip()


def parser(doc: str, md: bool = True, full_doc: bool = False) -> argparse.ArgumentParser:
    """The script's argument parser: its docstring as description (first line unless `full_doc`), and
    `--md` (where the Markdown section goes, default BENCHMARKS.md) unless `md` is False."""
    if full_doc:
        ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    else:
        ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    if md:
        ap.add_argument("--md", type=Path, default=BENCHMARKS_MD, help="Markdown file to write the section into")
    return ap
