"""Weight converters: Paddle (PaddleDetection / PaddleClas) and torchvision checkpoints -> pocketdet models.

`convert_paddle(path, zoo_name) -> (model, report)`, `convert_torchvision(file_or_state_dict, tv_name)`,
`load_backbone_weights(model, path_or_url)` and `save_converted(model, out.pt)`. Imported lazily so that
`import pocketdet.convert` stays cheap.
"""
from __future__ import annotations

__all__ = ["convert_paddle", "convert_torchvision", "load_backbone_weights", "save_converted",
           "ConversionReport", "WeightConversionError", "PaddleFormatError"]


def __getattr__(name):
    if name in ("convert_paddle", "load_backbone_weights"):
        from . import paddle
        return getattr(paddle, name)
    if name == "convert_torchvision":
        from .torchvision import convert_torchvision
        return convert_torchvision
    if name in ("save_converted", "ConversionReport", "WeightConversionError"):
        from . import common
        return getattr(common, name)
    if name == "PaddleFormatError":
        from .paddle_io import PaddleFormatError
        return PaddleFormatError
    raise AttributeError(f"module 'pocketdet.convert' has no attribute {name!r}")
