import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"

# 2-core CI machine: keep intra-op threads fixed so runs are comparable and workers don't oversubscribe.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): export,
    quantization and the torch references then compute the same on every machine, and a loaded 2-core runner is
    not oversubscribed (a second thread made those modules ~10x slower under load)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def coco128_yaml() -> Path:
    return DATA / "coco128.yaml"


@pytest.fixture(scope="session")
def demo_yaml() -> Path:
    return DATA / "demo.yaml"


@pytest.fixture
def tiny_coco(tmp_path, data_dir):
    """A 4-image COCO-format copy of real coco128 photos, in tmp_path, that a test may break."""
    import json
    import shutil

    src = json.loads((data_dir / "coco128/annotations/instances_train2017.json").read_text())
    images = src["images"][:4]
    ids = {im["id"] for im in images}
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for im in images:
        shutil.copy(data_dir / "coco128/images/train2017" / im["file_name"], img_dir / im["file_name"])
    ann = {"images": images, "annotations": [a for a in src["annotations"] if a["image_id"] in ids],
           "categories": src["categories"]}
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(ann))
    return img_dir, ann_file, ann


# A committed SSDLite-Small fitted to 8 real coco128 photos (tools/make_fitted_fixture.py): tests that need a
# model that detects something load it instead of training, so they do not depend on how far N optimizer steps
# get on a given CPU.
FITTED = Path(__file__).resolve().parent / "fixtures" / "fitted"


@pytest.fixture(scope="session")
def fitted_ckpt() -> Path:
    return FITTED / "ssdlite_small_fit.pt"


@pytest.fixture(scope="session")
def fitted_yaml() -> Path:
    """Dataset YAML whose train and val splits are the 8 photos the fixture was fitted on."""
    return FITTED / "fit.yaml"


@pytest.fixture(scope="session")
def fitted_photos() -> list[Path]:
    import json

    names = json.loads((FITTED / "fit.json").read_text())["photos"]
    return [DATA / "coco128" / "images" / "train2017" / n for n in names]
