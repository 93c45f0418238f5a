"""SSDLite-MobileNetV3: architecture facts of the spec, priors, coder, loss and post-processing."""
import math

import pytest
import torch

import pocketdet
from pocketdet.api import count_flops, count_params
from pocketdet.models.box_ops import decode_boxes, encode_boxes
from pocketdet.models.common import PaddleHardSigmoid, SamePad
from pocketdet.models.ssdlite import VARIANCE, SSDLite, prior_boxes, ssd_prior_sizes

# PaddleDetection 2.6 dygraph, 80 classes, learnable parameters (shared/spec/paddle_reference.md).
PADDLE_PARAMS = {"large": 3_393_750, "small": 1_917_854}


@pytest.mark.parametrize("variant", ["large", "small"])
def test_param_count_matches_paddle(variant):
    m = pocketdet.build(f"ssdlite_mnv3_{variant}_320")
    measured, ref = count_params(m), PADDLE_PARAMS[variant]
    # The static spec and the dygraph port agree on this architecture; we match exactly (3% allowed).
    assert abs(measured - ref) / ref <= 0.03, (measured, ref)
    assert measured == ref


def test_flops_reported_and_plausible():
    large = count_flops(pocketdet.build("ssdlite_mnv3_large_320"))
    small = count_flops(pocketdet.build("ssdlite_mnv3_small_320"))
    # torchvision's SSDLite-MNV3-Large graph is 0.583 GMACs; ours drops the multiplied last blocks' width.
    assert 0.8e9 < large < 1.3e9 and 0.25e9 < small < 0.5e9 and small < large


@pytest.mark.parametrize("variant,ch", [("large", [672, 480, 512, 256, 256, 128]),
                                        ("small", [288, 288, 512, 256, 256, 128])])
def test_feature_levels(variant, ch):
    m = SSDLite(variant).eval()
    feats = m.backbone(torch.zeros(1, 3, 320, 320))
    assert [f.shape[1] for f in feats] == ch
    assert [f.shape[-1] for f in feats] == [20, 10, 5, 3, 2, 1]


def test_priors_match_paddle_prior_box():
    mins, maxs = ssd_prior_sizes(320, 20, 95, 6)
    assert mins == pytest.approx([32, 64, 121.6, 179.2, 236.8, 294.4])
    assert maxs == pytest.approx([64, 121.6, 179.2, 236.8, 294.4, 352])
    ars = [[2.0]] + [[2.0, 3.0]] * 5
    pri = prior_boxes([(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)], 320, mins, maxs, ars,
                      [16, 32, 64, 107, 160, 320])
    assert pri.shape == (2434, 4)
    # first location of level 0: centre (8, 8) px; boxes ar=1 (32x32), ar=2, ar=1/2, then sqrt(32*64)
    c = 8 / 320
    w2 = 32 * math.sqrt(2) / 2 / 320
    expect = torch.tensor([[c - 16 / 320, c - 16 / 320, c + 16 / 320, c + 16 / 320],
                           [c - w2, c - 16 / math.sqrt(2) / 320, c + w2, c + 16 / math.sqrt(2) / 320]]).clamp(0, 1)
    assert torch.allclose(pri[:2], expect, atol=1e-6)
    s = math.sqrt(32 * 64) / 2 / 320
    assert torch.allclose(pri[3], torch.tensor([c - s, c - s, c + s, c + s]).clamp(0, 1), atol=1e-6)
    # level 3 uses step 107: first centre 53.5 px, so its 179.2 px ar=1 box ends at 53.5 + 89.6 (left clipped)
    lvl3 = pri[1600 + 600 + 150: 1600 + 600 + 150 + 54]
    assert (lvl3[0, 2] * 320).item() == pytest.approx(53.5 + 89.6, abs=1e-3) and lvl3[0, 0] == 0
    assert pri.min() >= 0 and pri.max() <= 1


def test_extra_block_same_padding_is_asymmetric():
    pad = SamePad(3, 2)
    assert pad(torch.zeros(1, 1, 10, 10)).shape[-1] == 11  # 0 before, 1 after
    assert pad(torch.zeros(1, 1, 5, 5)).shape[-1] == 7     # 1 and 1
    x = torch.arange(4.0).view(1, 1, 2, 2)
    assert pad(x)[0, 0, 0, 0] == 0 and pad(x)[0, 0, -1, -1] == 0 and pad(x)[0, 0, 1, 1] == 3


def test_se_gate_is_paddle_hard_sigmoid():
    x = torch.tensor([-3.0, -2.5, 0.0, 1.0, 2.5, 3.0])
    assert torch.allclose(PaddleHardSigmoid()(x), torch.tensor([0.0, 0.0, 0.5, 0.7, 1.0, 1.0]))


def test_box_coder_roundtrip():
    ref = torch.tensor([[0.1, 0.1, 0.3, 0.4], [0.5, 0.5, 0.9, 0.7]])
    gt = torch.tensor([[0.12, 0.05, 0.33, 0.41], [0.4, 0.55, 1.0, 0.8]])
    d = encode_boxes(gt, ref, VARIANCE)
    assert torch.allclose(decode_boxes(d, ref, VARIANCE), gt, atol=1e-6)


def test_matching_gives_every_gt_a_prior_and_mining_ratio():
    m = SSDLite("small").eval()
    pri = m.priors(m.backbone(torch.zeros(1, 3, 320, 320)))
    # a tiny box overlaps no prior at 0.5 IoU; bipartite matching must still give it one
    gt = torch.tensor([[0.50, 0.50, 0.52, 0.53], [0.1, 0.1, 0.6, 0.7]])
    matched, max_iou = m.match(gt, pri)
    assert (matched == 0).sum() >= 1 and (matched == 1).sum() >= 1
    assert (max_iou[matched == 1] >= 0.5).sum() >= (matched == 1).sum() - 1
    m.train()
    x = torch.rand(2, 3, 320, 320)
    t = [{"boxes": gt * 320, "labels": torch.tensor([3, 7])}, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = m(x, t)
    assert set(losses) == {"loss_loc", "loss_conf"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert m.ssd_head.scores0.pw_conv.weight.grad.abs().sum() > 0


def test_eval_outputs_in_original_pixels_and_respect_limits():
    m = SSDLite("small").eval()
    m.postprocess_cfg.update(score_thresh=0.0, keep_top_k=50)
    out = m([torch.rand(3, 480, 640), torch.rand(3, 200, 100)])
    assert len(out) == 2
    for o, (h, w) in zip(out, [(480, 640), (200, 100)]):
        assert o["boxes"].shape[0] <= 50 and o["boxes"].shape[0] == o["scores"].shape[0] == o["labels"].shape[0]
        assert o["boxes"][:, 2].max() <= w + 1e-3 and o["boxes"][:, 3].max() <= h + 1e-3
        assert o["labels"].max() < 80 and o["labels"].min() >= 0


def test_predict_accepts_paths_pil_and_arrays(data_dir):
    import numpy as np
    from PIL import Image

    path = sorted((data_dir / "coco128/images/val2017").glob("*.jpg"))[0]
    m = SSDLite("small").eval()
    a = m.predict(path)[0]
    b = m.predict(Image.open(path))[0]
    c = m.predict(np.asarray(Image.open(path).convert("RGB")))[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(b["boxes"], c["boxes"])
    with pytest.raises(ValueError, match="cannot read image"):
        m.predict(data_dir / "coco128.yaml")
