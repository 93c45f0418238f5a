"""The fast `ssd` pipeline (data/ssd_aug.py) draws the same distribution of samples as the step-by-step
torchvision reference (transforms.ssd_reference_transforms).

Reference statistics of REF_SAMPLES seeded samples on the first PHOTOS coco128 photos are a committed fixture
(the reference takes ~0.1 s a sample here); regenerate with
`PYTHONPATH=. python tests/test_aug_distribution.py --write-fixture`. Sample k uses photo k % PHOTOS, so both
sides mix the photos in the same proportions. Each statistic is compared with a two-sample Kolmogorov-Smirnov
test; colour statistics are divided by the same statistic of the source photo, which removes the between-photo
spread and leaves the distortion's. The fast pipeline runs as in training, on undecoded PhotoFiles (JPEGs decoded
at a DCT reduction where its window allows). The last test shows the comparison catches a pipeline that is off.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketdet.data import CocoDetection
from pocketdet.data.base import PhotoFiles
from pocketdet.data.ssd_aug import IMAGENET_FILL, FastSSDAugment, decode_reduction, sample_geometry

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/ssd_aug_reference.npz"
PHOTOS, REF_SAMPLES, NEW_SAMPLES = 32, 1536, 384
KS_C = 1.95  # two-sample KS critical coefficient at alpha = 0.001
PER_SAMPLE = ("n_boxes", "fill_fraction", "gray_mean_ratio", "gray_std_ratio", "chroma_ratio")
PER_BOX = ("box_sqrt_area", "box_aspect", "box_cx", "box_cy")


def coco128(root: Path):
    return CocoDetection(root / "coco128/images/train2017", root / "coco128/annotations/instances_train2017.json")


def load_photos(root: Path = ROOT / "data"):
    ds = coco128(root)
    return [ds[i] for i in range(PHOTOS)]


def colour_stats(img: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """(mean grey, grey std, mean chroma) over the pixels in `mask` (all if None)."""
    x = img.as_subclass(torch.Tensor).float().reshape(3, -1)
    if mask is not None:
        x = x[:, mask.reshape(-1)]
    g = x[0] * 0.299 + x[1] * 0.587 + x[2] * 0.114
    return np.array([float(g.mean()), float(g.std()), float((x.amax(0) - x.amin(0)).mean())])


def draw_statistics(transform, photos, n: int, seed0: int, inputs=None) -> dict[str, np.ndarray]:
    """Statistics of n samples; sample k transforms inputs[k % PHOTOS] (default: the decoded photos)."""
    source = [colour_stats(img) for img, _ in photos]
    inputs = inputs or photos
    fill = torch.tensor(IMAGENET_FILL, dtype=torch.uint8).view(3, 1, 1)
    stats = {k: [] for k in PER_SAMPLE + PER_BOX}
    for k in range(n):
        torch.manual_seed(seed0 + k)
        img, target = transform(*inputs[k % len(photos)])
        img = img.as_subclass(torch.Tensor)
        is_fill = (img == fill).all(0)
        stats["n_boxes"].append(len(target["boxes"]))
        stats["fill_fraction"].append(float(is_fill.float().mean()))
        if (~is_fill).sum() > 100:
            c = colour_stats(img, ~is_fill) / np.maximum(source[k % len(photos)], 1e-6)
            for name, v in zip(("gray_mean_ratio", "gray_std_ratio", "chroma_ratio"), c):
                stats[name].append(v)
        b = target["boxes"].as_subclass(torch.Tensor).numpy() / img.shape[-1]
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        stats["box_sqrt_area"] += list(np.sqrt(w * h))
        stats["box_aspect"] += list(np.log(w / h))
        stats["box_cx"] += list((b[:, 0] + b[:, 2]) / 2)
        stats["box_cy"] += list((b[:, 1] + b[:, 3]) / 2)
    return {k: np.asarray(v, np.float64) for k, v in stats.items()}


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.concatenate([a, b])
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def ks_failures(ref: dict, new: dict) -> dict[str, tuple[float, float]]:
    """{statistic: (D, critical D)} for the statistics whose distributions differ at alpha = 0.001. Boxes of
    one sample share its crop and scale, so per-box statistics count samples, not boxes, as independent
    draws (the KS bound for boxes would be too tight)."""
    out = {}
    for k in PER_SAMPLE + PER_BOX:
        n, m = (len(ref["n_boxes"]), len(new["n_boxes"])) if k in PER_BOX else (len(ref[k]), len(new[k]))
        d, crit = ks_statistic(ref[k], new[k]), KS_C * np.sqrt((n + m) / (n * m))
        if d > crit:
            out[k] = (round(d, 3), round(crit, 3))
    return out


@pytest.fixture(scope="module")
def photos(data_dir):
    # one thread, as in a DataLoader worker: per-image ops are too small to gain from more
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_photos(data_dir)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photo_files(data_dir):
    files = PhotoFiles(coco128(data_dir))
    return [files[i] for i in range(PHOTOS)]


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURE))


def test_fast_ssd_pipeline_draws_the_reference_distribution(photos, photo_files, reference):
    new = draw_statistics(FastSSDAugment(320), photos, NEW_SAMPLES, seed0=10_000, inputs=photo_files)
    assert ks_failures(reference, new) == {}
    # the zoom-out and crops are there at all: sanity of the statistics themselves
    assert 0.2 < (new["fill_fraction"] > 0).mean() < 0.8 and new["box_sqrt_area"].std() > 0.05


def test_float_photometric_ops_match_torchvision_uint8_kernels():
    """photometric.py's float ops against the reference's torchvision uint8 kernels, op by op on random
    pixels: at most 1 grey level off, on under 1 pixel in 1000 (float rounding at the truncation steps)."""
    from torchvision.transforms.v2 import functional as TF

    from pocketdet.data import photometric

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 64, 96), generator=g, dtype=torch.uint8)
    mean = float(photometric.gray(x.float()).mean())
    cases = [(TF.adjust_brightness, photometric.brightness, (0.875, 1.125)),
             (TF.adjust_contrast, lambda y, f: photometric.contrast(y, f, mean), (0.5, 1.5)),
             (TF.adjust_saturation, photometric.saturation, (0.5, 1.5)),
             (TF.adjust_hue, photometric.hue, (-0.05, 0.05))]
    for ref_op, op, (lo, hi) in cases:
        for f in torch.linspace(lo, hi, 5).tolist():
            d = (ref_op(x, f).float() - op(x.float(), f)).abs()
            assert d.max() <= 1 and (d > 0).float().mean() < 1e-3, (ref_op.__name__, f)


def test_reduced_jpeg_decode_changes_pixels_by_a_fraction_of_a_grey_level(photos, photo_files):
    """Same seed, PhotoFile vs decoded photo: identical boxes; identical pixels where the window allowed no
    DCT reduction (the same pipeline); under a grey level on average where the JPEG was decoded at 1/2-1/8."""
    aug, diffs = FastSSDAugment(320), {}
    for k in range(96):
        (photo, target), (file, _) = photos[k % PHOTOS], photo_files[k % PHOTOS]
        torch.manual_seed(k)
        a, ta = aug(photo, target)
        torch.manual_seed(k)
        b, tb = aug(file, target)
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
        torch.manual_seed(k)
        torch.rand(9)  # the distortion's draw comes first
        g = sample_geometry(*photo.shape[-2:], target["boxes"].numpy())
        diffs.setdefault(decode_reduction(g, 320), []).append(float((a.float() - b.float()).abs().mean()))
    assert max(diffs[1]) == 0.0
    reduced = [d for r, v in diffs.items() if r > 1 for d in v]
    assert len(reduced) >= 10, {r: len(v) for r, v in diffs.items()}  # the reduction does happen
    assert float(np.mean(reduced)) < 1.0 and max(reduced) < 3.0, diffs


def test_distribution_check_catches_a_wrong_pipeline(photos, reference, monkeypatch):
    """Without the zoom-out and the photometric distortion the same comparison fails. (Its resolution, for
    scale: a contrast range halved, or hue and saturation dropped, pass unnoticed at these sample sizes.)"""
    from pocketdet.data import photometric, ssd_aug

    monkeypatch.setattr(ssd_aug, "sample_zoom_out", lambda h, w, **_: (0, 0, w, h))
    monkeypatch.setattr(photometric, "sample_distort", lambda **_: photometric.DistortParams([]))
    wrong = draw_statistics(FastSSDAugment(320), photos, NEW_SAMPLES // 2, seed0=20_000)
    failures = ks_failures(reference, wrong)
    assert {"fill_fraction", "chroma_ratio"} <= failures.keys(), failures


if __name__ == "__main__" and "--write-fixture" in sys.argv:
    from pocketdet.data.transforms import ssd_reference_transforms

    torch.set_num_threads(1)
    stats = draw_statistics(ssd_reference_transforms(320), load_photos(), REF_SAMPLES, seed0=0)
    np.savez_compressed(FIXTURE, **{k: v.astype(np.float32) for k, v in stats.items()})
    print(f"wrote {FIXTURE}: " + ", ".join(f"{k}={len(v)}" for k, v in stats.items()))
