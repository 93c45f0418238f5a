"""Model families. Each is an ordinary nn.Module; `build_model(cfg_dict)` instantiates one."""
from __future__ import annotations

from .base import DetectionModel
from .cascade_rcnn import CascadeRCNN
from .picodet import PicoDet
from .ssdlite import SSDLite
from .yolov3 import YOLOv3

MODEL_CLASSES: dict[str, type[DetectionModel]] = {"ssdlite": SSDLite, "yolov3": YOLOv3,
                                                   "cascade_rcnn": CascadeRCNN, "picodet": PicoDet}


def build_model(model_cfg: dict, num_classes: int | None = None, class_names: list[str] | None = None):
    kwargs = {k: v for k, v in model_cfg.items() if k != "arch"}
    if class_names is not None:
        kwargs["class_names"] = list(class_names)
        kwargs["num_classes"] = len(class_names)
    elif num_classes is not None:
        kwargs["num_classes"] = num_classes
    return MODEL_CLASSES[model_cfg["arch"]](**kwargs)


__all__ = ["CascadeRCNN", "DetectionModel", "MODEL_CLASSES", "PicoDet", "SSDLite", "YOLOv3", "build_model"]
