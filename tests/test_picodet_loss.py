"""PP-PicoDet assigners and loss against paddledet 2.6.0's own ATSSAssigner, TaskAlignedAssigner and
PicoHeadV2.get_loss, on the seeded float64 inputs of tests/fixtures/picodet_loss.npz
(tools/picodet_loss_reference.py; re-run live when .venv-paddle exists). Assignments must match exactly,
losses to 1e-5."""
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketdet.models import assigners
from pocketdet.models.assigners import atss_assign, grid_cell_anchors, task_aligned_assign
from pocketdet.models.picodet_loss import PicoLossCfg, expected_distance, flat_loss, picodet_loss

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "picodet_loss.npz"
PADDLE_PY = ROOT / ".venv-paddle" / "bin" / "python"


def _load(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def ref() -> dict:
    d = _load(FIXTURE)
    d["scores"] = torch.from_numpy((d["score_k"].astype(np.float64) + 0.5) / 256)
    d["reg"] = torch.from_numpy(d["reg_k"].astype(np.float64) / 8)
    d["sizes"] = [tuple(s) for s in d["feat_sizes"].tolist()]
    d["targets"] = [{"boxes": torch.from_numpy(b[m]), "labels": torch.from_numpy(lab[m])}
                    for b, lab, m in zip(d["gt_boxes"], d["gt_labels"], d["gt_mask"])]
    return d


@pytest.fixture(scope="module")
def geometry(ref):
    anchors, points, counts, stride = grid_cell_anchors(ref["sizes"], ref["strides"].tolist(), 5.0, 0.5,
                                                        torch.float64)
    dist = expected_distance(ref["reg"], int(ref["reg_max"])) * stride
    pred_px = torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1)
    return anchors, points, counts, stride, pred_px


def _gt(ref):
    return (torch.from_numpy(ref["gt_labels"]), torch.from_numpy(ref["gt_boxes"]), torch.from_numpy(ref["gt_mask"]))


def test_anchors_and_decoded_boxes_match_paddle(ref, geometry):
    anchors, _, _, stride, pred_px = geometry
    assert torch.equal(anchors, torch.from_numpy(ref["anchors"]))
    torch.testing.assert_close(pred_px / stride, torch.from_numpy(ref["pred_boxes"]), rtol=0, atol=1e-12)


def _check(got, ref, name):
    labels = torch.from_numpy(ref[f"{name}_labels"])
    assert torch.equal(got.labels, labels)
    assert torch.equal(got.positive, torch.from_numpy(ref[f"{name}_positive"]) > 0)
    pos = labels < 4
    assert pos.sum() > 20 and (~pos).sum() > 0
    assert torch.equal(got.boxes, torch.from_numpy(ref[f"{name}_boxes"]))  # GT 0's box where negative, as Paddle
    torch.testing.assert_close(got.scores, torch.from_numpy(ref[f"{name}_scores"]), rtol=1e-12, atol=1e-12)


def test_atss_assignment_matches_paddle(ref, geometry, monkeypatch):
    anchors, _, counts, _, pred_px = geometry
    overlaps = _record_overlaps(monkeypatch)
    got = atss_assign(anchors, counts, *_gt(ref), num_classes=4, pred_boxes=pred_px, topk=9)
    _check(got, ref, "atss")
    assert any(overlaps)  # the "positive for several GTs" rule was exercised


def test_task_aligned_assignment_matches_paddle(ref, geometry, monkeypatch):
    _, points, _, _, pred_px = geometry
    overlaps = _record_overlaps(monkeypatch)
    got = task_aligned_assign(ref["scores"], pred_px, points, *_gt(ref), num_classes=4, topk=13, alpha=1.0,
                              beta=6.0)
    _check(got, ref, "tal")
    assert any(overlaps)


