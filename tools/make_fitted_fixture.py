"""Writes tests/fixtures/fitted/: an SSDLite-MobileNetV3-Small fitted to 8 real coco128 photos.

Tests that need "a model that detects something on real photos" (quantization keeps detections, exported forms
give the torch AP, pre-processing changes AP by <= 0.1) load this checkpoint instead of training: how far N
optimizer steps get differs between CPUs (AVX2 vs AVX-512 kernels), a committed model does not.

    python tools/make_fitted_fixture.py          # ~2-4 min on 2 cores; trains until training-photo AP50 >= 0.95

Writes `ssdlite_small_fit.pt` (a normal pocketdet checkpoint; conv weights stored as float16 to halve the file,
loaded back into float32), `instances.json` (the 8 photos' COCO annotations), `fit.yaml` (a dataset YAML over
them) and `fit.json` (photos, steps, AP of the stored file). Photos: COCO 2017 from data/coco128 (see its SOURCE.md).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "fitted"
COCO = ROOT / "data" / "coco128"
MODEL = "ssdlite_mnv3_small_320"


def pick_photos(n: int = 8) -> list[dict]:
    """Photos with 1-6 boxes, none tiny, so a small model can fit them all; first n in file order."""
    ann = json.loads((COCO / "annotations" / "instances_train2017.json").read_text())
    by_image: dict[int, list] = {}
    for a in ann["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    chosen = []
    for im in ann["images"]:
        objs = [a for a in by_image.get(im["id"], []) if not a.get("iscrowd")]
        if 1 <= len(objs) <= 6 and min(a["bbox"][2] * a["bbox"][3] for a in objs) > 24 * 24:
            chosen.append(im)
        if len(chosen) == n:
            break
    ids = {im["id"] for im in chosen}
    return {"images": chosen, "annotations": [a for a in ann["annotations"] if a["image_id"] in ids],
            "categories": ann["categories"]}


def write_dataset(subset: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "instances.json").write_text(json.dumps(subset))
    yaml_path = OUT / "fit.yaml"
    yaml_path.write_text("# the 8 coco128 photos the fitted fixture was trained on (tools/make_fitted_fixture.py)\n"
                         "path: .\ntrain:\n  images: ../../../data/coco128/images/train2017\n"
                         "  annotations: instances.json\nval:\n  images: ../../../data/coco128/images/train2017\n"
                         "  annotations: instances.json\n")
    return yaml_path


def fit(ds, target_ap50: float = 0.95, max_steps: int = 800, eval_every: int = 50):
    from pocketdet.config import load_config
    from pocketdet.data.loader import SeededTransformDataset, collate_detection
    from pocketdet.data.transforms import plain_train_transforms
    from pocketdet.engine.fit import fit_to_ap50
    from pocketdet.models import build_model

    torch.manual_seed(0)
    cfg = load_config(MODEL)
    model = build_model(cfg.model, class_names=ds.class_names).use_channels_last()
    images, targets = collate_detection([SeededTransformDataset(ds, plain_train_transforms(320))[i]
                                         for i in range(len(ds))])
    result = fit_to_ap50(model, images, targets, ds, target_ap50, max_steps, eval_every,
                         log=lambda line: print(line, flush=True))
    return model.eval(), cfg, result.steps, result.stats


def main() -> None:
    from pocketdet import api
    from pocketdet.data import CocoDetection
    from pocketdet.checkpoint import save_atomic
    from pocketdet.engine.evaluate import evaluate
    from pocketdet.engine.trainer import checkpoint_state

    subset = pick_photos()
    yaml_path = write_dataset(subset)
    ds = CocoDetection(COCO / "images" / "train2017", OUT / "instances.json")
    t0 = time.perf_counter()
    model, cfg, steps, _ = fit(ds)
    state = checkpoint_state(model, cfg, ds.class_names, iteration=steps)
    # float16 for the large conv weights only: BN statistics keep float32 (small variances underflow in fp16)
    state["model"] = {k: (v.half() if v.is_floating_point() and v.numel() > 1024 else v.contiguous())
                      for k, v in state["model"].items()}
    ckpt = OUT / "ssdlite_small_fit.pt"
    save_atomic(state, ckpt)
    stats = evaluate(api.load(ckpt), ds, batch_size=8, progress=False)  # what the stored file gives
    info = {"model": MODEL, "photos": [im["file_name"] for im in subset["images"]], "steps": steps,
            "fit_seconds": round(time.perf_counter() - t0, 1), "AP50": round(stats["AP50"], 4),
            "AP": round(stats["AP"], 4), "dataset_yaml": yaml_path.name,
            "made_by": "tools/make_fitted_fixture.py"}
    (OUT / "fit.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
