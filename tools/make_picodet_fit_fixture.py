"""Writes tests/fixtures/fitted/picodet_xs_fit.pt: a PP-PicoDet-XS 320 fitted to the 8 coco128 photos of the
SSDLite fixture (tools/make_fitted_fixture.py: same photos, `instances.json`, `fit.yaml`).

The PicoDet deployment tests (int8 keeps the confident detections of a model that detects something) load it
instead of training: how far N steps get differs between CPUs, a committed model does not. Needs PicoDet's
training losses (`models/picodet_loss.py`, branch picodet-train).

    python tools/make_picodet_fit_fixture.py    # ~2-5 min on 2 cores; trains until training-photo AP50 >= 0.95

Training as the overfit test of tests/test_picodet_train.py: random init, AdamW 3e-3, the 8 photos resized to
320 without augmentation, ATSS for the first 25 steps then the task-aligned assigner, evaluated every 25 steps.
Conv weights stored as float16 (BN statistics float32), loaded back as float32; `picodet_fit.json` records the
steps and the AP of the stored file.
"""
from __future__ import annotations

import json
import time

import torch

from make_fitted_fixture import COCO, OUT

MODEL = "picodet_xs_320"
STATIC_STEPS = 25


def fit(ds, target_ap50: float = 0.95, max_steps: int = 600, eval_every: int = 25):
    from pocketdet.config import apply_overrides, load_config
    from pocketdet.data.loader import SeededTransformDataset, collate_detection
    from pocketdet.data.transforms import plain_train_transforms
    from pocketdet.engine.family_hooks import hooks_for
    from pocketdet.engine.fit import fit_to_ap50
    from pocketdet.models import build_model

    torch.manual_seed(0)
    # augment none: what this fit does (and a value every branch's config schema reads)
    cfg = apply_overrides(load_config(MODEL), [f"train.extra.static_assigner_iters={STATIC_STEPS}",
                                               "train.augment=none"])
    model = build_model(cfg.model, class_names=ds.class_names).use_channels_last()
    switch = hooks_for(cfg)["iteration_hook"]
    images, targets = collate_detection([SeededTransformDataset(ds, plain_train_transforms(320))[i]
                                         for i in range(len(ds))])
    result = fit_to_ap50(model, images, targets, ds, target_ap50, max_steps, eval_every, iteration_hook=switch,
                         log=lambda line: print(line, flush=True))
    return model.eval(), cfg, result.steps


def main() -> None:
    from pocketdet import api
    from pocketdet.checkpoint import save_atomic
    from pocketdet.data import CocoDetection
    from pocketdet.engine.evaluate import evaluate
    from pocketdet.engine.trainer import checkpoint_state

    torch.set_num_threads(2)
    ds = CocoDetection(COCO / "images" / "train2017", OUT / "instances.json")
    t0 = time.perf_counter()
    model, cfg, steps = fit(ds)
    state = checkpoint_state(model.to(memory_format=torch.contiguous_format), cfg, ds.class_names, iteration=steps)
    state["model"] = {k: (v.half() if v.is_floating_point() and v.numel() > 1024 else v).contiguous()
                      for k, v in state["model"].items()}
    ckpt = OUT / "picodet_xs_fit.pt"
    save_atomic(state, ckpt)
    stats = evaluate(api.load(ckpt), ds, batch_size=8, progress=False)  # what the stored file gives
    info = {"model": MODEL, "photos": json.loads((OUT / "fit.json").read_text())["photos"], "steps": steps,
            "fit_seconds": round(time.perf_counter() - t0, 1), "AP50": round(stats["AP50"], 4),
            "AP": round(stats["AP"], 4), "dataset_yaml": "fit.yaml", "made_by": "tools/make_picodet_fit_fixture.py"}
    (OUT / "picodet_fit.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
