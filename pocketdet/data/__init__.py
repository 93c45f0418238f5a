"""Datasets (COCO JSON, YOLO txt), the dataset YAML, augmentation pipelines and loaders."""
from .coco import CocoDetection
from .dataset_yaml import DatasetSpec, build_dataset, load_dataset_yaml
from .errors import DataError
from .yolo import YoloDetection

__all__ = ["CocoDetection", "DataError", "DatasetSpec", "YoloDetection", "build_dataset", "load_dataset_yaml"]