def _record_overlaps(monkeypatch) -> list[bool]:
    seen, finish = [], assigners._finish

    def spy(positive, *args):
        seen.append(bool((positive.sum(-2) > 1).any()))
        return finish(positive, *args)

    monkeypatch.setattr(assigners, "_finish", spy)
    return seen


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,static", [("atss", True), ("tal", False)])
def test_loss_matches_paddle_get_loss(ref, name, static, dtype):
    """Levels fed as the head gives them ([N,C,H,W] maps), so the flattening order is checked too; float32 is
    what training runs. Paddle divides by the sum of soft targets unclipped on one GPU; here it is clipped at 1
    (as Paddle on several): the fixture's sums are > 1, so both agree."""
    assert ref[f"{name}_scores"].sum() > 1
    cls_maps, reg_maps, start = [], [], 0
    for h, w in ref["sizes"]:
        cls_maps.append(ref["scores"][:, start:start + h * w].transpose(1, 2).unflatten(-1, (h, w)).to(dtype))
        reg_maps.append(ref["reg"][:, start:start + h * w].transpose(1, 2).unflatten(-1, (h, w)).to(dtype))
        start += h * w
    got = picodet_loss(cls_maps, reg_maps, ref["targets"], PicoLossCfg(num_classes=4), static_assigner=static)
    assert set(got) == {"loss_vfl", "loss_bbox", "loss_dfl"}
    rel = {k: abs(v.item() - float(ref[f"{name}_{k}"])) / abs(float(ref[f"{name}_{k}"])) for k, v in got.items()}
    print(f"[picodet loss parity] {name} {dtype}: " + ", ".join(f"{k} {got[k].item():.6f} rel {r:.1e}"
                                                                for k, r in rel.items()))
    for key, value in got.items():
        assert value.dtype == dtype
        assert rel[key] <= 1e-5, key


def test_no_boxes_anywhere_gives_classification_loss_only(ref):
    """A batch without any GT (Paddle's ATSS would fail to unpack): every anchor is background, the box
    losses are 0 but still connected to the box branch (DDP needs a gradient for every parameter)."""
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 4
    scores = ref["scores"].float().requires_grad_()
    reg = ref["reg"].float().requires_grad_()
    for static in (True, False):
        got = flat_loss(scores, reg, ref["sizes"], empty, PicoLossCfg(num_classes=4), static)
        assert got["loss_vfl"].item() > 0 and got["loss_bbox"].item() == 0 and got["loss_dfl"].item() == 0
        sum(got.values()).backward()
        assert reg.grad is not None and torch.isfinite(scores.grad).all()


def test_loss_is_float32_under_autocast(ref):
    """Under bfloat16 autocast the loss still runs in float32 (torch refuses BCE on probabilities there)."""
    scores, reg = ref["scores"].float()[:1], ref["reg"].float()[:1]
    cls_maps, reg_maps, start = [], [], 0
    for h, w in ref["sizes"]:
        cls_maps.append(scores[:, start:start + h * w].transpose(1, 2).unflatten(-1, (h, w)).bfloat16())
        reg_maps.append(reg[:, start:start + h * w].transpose(1, 2).unflatten(-1, (h, w)).bfloat16())
        start += h * w
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = picodet_loss(cls_maps, reg_maps, ref["targets"][:1], PicoLossCfg(num_classes=4), static_assigner=False)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in got.values())


@pytest.mark.skipif(not PADDLE_PY.exists(), reason="no .venv-paddle (run `make paddle-env` for the live reference)")
def test_fixture_is_what_live_paddledet_gives(tmp_path):
    import subprocess

    out = tmp_path / "picodet_loss.npz"
    subprocess.run([str(PADDLE_PY), str(ROOT / "tools" / "picodet_loss_reference.py"), "--out", str(out)],
                   check=True, capture_output=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    live, fix = _load(out), _load(FIXTURE)
    assert set(live) == set(fix)
    for k in fix:
        if k != "paddle_version":
            np.testing.assert_allclose(live[k], fix[k], rtol=1e-12, atol=1e-12, err_msg=k)
