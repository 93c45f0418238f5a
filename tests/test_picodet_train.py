"""PP-PicoDet training: the recipe's augmentation, the ATSS -> task-aligned switch, an overfit check on real
photos and a CLI training smoke run.

The overfit check trains to a target with a step cap, evaluating every 25 steps: how many steps a CPU needs
differs (AVX2 vs AVX-512 kernels change the trajectory), whether the model gets there must not."""
import time

import pytest
import torch
from typer.testing import CliRunner

from pocketdet.cli import app, train_overrides
from pocketdet.config import ConfigError, apply_overrides, load_config
from pocketdet.data.loader import SeededTransformDataset, collate_detection
from pocketdet.data.picodet_aug import build_picodet_transforms, multiscale_sizes
from pocketdet.data.transforms import plain_train_transforms
from pocketdet.data.yolo_aug import RandomShapeCollate
from pocketdet.engine.fit import fit_to_ap50
from pocketdet.engine.family_hooks import hooks_for
from pocketdet.models import build_model
from pocketdet.models import picodet as picodet_module
from real_photos import few_real_photos

MAX_STEPS = 300  # runs made here reach the target by 50-75 steps; the cap only bounds a broken model's time
STATIC_STEPS = 25  # ATSS for the first steps, then the task-aligned assigner, as the recipe's schedule


def test_picodet_overfits_four_photos(data_dir):
    """PicoDet-XS 320 from random init learns 4 real photos to AP50 >= 0.8: anchors, both assigners, the three
    losses and the decode + NMS fit together (a bug in any of them caps AP50 far below)."""
    torch.manual_seed(0)
    ds = few_real_photos(data_dir)
    assert len(ds) == 4 and sum(len(r.boxes) for r in ds.records) >= 6
    cfg = apply_overrides(load_config("picodet_xs_320"), [f"train.extra.static_assigner_iters={STATIC_STEPS}"])
    model = build_model(cfg.model, class_names=ds.class_names).use_channels_last()
    switch = hooks_for(cfg)["iteration_hook"]
    images, targets = collate_detection([SeededTransformDataset(ds, plain_train_transforms(320))[i] for i in range(4)])
    assigners = []

    def hook(m, step):
        switch(m, step)
        assigners.append(m.use_static_assigner)
    t0 = time.perf_counter()
    fit = fit_to_ap50(model, images, targets, ds, target_ap50=0.8, max_steps=MAX_STEPS, iteration_hook=hook,
                      eval_batch=4)
    print(f"picodet overfit: {', '.join(f'{k} {v:.4f}' for k, v in fit.losses.items())} AP50 {fit.stats['AP50']:.3f} "
          f"AP {fit.stats['AP']:.3f} after {fit.steps} steps in {time.perf_counter() - t0:.0f} s")
    assert fit.reached and fit.stats["AP50"] >= 0.8
    assert set(fit.losses) == {"loss_vfl", "loss_bbox", "loss_dfl"}
    assert assigners[0] is True and (False in assigners) == (fit.steps > STATIC_STEPS)


def test_augmentation_on_real_photos(data_dir):
    """Per-sample crop / flip / distort keep valid boxes inside the image; the batch is resized to one of the
    recipe's sizes; the same stream positions give the same batch (resume)."""
    ds = few_real_photos(data_dir, n=8)
    seeded = SeededTransformDataset(ds, build_picodet_transforms(), seed=3)
    collate = RandomShapeCollate(multiscale_sizes(320))
    seen_sizes = set()
    for it in range(6):
        batch = [seeded[(it * 4 + j, j)] for j in range(4)]
        for img, t in batch:
            b = t["boxes"].as_subclass(torch.Tensor)
            h, w = img.shape[-2:]
            assert len(b) == len(t["labels"]) and img.dtype == torch.uint8
            assert (b[:, 2:] - b[:, :2] >= 1).all() and (b[:, :2] >= 0).all()
            assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        images, targets = collate(batch)
        size = images.shape[-1]
        assert images.shape == (4, 3, size, size) and size in (256, 288, 320, 352, 384)
        assert all((t["boxes"] <= size).all() for t in targets)
        seen_sizes.add(size)
        again, _ = collate([seeded[(it * 4 + j, j)] for j in range(4)])
        assert torch.equal(images, again)
    assert len(seen_sizes) > 1


def test_random_distort_hue_in_dygraph_units():
    """Dygraph RandomDistort rotates hue by delta * pi radians, delta in [-18, 18]: draws go far beyond +-18 deg."""
    distort = next(t for t in build_picodet_transforms().transforms if type(t).__name__ == "ColorDistort")
    torch.manual_seed(0)
    hues = [d for _ in range(200) for name, d in distort.make_params([])["ops"] if name == "hue"]
    assert 50 < len(hues) < 150  # probability 0.5
    assert max(abs(h) for h in hues) > 180 and all(abs(h) <= 18 * 180 for h in hues)


