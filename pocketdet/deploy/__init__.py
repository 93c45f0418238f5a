"""Deployment: ONNX / ncnn export with verification (`export`), the torch-free runtime (`runtime`,
`Detector`), the ncnn backend (`mobile`) and latency benchmarks (`bench`).

Attributes are imported lazily so that `from pocketdet.deploy import Detector` never imports torch.
"""
_LAZY = {
    "Detector": ".runtime", "BaseDetector": ".runtime", "ModelFileError": ".runtime",
    "NcnnDetector": ".mobile", "export_ncnn": ".mobile",
    "export_onnx": ".export", "export_model": ".export", "verify_export": ".export",
    "ExportVerificationError": ".export",
    "run_bench": ".bench",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'pocketdet.deploy' has no attribute {name!r}")
