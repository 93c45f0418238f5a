"""One detector shared by several threads (issue 13): 200 predictions from 4 threads give exactly the
sequential results, for the ONNX Runtime `Detector` and for the torch model's `predict` under no_grad."""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketdet.config import load_config
from pocketdet.deploy import npops
from pocketdet.deploy.trained_like import make_trained_like
from pocketdet.deploy.export import export_onnx
from pocketdet.deploy.runtime import Detector
from pocketdet.models import build_model

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "data" / "coco128" / "images" / "val2017").glob("*.jpg"))[:8]
CALIB = sorted((ROOT / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:8]
N_CALLS, N_THREADS = 200, 4


@pytest.fixture(scope="module")
def ssd():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield make_trained_like(build_model(load_config("ssdlite_mnv3_small_320").model), CALIB)
    torch.set_num_threads(prev)


def inputs() -> list:
    """Paths and arrays mixed, so that decoding runs concurrently too."""
    arrays = [npops.load_rgb(p) for p in PHOTOS]
    return [PHOTOS[i % len(PHOTOS)] if i % 2 else arrays[i % len(PHOTOS)] for i in range(N_CALLS)]


def run_threads(fn, xs) -> list:
    with ThreadPoolExecutor(N_THREADS) as pool:
        return list(pool.map(fn, xs))


def test_detector_shared_by_threads(ssd, tmp_path):
    det = Detector(export_onnx(ssd, tmp_path / "ssd.onnx"), threads=1)
    xs = inputs()
    sequential = [det.predict(x) for x in xs[:len(PHOTOS) * 2]]  # every distinct input once (period 16)
    parallel = run_threads(det.predict, xs)
    assert len(parallel) == N_CALLS and sum(len(r["scores"]) for r in sequential) > 0
    for i, r in enumerate(parallel):
        ref = sequential[i % len(sequential)]
        for k in ("boxes", "scores", "labels"):
            assert np.array_equal(r[k], ref[k]), (i, k)
        assert r["names"] == ref["names"]


def test_torch_predict_shared_by_threads(ssd):
    xs = inputs()

    def predict(x):
        with torch.no_grad():
            return ssd.predict(x)[0]

    sequential = [predict(x) for x in xs[:len(PHOTOS) * 2]]
    parallel = run_threads(predict, xs)
    assert len(parallel) == N_CALLS and sum(len(r["scores"]) for r in sequential) > 0
    for i, r in enumerate(parallel):
        ref = sequential[i % len(sequential)]
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(r[k], ref[k]), (i, k)
    assert not ssd.training


def test_resize_tap_cache_under_threads():
    """More image sizes than the tap cache keeps (it clears itself past 128), from 4 threads: every resize
    equals its sequential result (a lookup after another thread's clear used to be possible)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (6 + i % 7, 40 + i, 3), dtype=np.uint8) for i in range(300)]
    sequential = [npops.resize_chw(im, 16) for im in images]
    parallel = run_threads(lambda im: npops.resize_chw(im, 16), images)
    assert all(np.array_equal(a, b) for a, b in zip(parallel, sequential))
