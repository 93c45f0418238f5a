"""pocketdet: small, fast object detectors for phones and CPUs.

`pocketdet.build(name)`, `pocketdet.load(checkpoint)` and the torch-free runtime `pocketdet.Detector` are
imported lazily, so `from pocketdet import Detector` does not import torch.
"""
__version__ = "0.1.0"

__all__ = ["build", "load", "Detector", "__version__"]


def __getattr__(name):
    if name in ("build", "load"):
        from . import api
        return getattr(api, name)
    if name == "Detector":
        from .deploy.runtime import Detector
        return Detector
    raise AttributeError(f"module 'pocketdet' has no attribute {name!r}")
