"""`pocketdet` command line: train | val | predict | info | zoo (+ export, bench, convert, quantize, prune...).

Multi-GPU / multi-node: `torchrun --nproc_per_node 8 -m pocketdet.cli train ...` (plain torchrun + DDP).

One module per group of verbs, each registering its commands on the shared `app` (`common.py`) when imported;
the import order below is the order of `pocketdet --help`.
"""
from __future__ import annotations

from . import training, inference, convert, deploy, compress  # noqa: F401  (registers the commands, in order)
# the commands and helpers as before the split (tests, benchmarks/predict_overhead.py and scripts import them here)
from .common import app
from .compress import distill_cmd, prune_cmd, quantize
from .convert import convert_app, convert_paddle_cmd, convert_torchvision_cmd
from .deploy import bench, export
from .inference import _predictor, info, predict, val, zoo
from .training import _frozen_norm_init, _pretrained_init, _weights_init, train, train_overrides


def main():
    app()
