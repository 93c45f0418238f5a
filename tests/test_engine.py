"""Optimizer groups, LR schedule, checkpoints (atomic, weights-only), exact resume, COCO eval parity."""
import copy
import math
import pickle
from pathlib import Path

import pytest
import torch

import pocketdet
from pocketdet.config import apply_overrides, load_config
from pocketdet.data import CocoDetection
from pocketdet.checkpoint import CheckpointError, load_checkpoint, save_atomic
from pocketdet.engine.evaluate import coco_eval
from pocketdet.engine.family_hooks import hooks_for
from pocketdet.engine.optim import lr_factor, param_groups
from pocketdet.engine.trainer import TrainOptions, train


def test_param_groups_follow_paddle_per_parameter_rules():
    cfg = load_config("ssdlite_mnv3_large_320")
    m = pocketdet.build("ssdlite_mnv3_large_320")
    groups = param_groups(m, cfg.train.optimizer, base_lr=1.0)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(m.named_parameters())
    assert by_param[id(named["backbone.conv1.conv.weight"])]["lr"] == 0.25          # stage 0
    assert by_param[id(named["backbone.conv8.expand_conv.conv.weight"])]["lr"] == 0.5  # block 6 -> index 2
    assert by_param[id(named["backbone.conv16.linear_conv.conv.weight"])]["lr"] == 0.75
    assert by_param[id(named["backbone.conv17.conv.weight"])]["lr"] == 0.75        # extra layers inherit 0.75
    assert by_param[id(named["ssd_head.boxes0.pw_conv.weight"])]["lr"] == 1.0
    # effective decay: 4e-5 on conv weights and SE params, 0 on BN
    assert by_param[id(named["backbone.conv5.mid_se.conv1.bias"])]["weight_decay"] == 4e-5
    assert by_param[id(named["backbone.conv5.expand_conv.bn.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["ssd_head.scores3.dw_conv.weight"])]["weight_decay"] == 4e-5
    small = pocketdet.build("ssdlite_mnv3_small_320")
    g = param_groups(small, cfg.train.optimizer, 1.0)
    lr = {id(p): x["lr"] for x in g for p in x["params"]}
    assert lr[id(dict(small.named_parameters())["backbone.conv13.conv.weight"])] == 0.5  # Small: 11 blocks -> 0.5
    assert sum(p.numel() for x in g for p in x["params"]) == sum(p.numel() for p in small.parameters())


def test_lr_schedule_warmup_then_cosine():
    s = load_config("ssdlite_mnv3_large_320").train.schedule
    assert lr_factor(0, s) == pytest.approx(0.33333 * 0.5 * (1 + math.cos(math.pi * 2000 / 400000)), rel=1e-4)
    assert lr_factor(2000, s) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2000 / 400000)))
    assert lr_factor(200000, s) == pytest.approx(0.5)
    assert lr_factor(400000, s) == pytest.approx(0.0, abs=1e-12)
    assert all(lr_factor(i, s) <= lr_factor(i + 1, s) for i in range(0, 2000, 100))
    p = s.model_copy(update={"type": "piecewise", "milestones": [10, 20], "warmup_iters": 0})
    assert [lr_factor(i, p) for i in (9, 10, 20)] == pytest.approx([1.0, 0.1, 0.01])


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}}, path)

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_checkpoint_runs_nothing(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(bad)
    assert not _Evil.marker.exists()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        pocketdet.load(tmp_path / "garbage.pt")


@pytest.fixture
def four_images(tiny_coco):
    img_dir, ann_file, _ = tiny_coco
    return CocoDetection(img_dir, ann_file)


def _cfg(iters, **extra):
    over = [f"train.schedule.max_iters={iters}", "train.schedule.warmup_iters=2", "train.batch_size=2",
            "train.num_workers=0", "train.checkpoint_interval=3", "train.optimizer.lr=0.4"]
    return apply_overrides(load_config("ssdlite_mnv3_small_320"), over + [f"{k}={v}" for k, v in extra.items()])


def test_resume_is_exact(tmp_path, four_images):
    # the family hooks `pocketdet train` uses: for `ssd`, JPEGs decoded inside the transform (PhotoFiles)
    hooks = hooks_for(_cfg(6))
    assert "dataset_wrapper" in hooks
    straight = train(_cfg(6), four_images, TrainOptions(out_dir=tmp_path / "a", progress=False, **hooks))
    # the same 6-iteration run, interrupted after 3 iterations (checkpoint_interval 3) and resumed
    first = tmp_path / "b"
    train(_cfg(6, **{"train.schedule.max_iters": 6}), four_images,
          TrainOptions(out_dir=first, progress=False, stop_after=3, **hooks))
    ck3 = load_checkpoint(first / "last.pt")
    assert ck3["iteration"] == 3
    train(_cfg(6), four_images, TrainOptions(out_dir=first, progress=False, resume=first / "last.pt", **hooks))
    a, b = load_checkpoint(straight["last"]), load_checkpoint(first / "last.pt")
    assert b["iteration"] == a["iteration"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert not torch.equal(a["model"]["ssd_head.boxes0.pw_conv.weight"], ck3["model"]["ssd_head.boxes0.pw_conv.weight"])


def test_faster_coco_eval_equals_pycocotools(data_dir):
    import contextlib
    import io
    import json

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = json.loads((data_dir / "coco_mini/annotations/instances_val2017.json").read_text())
    g = torch.Generator().manual_seed(0)
    dets = []
    for a in gt["annotations"]:  # jittered GT boxes + random false positives, random scores
        x, y, w, h = a["bbox"]
        j = (torch.rand(4, generator=g) - 0.5) * 0.3
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": float(torch.rand(1, generator=g)),
                     "bbox": [x + j[0].item() * w, y + j[1].item() * h, w * (1 + j[2].item()), h * (1 + j[3].item())]})
        if torch.rand(1, generator=g) < 0.3:
            dets.append({"image_id": a["image_id"], "category_id": 1, "score": float(torch.rand(1, generator=g)),
                         "bbox": [10.0, 10.0, 50.0, 80.0]})
    ours = coco_eval(gt, dets)
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = copy.deepcopy(gt)
        c.createIndex()
        ev = COCOeval(c, c.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0.2 < ours["AP"] < 0.95
    for i, k in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"]):
        assert ours[k] == pytest.approx(ev.stats[i], abs=1e-6), k


def test_checkpoint_holds_best_ap_of_its_own_iteration_across_resumes(tmp_path, four_images):
    """Issue 21.1: last.pt is written after the evaluation of its iteration, so a resumed run (finished or
    extended) knows the best AP and best.pt so far and never replaces best.pt with a model that is not better."""
    import json

    out = tmp_path / "run"
    over = {"train.eval_interval": 2, "train.checkpoint_interval": 2}
    first = train(_cfg(2, **over), four_images, TrainOptions(out_dir=out, progress=False, eval_dataset=four_images))
    ck = load_checkpoint(out / "last.pt")
    ap2 = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["AP"]
    assert ck["iteration"] == 2 and ck["best_ap"] == ap2 == first["best_ap"]
    assert ck["best"] == str(out / "best.pt")
    # resuming the finished run reports what it holds instead of "best": null, "best_ap": -1
    again = train(_cfg(2, **over), four_images, TrainOptions(out_dir=out, progress=False, eval_dataset=four_images,
                                                               resume=out / "last.pt"))
    assert again["best"] == out / "best.pt" and again["best_ap"] == ap2
    # more iterations: best.pt moves only to an evaluation that beats every earlier one
    more = train(_cfg(4, **over), four_images, TrainOptions(out_dir=out, progress=False, eval_dataset=four_images,
                                                              resume=out / "last.pt"))
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best_ap = max(e["AP"] for e in evals)
    first_best = next(e["iteration"] for e in evals if e["AP"] == best_ap)
    best = load_checkpoint(out / "best.pt")
    assert more["best_ap"] == best_ap == best["best_ap"] == load_checkpoint(out / "last.pt")["best_ap"]
    assert best["iteration"] == first_best, (evals, best["iteration"])


def test_loader_workers_capped_at_the_machine(monkeypatch):
    """Training's recipe workers and `val --workers` alike are capped at the CPUs the process may use."""
    from pocketdet.engine import device, evaluate

    monkeypatch.setattr(device, "available_cpus", lambda: 2)
    assert device.loader_workers(8) == 2 and device.loader_workers(0) == 0 and device.loader_workers(1) == 1
    seen = []

    def fake_loader(dataset, batch_size, num_workers):
        seen.append(num_workers)
        raise RuntimeError("stop here")
    monkeypatch.setattr(evaluate, "eval_loader", fake_loader)
    with pytest.raises(RuntimeError, match="stop here"):
        evaluate.evaluate(torch.nn.Identity(), dataset=None, num_workers=16, progress=False)
    assert seen == [2]


def test_checkpoint_file_mode_follows_the_umask(tmp_path):
    """save_atomic writes through mkstemp (owner-only 0600); the renamed checkpoint gets a normal file's mode,
    as torch.save would give it, so a run directory shared with a group stays readable."""
    import os

    from pocketdet.checkpoint import save_atomic

    old = os.umask(0o022)
    try:
        save_atomic({"model": {}}, tmp_path / "a.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644


def test_ema_follows_buffers_shaped_at_the_first_forward():
    """QAT observers' per-channel scales start as [1] and get their shape at the first forward: the EMA (PicoDet's
    recipe has one) copies such a buffer instead of failing to broadcast, and keeps averaging the rest."""
    from pocketdet.engine.ema import ModelEMA

    class Lazy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))
            self.register_buffer("scale", torch.ones(1))

        def forward(self, x):
            if self.scale.numel() == 1:
                self.scale.resize_(8).fill_(2.0)
            return x * self.w.sum()

    m = Lazy()
    ema = ModelEMA(m, decay=0.5)
    m(torch.ones(1))
    with torch.no_grad():
        m.w.fill_(1.0)
    ema.update(m)
    assert torch.equal(ema.module.scale, torch.full((8,), 2.0))
    d = 0.5 * (1 - pow(2.718281828, -1 / 2000))
    assert torch.allclose(ema.module.w, torch.full((3,), 1 - d))
