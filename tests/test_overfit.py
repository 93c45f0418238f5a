"""Overfit check: SSDLite learns a handful of real photos to AP50 >= 0.8 — proof that priors, matching, box
coder, loss and post-processing fit together (a bug in any of them caps AP50 far below).

Trained to the target with a step cap, evaluated every 25 steps: how many steps a given CPU needs differs
(AVX2 vs AVX-512 float kernels change the trajectory), whether the model gets there must not."""
import time

import torch

from pocketdet.config import load_config
from pocketdet.data import CocoDetection
from pocketdet.data.loader import SeededTransformDataset, collate_detection
from pocketdet.data.transforms import plain_train_transforms
from pocketdet.engine.evaluate import evaluate
from pocketdet.models import build_model


MAX_STEPS = 300  # runs made here reach the target by 75-100 steps; the cap only bounds a broken model's time


def few_real_photos(data_dir, n=4) -> CocoDetection:
    ds = CocoDetection(data_dir / "coco128/images/train2017", data_dir / "coco128/annotations/instances_train2017.json")
    area = lambda r: ((r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])).min()  # noqa: E731
    ds.records = [r for r in ds.records if 1 <= len(r.boxes) <= 4 and area(r) > 32 * 32][:n]
    return ds


def test_ssdlite_overfits_four_photos(data_dir):
    torch.manual_seed(0)
    ds = few_real_photos(data_dir)
    assert len(ds) == 4 and sum(len(r.boxes) for r in ds.records) >= 6
    model = build_model(load_config("ssdlite_mnv3_small_320").model, class_names=ds.class_names).use_channels_last()
    images, targets = collate_detection([SeededTransformDataset(ds, plain_train_transforms(320))[i] for i in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, MAX_STEPS + 1):
        model.train()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            stats = evaluate(model, ds, batch_size=4, progress=False)  # eval mode: BN running statistics
            if stats["AP50"] >= 0.8:
                break
    print(f"overfit: loss {loss.item():.4f} AP50 {stats['AP50']:.3f} AP {stats['AP']:.3f} "
          f"after {step} steps in {time.perf_counter() - t0:.0f} s")
    assert stats["AP50"] >= 0.8