def test_hooks_switch_assigner_at_configured_iteration():
    cfg = load_config("picodet_xs_320")
    static = cfg.train.extra["static_assigner_iters"]
    assert static == 100 * 458  # static_assigner_epoch 100 of 300, 458 iterations per epoch at batch 256
    hooks = hooks_for(cfg)
    assert hooks["collate_fn"].sizes == [256, 288, 320, 352, 384]
    model = build_model(cfg.model)
    for it, expected in ((0, True), (static - 1, True), (static, False)):
        hooks["iteration_hook"](model, it)
        assert model.use_static_assigner is expected
    with pytest.raises(ConfigError, match="static_assigner_iters"):
        hooks_for(apply_overrides(cfg, ["train.extra.static_assigner_iters=-1"]))
    with pytest.raises(ConfigError, match="multiscale_sizes"):
        hooks_for(apply_overrides(cfg, ["train.extra.multiscale_sizes=[300, 320]"]))
    # --iters keeps the ATSS phase at its third of the run; an explicit --set wins
    short = apply_overrides(cfg, train_overrides(cfg, [], iters=1374))
    assert short.train.extra["static_assigner_iters"] == 458
    pinned = apply_overrides(cfg, train_overrides(cfg, ["train.extra.static_assigner_iters=5"], iters=1374))
    assert pinned.train.extra["static_assigner_iters"] == 5


def test_cli_train_smoke(tmp_path, tiny_coco, monkeypatch):
    """`pocketdet train picodet_xs_320` with the recipe's augmentation: 2 iterations, the first with ATSS (the
    third of --iters 2, rounded), the second task-aligned; evaluation and checkpoints written."""
    calls, loss_fn = [], picodet_module.picodet_loss

    def spy(cls_scores, reg_dists, targets, cfg, static_assigner):
        calls.append((static_assigner, cls_scores[0].shape[-1] * 8))
        return loss_fn(cls_scores, reg_dists, targets, cfg, static_assigner)

    monkeypatch.setattr(picodet_module, "picodet_loss", spy)
    img_dir, ann_file, _ = tiny_coco
    data = tmp_path / "d.yaml"
    data.write_text(f"train: {{images: {img_dir}, annotations: {ann_file}}}\n"
                    f"val: {{images: {img_dir}, annotations: {ann_file}}}\n")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "picodet_xs_320", "--data", str(data), "--out", str(out), "--iters", "2",
                                 "--batch-size", "2", "--workers", "0", "--device", "cpu",
                                 "--set", "train.eval_interval=2"])
    assert r.exit_code == 0, r.output
    assert (out / "last.pt").exists() and (out / "metrics.jsonl").exists()
    assert [static for static, _ in calls] == [True, False]
    assert all(size in (256, 288, 320, 352, 384) for _, size in calls), calls
    assert any(size != 320 for _, size in calls)  # the seed draws 288 and 384: trained at those, not stretched
    print("picodet CLI smoke: (static assigner, trained size) per iteration", calls)


def test_multiscale_training_batch_kept_at_its_size():
    """BatchRandomResize batches train at their own size (boxes in its pixels); other inputs are stretched to
    input_size. A 128 input has a 2 x 2 stride-64 level, fewer cells than ATSS's 9 candidates: all are taken."""
    model = build_model(load_config("picodet_xs_320").model, num_classes=3).train()
    seen = []
    model.backbone.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    t = [{"boxes": torch.tensor([[10.0, 10.0, 100.0, 120.0]]), "labels": torch.tensor([1])}]
    for static in (True, False):
        model.use_static_assigner = static
        losses = model(torch.rand(1, 3, 288, 288), t)      # a multi-scale batch: trained at 288
        assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_bbox"] > 0
        model([torch.rand(3, 128, 128)], t)                 # a list of equal squares (the trainer's form)
        model([torch.rand(3, 300, 400)], t)                 # anything else: stretched to input_size
    assert seen == [(288, 288), (128, 128), (320, 320)] * 2


def test_float16_autocast_gives_finite_gradients():
    """Under float16 autocast (CUDA AMP; CPU autocast here) confidently negative anchors must not give inf
    gradients: sqrt(sigmoid * sigmoid + 1e-9) underflows to sqrt(0) in float16."""
    model = build_model(load_config("picodet_xs_320").model, num_classes=3).train()
    for conv in model.head.head_cls_list:
        torch.nn.init.constant_(conv.bias, -12.0)  # sigmoid ~6e-6: times the align score below float16's range
    for dp in model.head.cls_align:
        dp.apply(lambda m: torch.nn.init.constant_(m.bias, -8.0) if isinstance(m, torch.nn.BatchNorm2d) else None)
    t = [{"boxes": torch.tensor([[10.0, 10.0, 100.0, 120.0]]), "labels": torch.tensor([1])}]
    with torch.autocast("cpu", dtype=torch.float16):
        losses = model(torch.rand(1, 3, 256, 256), t)
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
