"""FPGM pruning of the YOLOv3 head (spec §5.1) and split distillation (spec §5.2)."""
import math

import pytest
import torch
from torch import nn

import pocketdet
from pocketdet.compress.distill import distill_step_losses, split_distill_loss
from pocketdet.compress.prune import (PruneError, SEED_PRUNE_PARAMS, SEED_PRUNE_RATIOS, filters_to_prune,
                                      prune, pruned_config, read_block_widths)
from pocketdet.config import load_config
from pocketdet.checkpoint import save_atomic
from pocketdet.models.yolov3 import YOLOv3

SPEC_WIDTHS = [[128, 256, 128, 256, 128, 256], [64, 128, 64, 128, 64, 128], [16, 32, 16, 32, 16, 32]]


@pytest.fixture(scope="module")
def seed_pruned():
    torch.manual_seed(0)
    model = pocketdet.build("yolov3_mnv3_large_320", num_classes=4, class_names=["a", "b", "c", "d"])
    before = {n: m.weight.shape for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    report = prune(model, SEED_PRUNE_PARAMS, SEED_PRUNE_RATIOS, "fpgm")
    return model, report, before


def test_seed_recipe_gives_spec_widths_and_ratios(seed_pruned):
    model, report, _ = seed_pruned
    assert len(SEED_PRUNE_PARAMS) == 18
    assert report.block_widths == SPEC_WIDTHS
    assert read_block_widths(model) == SPEC_WIDTHS
    # block inputs stay 160, 256+112, 128+40 (spec §5.1 table)
    assert [b.conv_module.conv0.conv.in_channels for b in model.neck.yolo_block] == [160, 368, 168]
    assert 0 < report.params_ratio < 0.5 and 0 < report.flops_ratio < 0.5
    assert report.params_after == sum(p.numel() for p in model.parameters())
    print(f"params {report.params_before} -> {report.params_after} ({report.params_ratio:.3f}), "
          f"FLOPs ratio {report.flops_ratio:.3f}")


def test_not_pruned_layers_keep_widths(seed_pruned):
    model, _, before = seed_pruned
    after = {n: m.weight.shape for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for name, shape in before.items():
        if name.startswith("backbone."):
            assert after[name] == shape, name
        if name.startswith(("neck.yolo_transition.", "yolo_head.")):
            assert after[name][0] == shape[0], name  # output width kept; input follows the pruned tip/route
    assert [m.out_channels for m in model.yolo_head.yolo_output] == [3 * 9] * 3
    assert [t.conv.out_channels for t in model.neck.yolo_transition] == [256, 128]


def test_pruned_model_forward_and_one_train_step(seed_pruned):
    model, _, _ = seed_pruned
    model.eval()
    with torch.no_grad():
        raw = model.forward_raw(torch.zeros(1, 3, 160, 160))
    assert [tuple(r.shape) for r in raw] == [(1, 27, 5, 5), (1, 27, 10, 10), (1, 27, 20, 20)]
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    snapshot = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=1e-3)
    targets = [{"boxes": torch.tensor([[10.0, 15.0, 90.0, 120.0]]), "labels": torch.tensor([2])}]
    losses = model(torch.rand(1, 3, 128, 128), targets)  # a multiple of 32: trained at that size (cheap)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(snapshot, params))
    model.eval()


def test_zoo_prune_fpgm_entry_is_the_pruned_architecture(seed_pruned):
    model, _, _ = seed_pruned
    zoo = pocketdet.build("yolov3_mnv3_large_320_prune_fpgm", num_classes=4, class_names=["a", "b", "c", "d"])
    assert zoo.block_widths == SPEC_WIDTHS
    assert {k: v.shape for k, v in zoo.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_pruned_checkpoint_reloads(seed_pruned, tmp_path):
    model, _, _ = seed_pruned
    model.eval()
    cfg = pruned_config(load_config("yolov3_mnv3_large_320").model_dump(), model)
    path = tmp_path / "pruned.pt"
    save_atomic({"model": model.state_dict(), "config": cfg, "class_names": list(model.class_names)}, path)
    again = pocketdet.load(path)
    assert again.block_widths == SPEC_WIDTHS
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(model.forward_raw(x), again.forward_raw(x)):
            torch.testing.assert_close(a, b)


def test_fpgm_removes_filters_nearest_the_geometric_median():
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3) * 5.0
    median_like = torch.zeros(3, 3, 3)
    # two near-copies of a filter at the centre of the others: each is closest to everything -> pruned by FPGM
    w[2] = median_like
    w[5] = median_like + 0.01
    assert filters_to_prune(w, 0.25, "fpgm") == [2, 5]
    # hand check of the criterion: summed Euclidean distances to all filters
    dist = torch.stack([(w - w[i]).flatten(1).norm(dim=1).sum() for i in range(8)])
    assert filters_to_prune(w, 0.5, "fpgm") == sorted(dist.argsort()[:4].tolist())
    # L1 ranks by norm instead: make the small filters large so FPGM and L1 disagree
    w2 = w.clone()
    w2[[2, 5]] = w2[[2, 5]] + 1.0
    l1 = w2.flatten(1).abs().sum(1)
    assert filters_to_prune(w2, 0.25, "l1") == sorted(l1.argsort()[:2].tolist())


def test_prune_keeps_the_chosen_filters_weights():
    torch.manual_seed(0)
    model = YOLOv3(num_classes=2, class_names=["a", "b"], input_size=64, block_widths=[[32, 64, 32, 64, 32, 64],
                                                                       [16, 32, 16, 32, 16, 32], [8, 16, 8, 16, 8, 16]])
    conv = model.neck.yolo_block[0].conv_module.conv0.conv
    w = conv.weight.detach().clone()
    drop = filters_to_prune(w, 0.5, "l2")
    prune(model, ["yolo_block.0.0.0.conv.weights"], [0.5], "l2")
    keep = [i for i in range(32) if i not in drop]
    torch.testing.assert_close(conv.weight, w[keep])
    # the consumer's input channels follow
    assert model.neck.yolo_block[0].conv_module.conv1.conv.in_channels == 16
    assert model.neck.yolo_block[0].conv_module.conv0.batch_norm.num_features == 16


def test_prune_refuses_protected_layers_and_bad_input():
    model = YOLOv3(num_classes=2, class_names=["a", "b"], input_size=64, block_widths=[[16] * 6, [8] * 6, [8] * 6])
    with pytest.raises(PruneError, match="keep their widths"):
        prune(model, ["yolo_head.yolo_output.0"], [0.5])
    with pytest.raises(PruneError, match="keep their widths"):
        prune(model, ["neck.yolo_transition.*"], [0.5])
    with pytest.raises(PruneError, match="matches no conv"):
        prune(model, ["yolo_block.7.0.0.conv.weights"], [0.5])
    with pytest.raises(PruneError, match="ratios"):
        prune(model, ["neck.yolo_block.0.tip", "neck.yolo_block.1.tip"], [0.5, 0.5, 0.5])
    with pytest.raises(PruneError, match="criterion"):
        prune(model, ["neck.yolo_block.0.tip"], [0.5], criterion="taylor")


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_split_distill_loss_matches_hand_computation():
    # one level, 1 anchor, 2 classes, a 1x2 map: channels x, y, w, h, obj, c0, c1
    s = torch.tensor([[0.2, -0.4], [1.0, 0.0], [0.5, -0.5], [0.1, 0.3], [-1.0, 2.0], [0.3, -0.2], [0.0, 1.5]])
    t = torch.tensor([[-0.3, 0.6], [0.4, 0.1], [0.2, -0.1], [0.0, 0.9], [0.7, -0.2], [1.0, 0.5], [-0.5, 0.2]])
    out = split_distill_loss([s.view(1, 7, 1, 2)], [t.view(1, 7, 1, 2)], [1], weight=1.0)
    reg = cls = obj = 0.0
    for c in range(2):
        w = _sig(t[4, c].item())
        reg += (_bce(s[0, c].item(), _sig(t[0, c].item())) + _bce(s[1, c].item(), _sig(t[1, c].item()))
                + abs(s[2, c].item() - t[2, c].item()) + abs(s[3, c].item() - t[3, c].item())) * w
        cls += sum(_bce(s[k, c].item(), _sig(t[k, c].item())) * w for k in (5, 6))
        obj += _bce(s[4, c].item(), 1.0 if t[4, c].item() > 0 else 0.0)
    assert out["distill_reg"].item() == pytest.approx(reg / 2, rel=1e-5)
    assert out["distill_cls"].item() == pytest.approx(cls / 4, rel=1e-5)
    assert out["distill_obj"].item() == pytest.approx(obj / 2, rel=1e-5)
    # the default weight is the seed's 1000, and levels add up
    two = split_distill_loss([s.view(1, 7, 1, 2)] * 2, [t.view(1, 7, 1, 2)] * 2, [1, 1])
    assert two["distill_reg"].item() == pytest.approx(2000 * reg / 2, rel=1e-5)


def test_split_distill_reg_cls_are_minimal_when_student_equals_teacher():
    torch.manual_seed(0)
    t = torch.randn(2, 3 * 7, 4, 4)
    s = t.clone().requires_grad_(True)
    out = split_distill_loss([s], [t], [3], weight=1.0)
    (out["distill_reg"] + out["distill_cls"]).backward()
    # soft-target BCE and L1 are minimal at s == t: the gradient on x, y, cls vanishes (w/h L1 is 0 there)
    g = s.grad.view(2, 3, 7, 4, 4)
    assert g[:, :, [0, 1, 5, 6]].abs().max() < 1e-7
    wh = (s.detach().view(2, 3, 7, 4, 4)[:, :, 2:4] - t.view(2, 3, 7, 4, 4)[:, :, 2:4]).abs().sum()
    assert wh.item() == 0.0
    # and any other student scores higher
    worse = split_distill_loss([t + 0.3], [t], [3], weight=1.0)
    assert worse["distill_reg"] > out["distill_reg"] and worse["distill_cls"] > out["distill_cls"]


def test_distill_step_adds_distill_terms_to_the_student_loss():
    torch.manual_seed(0)
    widths = [[16] * 6, [8] * 6, [8] * 6]
    student = YOLOv3(num_classes=2, class_names=["a", "b"], block_widths=widths, input_size=64).train()
    teacher = YOLOv3(num_classes=2, class_names=["a", "b"], block_widths=[[32] * 6] * 3, input_size=64).eval()
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10.0, 30.0, 60.0]]), "labels": torch.tensor([0])}]
    losses = distill_step_losses(student, teacher, images, targets)
    assert set(losses) == {"loss_xy", "loss_wh", "loss_obj", "loss_cls", "distill_reg", "distill_cls", "distill_obj"}
    own = student(images, targets)
    for k in own:
        torch.testing.assert_close(losses[k], own[k])
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_cli_prune_globs_and_reload(tmp_path):
    from typer.testing import CliRunner

    from pocketdet.cli import app

    cfg = load_config("yolov3_mnv3_large_320").model_dump()
    cfg["model"].update(input_size=64, block_widths=[[16] * 6, [8] * 6, [8] * 6])
    model = YOLOv3(**{k: v for k, v in cfg["model"].items() if k != "arch"}, num_classes=2, class_names=["a", "b"])
    src, out = tmp_path / "small.pt", tmp_path / "pruned.pt"
    save_atomic({"model": model.state_dict(), "config": cfg, "class_names": ["a", "b"]}, src)
    res = CliRunner().invoke(app, ["prune", str(src), "--params", "neck.yolo_block.*.tip", "--ratios", "0.5",
                                   "--criterion", "l1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    again = pocketdet.load(out)
    assert [w[5] for w in again.block_widths] == [8, 4, 4]
    assert [w[:5] for w in again.block_widths] == [[16] * 5, [8] * 5, [8] * 5]
    bad = CliRunner().invoke(app, ["prune", str(src), "--params", "backbone.*", "--ratios", "0.5", "-o", str(out)])
    assert bad.exit_code == 2 and "keep their widths" in bad.output
