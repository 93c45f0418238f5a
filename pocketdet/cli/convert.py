"""`pocketdet convert paddle | torchvision`: Paddle / torchvision weights -> pocketdet checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import _fail, app


convert_app = typer.Typer(no_args_is_help=True,
                          help="Convert PaddleDetection or torchvision weights into a pocketdet checkpoint.")
app.add_typer(convert_app, name="convert")


def _convert_errors():
    from ..config import ConfigError
    from ..convert.common import WeightConversionError
    from ..convert.paddle_io import PaddleFormatError
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
    from ..convert.common import save_converted
    from ..convert.paddle import convert_paddle

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
    from ..convert.common import save_converted
    from ..convert.torchvision import convert_torchvision

    try:
        m, report = convert_torchvision(src, model)
    except _convert_errors() as e:
        _fail(str(e))
    save_converted(m, out)
    typer.echo(report.summary())
    typer.echo(f"wrote {out}")
