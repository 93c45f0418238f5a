"""`pocketdet predict` sources and outputs: unique names per source, JPEG by default, `.txt` lists, videos
(written here with PyAV), `--stride` / `--max-frames`, unreadable files, and the read/infer/write overlap."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pocketdet.cli import app
from pocketdet.sources import SourceError, collect_sources, unique_names

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "data" / "coco128" / "images" / "val2017").glob("*.jpg"))[:3]
MODEL = "ssdlite_mnv3_small_320"  # random weights: these tests are about files, not detections


def predict(*args):
    return runner.invoke(app, ["predict", MODEL, *map(str, args), "--threads", "1"])


def test_same_file_name_in_two_folders_gives_two_outputs(tmp_path):
    for d, photo in (("dupA", PHOTOS[0]), ("dupB", PHOTOS[1])):
        (tmp_path / d).mkdir()
        shutil.copy(photo, tmp_path / d / "img.jpg")
    out = tmp_path / "out"
    r = predict(tmp_path / "dupA", tmp_path / "dupB", "--out", out, "--conf", "0")
    assert r.exit_code == 0, r.output
    assert "2 images" in r.output
    res = json.loads((out / "predictions.json").read_text())
    assert [e["image"] for e in res] == [str(tmp_path / "dupA" / "img.jpg"), str(tmp_path / "dupB" / "img.jpg")]
    assert [e["output"] for e in res] == ["img.jpg", "img_1.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["img.jpg", "img_1.jpg", "predictions.json"]
    # each output is its own photo (annotated): the two differ and have their source's size
    a, b = Image.open(out / "img.jpg"), Image.open(out / "img_1.jpg")
    assert a.format == "JPEG" and a.size == Image.open(PHOTOS[0]).size and b.size == Image.open(PHOTOS[1]).size


def test_png_on_request(tmp_path):
    r = predict(PHOTOS[0], "--out", tmp_path, "--png")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / f"{PHOTOS[0].stem}.png").format == "PNG"
    assert json.loads((tmp_path / "predictions.json").read_text())[0]["output"] == f"{PHOTOS[0].stem}.png"


def test_unique_names_case_insensitive():
    assert unique_names(["img", "img", "IMG", "img_1", "a/img"]) == ["img", "img_1", "IMG_2", "img_1_1", "a/img"]


def test_txt_list_and_empty_sources_exit_alike(tmp_path):
    (tmp_path / "photos").mkdir()
    for p in PHOTOS[:2]:
        shutil.copy(p, tmp_path / "photos" / p.name)
    good = tmp_path / "list.txt"
    good.write_text(f"# two photos\nphotos/{PHOTOS[0].name}\n\n{tmp_path / 'photos' / PHOTOS[1].name}\n")
    r = predict(good, "--out", tmp_path / "o1")
    assert r.exit_code == 0 and "2 images" in r.output, r.output
    empty_list = tmp_path / "empty.txt"
    empty_list.write_text("# nothing\n")
    (tmp_path / "empty_dir").mkdir()
    for src in (empty_list, tmp_path / "empty_dir"):
        r = predict(src, "--out", tmp_path / "o2")
        assert r.exit_code == 2 and "no images found" in r.output and str(src.name) in r.output, r.output
        assert "Traceback" not in r.output
    missing = tmp_path / "missing.txt"
    missing.write_text("photos/nope.jpg\n")
    r = predict(missing, "--out", tmp_path / "o3")
    assert r.exit_code == 2 and "missing.txt" in r.output and "nope.jpg" in r.output, r.output


def test_unreadable_images_are_counted_and_skipped(tmp_path):
    shutil.copy(PHOTOS[0], tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    r = predict(tmp_path, "--out", tmp_path / "out")
    assert r.exit_code == 0 and "1 images" in r.output and "1 unreadable" in r.output, r.output
    r = predict(tmp_path / "bad.jpg", "--out", tmp_path / "out2")
    assert r.exit_code == 2 and "nothing could be read" in r.output, r.output


def write_video(path: Path, n: int = 12, size=(160, 120)) -> list[np.ndarray]:
    """A short MPEG-4 clip of a real photo panning; returns the frames written."""
    import av

    photo = np.asarray(Image.open(PHOTOS[0]).convert("RGB"))
    frames = [np.ascontiguousarray(photo[100:100 + size[1], 8 * i:8 * i + size[0]]) for i in range(n)]
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return frames


def test_video_source_with_stride_and_max_frames(tmp_path):
    import av

    clip = tmp_path / "clip.mp4"
    write_video(clip)
    out = tmp_path / "out"
    r = predict(clip, PHOTOS[0], "--out", out, "--stride", "2", "--max-frames", "4", "--conf", "0")
    assert r.exit_code == 0, r.output
    assert "1 images, 4 video frames" in r.output
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [e["frame"] for e in lines] == [0, 2, 4, 6]
    assert all(e["source"] == str(clip) and "detections" in e for e in lines)
    assert lines[1]["time_s"] == pytest.approx(0.2)
    with av.open(str(out / "clip.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert float(c.streams.video[0].average_rate) == pytest.approx(5.0)  # 10 fps / stride 2
    assert len(decoded) == 4 and decoded[0].shape == (120, 160, 3)
    assert (out / f"{PHOTOS[0].stem}.jpg").is_file()


def test_video_in_folder_and_bad_sources(tmp_path):
    write_video(tmp_path / "a.mp4", n=3)
    shutil.copy(PHOTOS[0], tmp_path / "a.jpg")  # same stem as the video: outputs must not collide
    items = collect_sources([str(tmp_path)])
    assert [(i.kind, i.out_name) for i in items] == [("image", "a"), ("video", "a_1")]
    r = predict(tmp_path, "--out", tmp_path / "out")
    assert r.exit_code == 0 and "1 images, 3 video frames" in r.output, r.output
    assert (tmp_path / "out" / "a_1.mp4").is_file() and (tmp_path / "out" / "a.jpg").is_file()
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    r = predict(tmp_path / "broken.mp4", "--out", tmp_path / "out2")
    assert r.exit_code == 2 and "broken.mp4" in r.output and "Traceback" not in r.output, r.output
    r = predict("7", "--out", tmp_path / "out3")  # camera index without such a device
    assert r.exit_code == 2 and "camera" in r.output and "Traceback" not in r.output, r.output
    with pytest.raises(SourceError, match="nowhere"):
        collect_sources([str(tmp_path / "nowhere" / "*.jpg")])


def test_overlap_gives_the_sequential_results(tmp_path):
    """Same weights (a saved checkpoint: a zoo name draws new random weights per run), same JSON."""
    import torch

    from pocketdet.api import build, load_config
    from pocketdet.convert.common import save_converted

    torch.manual_seed(0)
    ckpt = save_converted(build(MODEL), tmp_path / "m.pt", config=load_config(MODEL))
    args = [*PHOTOS, "--conf", "0"]
    r = runner.invoke(app, ["predict", str(ckpt), *map(str, args), "--out", str(tmp_path / "seq"), "--no-overlap"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", str(ckpt), *map(str, args), "--out", str(tmp_path / "par")])
    assert r.exit_code == 0, r.output
    seq, par = (json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("seq", "par"))
    assert seq == par and len(seq) == 3 and sum(len(e["detections"]) for e in seq) > 0


def test_prefetch_hands_errors_to_the_consumer():
    from pocketdet.predict_run import prefetch

    def gen():
        yield 1
        yield 2
        raise RuntimeError("decoder broke")

    got = []
    with pytest.raises(RuntimeError, match="decoder broke"):
        for x in prefetch(gen(), depth=1):
            got.append(x)
    assert got == [1, 2]


def test_conf_out_of_range_is_refused(tmp_path):
    r = predict(PHOTOS[0], "--out", tmp_path, "--conf", "1.5")
    assert r.exit_code == 2 and "--conf" in r.output and "less than or equal to 1" in r.output, r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "predictions.json").exists()
