"""PP-PicoDet: zoo entries build with PaddleDetection 2.6's parameter counts and state-dict names, the dense
outputs have the documented shapes, the in-graph box decode and the post-processing do what ppdet does."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from pocketdet.api import build
from pocketdet.config import load_config
from pocketdet.engine.optim import lr_factor
from pocketdet.models.common import count_parameters
from pocketdet.models.picodet import PicoDet

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
ZOO = [f"picodet_{v}_{s}" for v in ("xs", "s", "m", "l") for s in (320, 416)] + ["picodet_l_640"]
PHOTO = ROOT / "data/coco128/images/train2017/000000000009.jpg"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


ALIAS = re.compile(r"^head\.head_(cls|reg)(\d+)\.")


def paddle_tensors(variant: str) -> dict[str, tuple[list[int], bool]]:
    """tests/fixtures/picodet_{variant}_params.tsv (`tools/picodet_reference.py params`, paddledet 2.6.0's own
    build): state-dict name -> (shape, learnable), BN statistics renamed to torch's.

    PicoHeadV2 registers each class/box conv twice (`add_sublayer("head_cls0")` and `head_cls_list.0`), so
    Paddle's state dict holds every one under both names; the alias is checked to mirror its list entry and
    dropped (pocketdet registers the list only; the converter drops the alias the same way)."""
    out = {}
    for line in (FIX / f"picodet_{variant}_params.tsv").read_text().splitlines():
        name, shape, kind = line.split("\t")
        name = name.replace("._mean", ".running_mean").replace("._variance", ".running_var")
        out[name] = ([int(s) for s in shape.strip("[]").split(",")], kind == "learnable")
    aliases = [k for k in out if ALIAS.match(k)]
    assert len(aliases) == 16  # weight + bias of 4 cls and 4 reg convs
    for k in aliases:
        assert out.pop(k) == out[ALIAS.sub(r"head.head_\1_list.\2.", k)]
    return out


@pytest.mark.parametrize("name", ZOO)
def test_zoo_entry_matches_paddle_build(name):
    model = build(name)
    variant = name.split("_")[1]
    ref = paddle_tensors(variant)
    paddle_learnable = sum(math.prod(shape) for shape, learn in ref.values() if learn)
    assert count_parameters(model) == paddle_learnable == model.zoo_config.reference["paddle_params_learnable"]
    ours = {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert ours == {k: shape for k, (shape, _) in ref.items()}
    # Paddle's learnable tensors are torch parameters; the 4 unused GFLHead scales exist but stay frozen
    params = dict(model.named_parameters())
    assert {k for k, (_, learn) in ref.items() if learn} == set(params)
    assert sorted(k for k, p in params.items() if not p.requires_grad) == [f"head.p{i}_feat.scale_reg" for i in
                                                                          (3, 4, 5, 6)]
    assert model.input_size == int(name.split("_")[2])
    cfg = model.zoo_config
    assert cfg.weights["coco"].url == f"https://paddledet.bj.bcebos.com/models/{name}_coco_lcnet.pdparams"


@pytest.mark.parametrize("variant,size", [("s", 320), ("xs", 416)])
def test_dense_output_shapes(variant, size):
    model = PicoDet(variant, num_classes=7, input_size=size).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        cls_scores, reg_dists = model.head_outputs(x)
        scores, boxes = model.forward_raw(x)
    hw = [(math.ceil(size / s), math.ceil(size / s)) for s in (8, 16, 32, 64)]
    assert [tuple(c.shape) for c in cls_scores] == [(2, 7, h, w) for h, w in hw]
    assert [tuple(r.shape) for r in reg_dists] == [(2, 32, h, w) for h, w in hw]
    assert all(((c > 0) & (c < 1)).all() for c in cls_scores)  # probabilities
    p = sum(h * w for h, w in hw)
    assert scores.shape == (2, p, 7) and boxes.shape == (2, p, 4)
    assert torch.equal(scores[:, : hw[0][0] * hw[0][1]], cls_scores[0].flatten(2).transpose(1, 2))
    assert (boxes[..., 2:] >= boxes[..., :2]).all()


def test_decode_one_hot_distributions_to_cells():
    """A distribution peaked on bin k means a distance of k cells: box = centre -/+ k * stride."""
    model = PicoDet("xs", input_size=320)
    sizes = [(40, 40), (20, 20), (10, 10), (5, 5)]
    g = torch.Generator().manual_seed(0)
    bins = [torch.randint(0, 8, (1, 4, h, w), generator=g) for h, w in sizes]
    regs = [torch.nn.functional.one_hot(b, 8).permute(0, 1, 4, 2, 3).reshape(1, 32, *b.shape[-2:]).double() * 60.0
            for b in bins]
    boxes = model.decode(regs)[0]
    pts, strides = model.anchor_points(sizes, dtype=torch.float64)
    k = torch.cat([b[0].flatten(1).T for b in bins]).double()  # [P, 4] (l, t, r, b) in cells
    expect = torch.cat([pts - k[:, :2] * strides, pts + k[:, 2:] * strides], 1)
    assert torch.allclose(boxes, expect, atol=1e-9)
    # anchor points: cell centres in input pixels, stride per level, fine to coarse, row-major
    assert pts[0].tolist() == [4.0, 4.0] and pts[1].tolist() == [12.0, 4.0] and pts[40].tolist() == [4.0, 12.0]
    assert pts[1600].tolist() == [8.0, 8.0] and strides[1600].item() == 16.0
    assert pts[-1].tolist() == [288.0, 288.0] and strides[-1].item() == 64.0


def test_postprocess_scales_to_original_and_runs_classwise_nms():
    model = PicoDet("xs", num_classes=3, input_size=320)
    boxes = torch.tensor([[[32.0, 32.0, 96.0, 96.0],     # class 0, best
                           [34.0, 34.0, 98.0, 98.0],     # class 0, IoU ~0.89 with the first: suppressed
                           [34.0, 34.0, 98.0, 98.0],     # the same box in class 1: kept (class-wise)
                           [64.0, 32.0, 128.0, 96.0],    # class 0, IoU 1/3 < 0.6: kept
                           [200.0, 200.0, 240.0, 240.0]]])  # below score_thresh 0.025
    scores = torch.zeros(1, 5, 3)
    scores[0, 0, 0], scores[0, 1, 0], scores[0, 2, 1], scores[0, 3, 0], scores[0, 4, 2] = 0.9, 0.8, 0.7, 0.6, 0.02
    out = model.postprocess((scores, boxes), [(480, 640)])[0]  # (h, w): x * 2, y * 1.5
    assert out["labels"].tolist() == [0, 1, 0]
    assert torch.allclose(out["scores"], torch.tensor([0.9, 0.7, 0.6]))
    assert torch.allclose(out["boxes"][0], torch.tensor([64.0, 48.0, 192.0, 144.0]))
    assert torch.allclose(out["boxes"][2], torch.tensor([128.0, 48.0, 256.0, 144.0]))


def test_predict_real_photo_returns_detections_in_image_pixels():
    """predict on a file gives the same detections as the network on the 320 input, boxes scaled to the photo."""
    import numpy as np
    from PIL import Image

    torch.manual_seed(0)
    model = build("picodet_s_320").eval()
    with torch.no_grad():  # a head biased to fire everywhere, so that NMS and the rescale have work to do
        for conv in model.head.head_cls_list:
            conv.bias.fill_(3.0)
    out = model.predict([PHOTO])[0]
    assert set(out) == {"boxes", "scores", "labels"}
    n = out["boxes"].shape[0]
    assert 0 < n <= 100 and out["scores"].shape == (n,) and out["labels"].shape == (n,)
    assert (out["scores"] >= 0.025).all() and (out["labels"] < 80).all() and torch.isfinite(out["boxes"]).all()
    photo = torch.from_numpy(np.array(Image.open(PHOTO).convert("RGB"))).permute(2, 0, 1).float() / 255
    h, w = photo.shape[-2:]
    assert (w, h) != (320, 320)
    square = model.resize_images([photo])[0][0]  # the network input predict makes of the photo
    with torch.no_grad():
        ref = model([square])[0]  # the same network input, detections in 320x320 input pixels
    assert torch.equal(out["labels"], ref["labels"]) and torch.allclose(out["scores"], ref["scores"])
    assert torch.allclose(out["boxes"], ref["boxes"] * torch.tensor([w / 320, h / 320, w / 320, h / 320]),
                          atol=1e-3)


def test_cosine_period_longer_than_the_run():
    """PicoDet-L 640 stops at epoch 200 of a 300-epoch cosine: the LR ends at 0.25 x base."""
    sched = load_config("picodet_l_640").train.schedule
    assert sched.cosine_iters == sched.max_iters * 3 // 2
    assert lr_factor(sched.max_iters, sched) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 3)))
    assert lr_factor(sched.max_iters, sched.model_copy(update={"cosine_iters": None})) == pytest.approx(0.0)


def test_shorter_run_keeps_the_cosine_fraction():
    from pocketdet.cli import train_overrides
    from pocketdet.config import apply_overrides

    cfg = load_config("picodet_l_640")
    new = apply_overrides(cfg, train_overrides(cfg, [], iters=1000)).train.schedule
    assert (new.max_iters, new.cosine_iters) == (1000, 1500)
    assert lr_factor(1000, new) == pytest.approx(0.25)
    kept = apply_overrides(cfg, train_overrides(cfg, ["train.schedule.cosine_iters=1000"], iters=1000))
    assert kept.train.schedule.cosine_iters == 1000


def test_finetune_init_keeps_rows_of_classes_named_like_coco():
    from pocketdet.init_weights import init_from_model

    source = build("picodet_xs_320")
    target = PicoDet("xs", num_classes=3, class_names=["dog", "unicorn", "person"], input_size=320)
    fresh = target.head.head_cls_list[2].weight.detach().clone()
    report = init_from_model(target, source, "coco.pt")
    coco = source.class_names
    for i in range(4):
        w_t, w_s = target.head.head_cls_list[i].weight, source.head.head_cls_list[i].weight
        assert torch.equal(w_t[0], w_s[coco.index("dog")]) and torch.equal(w_t[2], w_s[coco.index("person")])
    assert torch.equal(target.head.head_cls_list[2].weight[1], fresh[1])  # unicorn keeps its fresh init
    assert torch.equal(target.head.head_reg_list[0].weight, source.head.head_reg_list[0].weight)
    assert report.reinitialised == ["unicorn"]


def test_pretrained_lcnet_in_paddleclas_naming(tmp_path):
    """PaddleClas PP-LCNet ImageNet files (`conv1.conv.weight`, `blocks2.0.dw_conv.bn._mean`, ...,
    `last_conv.weight`, `fc.*`) fill the whole backbone; the classifier is reported, not loaded."""
    import pickle

    from pocketdet.convert.paddle import load_backbone_weights
    from pocketdet.models.lcnet import LCNet

    imagenet = LCNet(0.75)
    arrays = {k.replace("running_mean", "_mean").replace("running_var", "_variance"): v.numpy()
              for k, v in imagenet.state_dict().items() if not k.endswith("num_batches_tracked")}
    arrays.update({"last_conv.weight": torch.zeros(1280, 384, 1, 1).numpy(),
                   "fc.weight": torch.zeros(1280, 1000).numpy(), "fc.bias": torch.zeros(1000).numpy()})
    path = tmp_path / "PPLCNet_x0_75_pretrained.pdparams"
    path.write_bytes(pickle.dumps(arrays, protocol=4))
    model = build("picodet_s_320")
    report = load_backbone_weights(model, path)
    assert not report.not_loaded and sorted(report.ignored) == ["fc.bias", "fc.weight", "last_conv.weight"]
    assert torch.equal(model.backbone.blocks6[1].se.conv2.weight, imagenet.blocks6[1].se.conv2.weight)
    assert torch.equal(model.backbone.blocks3[0].dw_conv.bn.running_var, imagenet.blocks3[0].dw_conv.bn.running_var)
