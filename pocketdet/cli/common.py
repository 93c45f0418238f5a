"""What every `pocketdet` command shares: the typer `app`, one-line user errors, logging setup."""
from __future__ import annotations

import logging
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Small, fast object detectors for phones and CPUs (PaddleDetection's mobile zoo in PyTorch).")


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__
        typer.echo(f"pocketdet {__version__}")
        raise typer.Exit()


@app.callback()
def _common(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                         help="print the version and exit")):
    pass


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _user_errors():
    from ..config import ConfigError
    from ..data.errors import DataError
    from ..deploy.runtime import ModelFileError
    from ..checkpoint import CheckpointError
    from ..engine.device import DeviceError
    from ..engine.trainer import TrainingError
    return (ConfigError, DataError, CheckpointError, ModelFileError, FileNotFoundError, DeviceError, TrainingError)


def _warn_if_random_weights(spec: str, role: str = "model") -> None:
    """A bare zoo name builds the architecture with random weights: fine for latency and export checks, but its
    detections are noise. Say so before anything runs on it."""
    from ..config import zoo_names

    if not Path(spec).exists() and spec in zoo_names():
        logging.getLogger("pocketdet").warning(
            "%s %s is a zoo name without weights: the model has RANDOM weights and its detections mean nothing "
            "(pass a checkpoint .pt, e.g. from `pocketdet train` or `pocketdet convert`)", role, spec)
