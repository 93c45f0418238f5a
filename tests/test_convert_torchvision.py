"""torchvision -> pocketdet: the backbone maps (exactly, block by block); the SSD extras and head do not."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision

from pocketdet.convert.common import WeightConversionError
from pocketdet.convert.paddle import load_backbone_weights
from pocketdet.convert.torchvision import convert_torchvision


def _randomize_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BN statistics and affine, so BN eps handling is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.05)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tv_ssdlite():
    torch.manual_seed(0)
    tv = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    return _randomize_bn(tv, 1)


@pytest.fixture(scope="module")
def converted(tv_ssdlite):
    return convert_torchvision(tv_ssdlite.state_dict(), "ssdlite320_mobilenet_v3_large")


def _tv_detector_block(tv, f: int):
    """The torchvision module(s) computing MobileNetV3 feature f (block f-1) in the SSDLite extractor."""
    feats0, feats1 = tv.backbone.features
    c4 = len(feats0) - 1  # the last entry of the first part is block C4's expand conv
    if f < c4:
        return feats0[f]
    if f == c4:
        return torch.nn.Sequential(feats0[c4], feats1[0])
    return feats1[f - c4]


def _block_input(ch: int, seed: int, after_hswish: bool) -> torch.Tensor:
    x = torch.randn(2, ch, 24, 24, generator=torch.Generator().manual_seed(seed)) * 2
    return F.hardswish(x) if after_hswish else x


def test_ssdlite_backbone_blocks_compute_what_torchvision_computes(tv_ssdlite, converted):
    model, report = converted
    bb = model.backbone
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(bb.conv1(x), tv_ssdlite.backbone.features[0][0](x), atol=1e-5)
        checked = []
        for i, name in enumerate(bb.block_names):
            blk = getattr(bb, name)
            if any(k.startswith(f"backbone.{name}.") for k in report.not_loaded):
                continue  # SE width differs: reported, checked below
            inp = _block_input(blk.expand_conv.conv.in_channels, i, after_hswish=(i == 0))
            ours, _ = blk(inp)
            theirs = _tv_detector_block(tv_ssdlite, i + 1)(inp)
            if i == 0:  # identity expand conv with a shift: exact away from the depthwise conv's border
                ours, theirs = ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1]
            err = (ours - theirs).abs().max().item()
            assert err <= 1e-4 * max(1.0, theirs.abs().max().item()), (name, err)
            checked.append(name)
        extra_in = torch.randn(1, 80, 10, 10, generator=torch.Generator().manual_seed(4))
        assert torch.allclose(getattr(bb, bb.extra_names[0])(extra_in),
                              tv_ssdlite.backbone.features[1][-1](extra_in), atol=1e-5)
    # all 15 blocks but the three whose SE squeeze width differs (72->18/24, 120->30/32)
    assert checked == [f"conv{n}" for n in (2, 3, 4, *range(8, 17))]


def test_ssdlite_report_says_what_does_not_map(converted):
    model, report = converted
    for n in (5, 6, 7):
        assert report.not_loaded[f"backbone.conv{n}.mid_se.conv1.weight"].startswith("shape differs")
    assert all(k.startswith(("backbone.conv5.mid_se", "backbone.conv6.mid_se", "backbone.conv7.mid_se",
                             "backbone.conv18", "backbone.conv19", "backbone.conv20", "backbone.conv21",
                             "ssd_head.")) for k in report.not_loaded)
    assert "ssd_head.scores0.pw_conv.weight" in report.not_loaded
    assert "SSD extra block" in report.ignored["backbone.extra.0.1.0.weight"]
    assert "6 anchors" in report.ignored["head.classification_head.module_list.0.1.weight"]
    assert report.transformed["backbone.conv12.mid_se.conv2.weight"].startswith("x 5/6")
    assert "conv17" in model.backbone.extra_names[0]
    assert model.zoo_config.name == "ssdlite_mnv3_large_320"


def test_imagenet_mobilenet_v3_large_into_yolov3_backbone(tmp_path):
    """The classification checkpoint's full tail (160/960) fits YOLOv3's backbone (no multiplier)."""
    from pocketdet.models import YOLOv3

    torch.manual_seed(0)
    tv = _randomize_bn(torchvision.models.mobilenet_v3_large(weights=None), 2)
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(tv.state_dict(), path)
    model = YOLOv3().eval()
    report = load_backbone_weights(model, path)
    assert report.ignored["classifier.0.weight"] == "ImageNet classifier"
    assert report.ignored["features.16.0.weight"].startswith("last 1x1 conv")
    assert set(report.not_loaded) == {f"backbone.conv{n}.mid_se.conv{j}.{p}" for n in (5, 6, 7)
                                      for j in (1, 2) for p in ("weight", "bias")}
    with torch.no_grad():
        for i in (3, 11, 14):  # conv5 (SE not mapped: differs), conv13 and conv16 (SE folded: equal)
            blk = getattr(model.backbone, f"conv{i + 2}")
            inp = _block_input(blk.expand_conv.conv.in_channels, i, False)
            err = (blk(inp)[0] - tv.features[i + 1](inp)).abs().max().item()
            assert (err < 1e-4) == (i != 3), (i, err)


def test_imagenet_full_tail_into_ssdlite_reports_multiplier_layers(tmp_path):
    import pocketdet

    tv = torchvision.models.mobilenet_v3_large(weights=None)
    model = pocketdet.build("ssdlite_mnv3_large_320")
    report = load_backbone_weights(model, _save(tv.state_dict(), tmp_path / "mnv3.pth"))
    for k in ("backbone.conv14.linear_conv.conv.weight", "backbone.conv15.expand_conv.conv.weight",
              "backbone.conv17.conv.weight"):
        assert report.not_loaded[k].startswith("shape differs"), k
    assert "backbone.conv14.bottleneck_conv.conv.weight" in report.loaded
    assert report.not_loaded["backbone.conv18.pointwise_conv.conv.weight"] == "no torchvision counterpart"


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_refusals_name_the_file_and_key(tmp_path, tv_ssdlite):
    sd = dict(tv_ssdlite.state_dict())
    sd["backbone.features.0.1.block.0.9.weight"] = torch.zeros(3)
    with pytest.raises(WeightConversionError, match=r"(?s)no counterpart.*backbone\.features\.0\.1\.block\.0\.9\.weight"):
        convert_torchvision(sd)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(WeightConversionError, match="junk.pth: not a torch checkpoint"):
        convert_torchvision(junk)
    classifier_only = _save(torchvision.models.mobilenet_v3_large(weights=None).state_dict(), tmp_path / "cls.pth")
    with pytest.raises(WeightConversionError, match="cls.pth: not a torchvision ssdlite320_mobilenet_v3_large"):
        convert_torchvision(classifier_only)
    with pytest.raises(WeightConversionError, match="unsupported torchvision model 'ssd300_vgg16'"):
        convert_torchvision(sd, "ssd300_vgg16")


def test_cli_convert_torchvision(tmp_path, tv_ssdlite):
    from typer.testing import CliRunner

    import pocketdet
    from pocketdet.cli import app

    src = _save(tv_ssdlite.state_dict(), tmp_path / "tv_ssdlite.pth")
    out = tmp_path / "tv_init.pt"
    r = CliRunner().invoke(app, ["convert", "torchvision", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "only the MobileNetV3 backbone maps" in r.output
    model = pocketdet.load(out)
    assert torch.equal(model.backbone.conv12.expand_conv.conv.weight,
                       tv_ssdlite.backbone.features[0][11].block[0][0].weight)
