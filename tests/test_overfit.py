"""Overfit check: SSDLite learns a handful of real photos to AP50 >= 0.8 — proof that priors, matching, box
coder, loss and post-processing fit together (a bug in any of them caps AP50 far below).

Trained to the target with a step cap, evaluated every 25 steps: how many steps a given CPU needs differs
(AVX2 vs AVX-512 float kernels change the trajectory), whether the model gets there must not."""
import time

import torch

from pocketdet.config import load_config
from pocketdet.data.loader import SeededTransformDataset, collate_detection
from pocketdet.data.transforms import plain_train_transforms
from pocketdet.engine.fit import fit_to_ap50
from pocketdet.models import build_model
from real_photos import few_real_photos


MAX_STEPS = 300  # runs made here reach the target by 75-100 steps; the cap only bounds a broken model's time


def test_ssdlite_overfits_four_photos(data_dir):
    torch.manual_seed(0)
    ds = few_real_photos(data_dir)
    assert len(ds) == 4 and sum(len(r.boxes) for r in ds.records) >= 6
    model = build_model(load_config("ssdlite_mnv3_small_320").model, class_names=ds.class_names).use_channels_last()
    images, targets = collate_detection([SeededTransformDataset(ds, plain_train_transforms(320))[i] for i in range(4)])
    t0 = time.perf_counter()
    fit = fit_to_ap50(model, images, targets, ds, target_ap50=0.8, max_steps=MAX_STEPS, eval_batch=4)
    print(f"overfit: loss {sum(fit.losses.values()):.4f} AP50 {fit.stats['AP50']:.3f} AP {fit.stats['AP']:.3f} "
          f"after {fit.steps} steps in {time.perf_counter() - t0:.0f} s")
    assert fit.reached and fit.stats["AP50"] >= 0.8
