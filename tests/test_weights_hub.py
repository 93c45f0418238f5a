"""Official weights by name (`NAME:coco`) against a loopback HTTP server serving files written by pocketdet's
own Paddle writers in the seed's formats: download, checks, cache, conversion, errors, CLI."""
from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch

import pocketdet
from pocketdet import hub
from pocketdet.api import build, split_model_spec
from pocketdet.config import load_config
from pocketdet.convert.paddle import paddle_static_arrays
from pocketdet.convert.paddle_io import write_pdparams, write_persistables_tar

from loopback import LoopbackServer

SEED_ROWS = ["ssdlite_mnv3_small_320", "ssdlite_mnv3_small_320_quant", "ssdlite_mnv3_large_320",
             "ssdlite_mnv3_large_320_quant", "cascade_rcnn_mnv3_large_fpn_320", "cascade_rcnn_mnv3_large_fpn_640",
             "yolov3_mnv3_large_320", "yolov3_mnv3_large_320_prune_fpgm"]
# what PaddleSlim's QAT passes add to a static program's persistables (the seed's *_quant.tar)
QAT_EXTRAS = ["image.scale", "conv1_bn.tmp_3@scale", "conv2_expand_bn.tmp_2.quant_dequant.scale", "state_0",
              "accum_0", "scale_state@_3", "conv1_weights.scale"]


def seed_file(model, name: str, tmp: Path, qat: bool = False, dtype=np.float32) -> bytes:
    """The bytes of `model`'s weights in the format the seed links for `name` (pickle or persistables tar)."""
    entry = load_config(name).weights["coco"]
    arrays = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in paddle_static_arrays(model).items()}
    if qat:
        arrays.update({k: np.array([0.5], np.float32) for k in QAT_EXTRAS})
    out = tmp / f"{name}.{entry.format}"
    if entry.format == "pdparams":
        write_pdparams(arrays, out)
    else:
        write_persistables_tar(arrays, out, folder=name)
    return out.read_bytes()


def url_path(name: str, tag: str = "coco") -> str:
    return urlsplit(load_config(name).weights[tag].url).path


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """An empty cache in tmp_path and official URLs pointed at a loopback server."""
    home = tmp_path / "home"
    monkeypatch.setenv("POCKETDET_HOME", str(home))

    def serve(files: dict[str, bytes], **kw) -> LoopbackServer:
        srv = LoopbackServer(files, **kw)
        monkeypatch.setenv("POCKETDET_MIRROR", srv.base)
        return srv
    return home, serve


def cache_files(home: Path) -> list[str]:
    return sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file()) if home.exists() else []


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build("ssdlite_mnv3_small_320").eval()


@pytest.fixture(scope="module")
def small_bytes(small_model, tmp_path_factory):
    return seed_file(small_model, "ssdlite_mnv3_small_320", tmp_path_factory.mktemp("seed"))


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa if not k.endswith("tracked"))


def test_spec_parsing(tmp_path):
    assert split_model_spec("ssdlite_mnv3_small_320:coco") == ("ssdlite_mnv3_small_320", "coco")
    assert split_model_spec("ssdlite_mnv3_small_320") == ("ssdlite_mnv3_small_320", None)
    assert split_model_spec("not_a_zoo_name:coco") == ("not_a_zoo_name:coco", None)
    odd = tmp_path / "ssdlite_mnv3_small_320:coco"  # an existing file wins over the NAME:TAG reading
    odd.write_bytes(b"x")
    assert split_model_spec(odd)[1] is None


def test_every_seed_row_names_its_official_file():
    for name in SEED_ROWS:
        entry = load_config(name).weights["coco"]
        assert entry.url.startswith("https://paddlemodels.bj.bcebos.com/object_detection/"), name
        assert entry.box_ap == load_config(name).reference["box_ap"], name
    assert load_config("yolov3_mnv3_large_320").weights["coco_dygraph"].url.startswith("https://paddledet.")


def test_download_convert_cache_and_no_second_request(hub_env, small_model, small_bytes):
    home, serve = hub_env
    path = url_path("ssdlite_mnv3_small_320")
    with serve({path: small_bytes}) as srv:
        m = pocketdet.load("ssdlite_mnv3_small_320:coco")
        assert srv.requests == [path]
        assert same_weights(m, small_model) and m.class_names[0] == "person" and not m.training
        files = cache_files(home)
        assert files[0] == "converted/ssdlite_mnv3_small_320-coco-" + hashlib.sha256(small_bytes).hexdigest()[:16] \
            + f"-c{hub.CONVERTER_VERSION}.pt"
        assert files[1] == "downloads/ssdlite_mobilenet_v3_small.pdparam" and len(files) == 2  # no .part left
        m2 = pocketdet.build("ssdlite_mnv3_small_320", weights="coco")
        assert srv.requests == [path]  # the second call makes no request
        assert same_weights(m2, small_model)


def test_file_placed_by_hand_makes_no_request(hub_env, small_model, small_bytes, tmp_path):
    home, serve = hub_env
    (home / "downloads").mkdir(parents=True)
    (home / "downloads" / "ssdlite_mobilenet_v3_small.pdparam").write_bytes(small_bytes)
    with serve({}) as srv:
        assert same_weights(pocketdet.load("ssdlite_mnv3_small_320:coco"), small_model)
        assert srv.requests == []
    # or passed directly: NAME:FILE converts a Paddle file (cached under its hash)
    f = tmp_path / "mine.pdparam"
    f.write_bytes(small_bytes)
    assert same_weights(pocketdet.load(f"ssdlite_mnv3_small_320:{f}"), small_model)


def test_truncated_download_is_refused_and_not_cached(hub_env, small_bytes):
    home, serve = hub_env
    path = url_path("ssdlite_mnv3_small_320")
    with serve({path: small_bytes}) as srv:
        srv.truncate.add(path)
        with pytest.raises(hub.WeightsError) as e:
            pocketdet.load("ssdlite_mnv3_small_320:coco")
    msg = str(e.value)
    assert "\n" not in msg and srv.base + path in msg and "truncated" in msg and "--weights PATH" in msg
    assert cache_files(home) == []


@pytest.mark.parametrize("field", ["sha256", "size"])
def test_wrong_hash_or_size_is_refused_and_not_cached(hub_env, small_bytes, monkeypatch, field):
    home, serve = hub_env
    real = hub.weights_entry
    bad = {"sha256": hashlib.sha256(b"another file").hexdigest(), "size": len(small_bytes) + 1}[field]
    monkeypatch.setattr(hub, "weights_entry", lambda n, t: real(n, t).model_copy(update={field: bad}))
    with serve({url_path("ssdlite_mnv3_small_320"): small_bytes}):
        with pytest.raises(hub.WeightsError, match=f"{'sha256' if field == 'sha256' else 'bytes, expected'}") as e:
            pocketdet.load("ssdlite_mnv3_small_320:coco")
    assert "\n" not in str(e.value) and "--weights PATH" in str(e.value)
    assert cache_files(home) == []
    # the right hash passes
    good = {"sha256": hashlib.sha256(small_bytes).hexdigest(), "size": len(small_bytes)}[field]
    monkeypatch.setattr(hub, "weights_entry", lambda n, t: real(n, t).model_copy(update={field: good}))
    with serve({url_path("ssdlite_mnv3_small_320"): small_bytes}):
        pocketdet.load("ssdlite_mnv3_small_320:coco")


def test_refused_offline_unknown_tag_and_wrong_file(hub_env, small_bytes, monkeypatch):
    home, serve = hub_env
    with serve({}) as srv:  # 404
        with pytest.raises(hub.WeightsError, match=r"HTTP 404.*--weights PATH") as e:
            pocketdet.load("ssdlite_mnv3_small_320:coco")
        assert srv.base in str(e.value)
    closed = LoopbackServer({}).httpd
    port = closed.server_address[1]
    closed.server_close()  # nothing listens on that port any more: connection refused, as offline
    monkeypatch.setenv("POCKETDET_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(hub.WeightsError, match=r"download failed.*offline\?.*--weights PATH"):
        pocketdet.load("ssdlite_mnv3_small_320:coco")
    with pytest.raises(hub.WeightsError, match=r"no official weights tagged 'voc' \(known: coco\)"):
        pocketdet.load("ssdlite_mnv3_small_320:voc")
    with serve({url_path("ssdlite_mnv3_small_320"): b"\x80\x02}q\x00."}):  # an empty pickle: not the model
        with pytest.raises(hub.WeightsError, match="is .*ssdlite_mobilenet_v3_small.pdparam the ssdlite"):
            pocketdet.load("ssdlite_mnv3_small_320:coco")
    assert cache_files(home) == []  # the unusable download is removed too: the next call fetches again


def test_cli_predict_with_official_name_and_one_line_error(hub_env, small_bytes, tmp_path, data_dir):
    from typer.testing import CliRunner

    from pocketdet.cli import app
    home, serve = hub_env
    photo = str(data_dir / "coco128/images/val2017/000000000139.jpg")
    with serve({url_path("ssdlite_mnv3_small_320"): small_bytes}) as srv:
        r = CliRunner().invoke(app, ["predict", "ssdlite_mnv3_small_320:coco", photo, "--out", str(tmp_path / "p")])
        assert r.exit_code == 0, r.output
        assert list((tmp_path / "p").glob("000000000139.*")) and len(srv.requests) == 1
    r = CliRunner().invoke(app, ["info", "ssdlite_mnv3_large_320:coco"])  # server gone: offline
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit)
    err = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "ssdlite_mobilenet_v3_large.pdparam" in err[0] and "--weights PATH" in err[0]


@pytest.mark.slow
def test_all_seed_rows_resolve_end_to_end(hub_env, tmp_path):
    """Every seed row's `NAME:coco`, served in its own format: pickles, persistables tars, QAT tars with
    PaddleSlim's scale/state variables, and a pruned YOLOv3 whose widths differ from the zoo entry's."""
    home, serve = hub_env
    files, expected = {}, {}
    torch.manual_seed(0)
    for name in SEED_ROWS:
        if name == "yolov3_mnv3_large_320_prune_fpgm":  # other widths than the YAML's: read from the file
            cfg = load_config(name).model
            widths = [[w // 2 for w in row] for row in cfg["block_widths"]]
            from pocketdet.models import build_model
            model = build_model({**cfg, "block_widths": widths}).eval()
        else:
            model = build(name).eval()
        # float16 halves the bytes served (the converter widens exactly); the comparison casts likewise
        files[url_path(name)] = seed_file(model, name, tmp_path, qat=name.endswith("_quant"), dtype=np.float16)
        expected[name] = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    with serve(files, max_requests=len(files) + 2) as srv:
        for name in SEED_ROWS:
            m = pocketdet.load(f"{name}:coco")
            sd = m.state_dict()
            assert sd.keys() == expected[name].keys(), name
            for k, v in expected[name].items():
                if not k.endswith("num_batches_tracked"):
                    assert torch.equal(sd[k], v), f"{name}: {k}"
            if name.endswith("prune_fpgm"):
                assert m.block_widths == widths
            del m
        assert sorted(srv.requests) == sorted(files)  # one request per file


@pytest.mark.parametrize("verb", [["predict", "{m}", "x.jpg"], ["val", "{m}", "--data", "{y}"],
                                  ["export", "{m}", "-o", "{t}/m.onnx"], ["info", "{m}"],
                                  ["bench", "{m}", "--runtime", "torch", "--md", "{t}/b.md", "--png", ""],
                                  ["quantize", "{m}", "--data", "{y}", "-o", "{t}/q.pt"],
                                  ["prune", "{m}", "-o", "{t}/p.pt"],
                                  ["distill", "--teacher", "{m}", "--student", "{m}", "--data", "{y}", "--iters", "1",
                                   "-o", "{t}/d.pt"]])
def test_every_model_verb_resolves_through_the_one_function(verb, monkeypatch, tmp_path, demo_yaml, data_dir):
    """predict, val, export, info, bench, quantize, prune and distill all hand NAME:coco to
    api.model_from_name_or_checkpoint (the one resolution function) and report its error in one line."""
    from typer.testing import CliRunner

    import pocketdet.api as api
    from pocketdet.cli import app
    from pocketdet.checkpoint import CheckpointError
    seen = []

    def fake(spec):
        seen.append(str(spec))
        raise CheckpointError(f"sentinel: {spec}")
    monkeypatch.setattr(api, "model_from_name_or_checkpoint", fake)
    photo = str(data_dir / "coco128/images/val2017/000000000139.jpg")
    args = [a.format(m="ssdlite_mnv3_small_320:coco", y=demo_yaml, t=tmp_path) for a in verb]
    args = [photo if a == "x.jpg" else a for a in args]
    r = CliRunner().invoke(app, args)
    assert seen and seen[0] == "ssdlite_mnv3_small_320:coco", r.output
    assert r.exit_code == 2 and "sentinel: ssdlite_mnv3_small_320:coco" in r.output and "Traceback" not in r.output


def test_train_weights_coco_downloads_before_training_and_maps_rows(hub_env, small_model, small_bytes):
    """`pocketdet train NAME --weights coco`: the file is fetched and converted when the option is read (before
    any training), and the init hook maps the dataset's classes onto it."""
    from pocketdet.cli import _weights_init
    from pocketdet.init_weights import class_rows
    home, serve = hub_env
    with serve({url_path("ssdlite_mnv3_small_320"): small_bytes}) as srv:
        init = _weights_init("ssdlite_mnv3_small_320", "coco")
        assert len(srv.requests) == 1
    model = build("ssdlite_mnv3_small_320", class_names=["thing", "person"])
    init(model)  # server gone: the hook needs nothing from the network
    key = "ssd_head.scores2.pw_conv.weight"
    g = class_rows(model)[key].groups
    got, src = model.state_dict()[key].reshape(g, 3, -1), small_model.state_dict()[key].reshape(g, 81, -1)
    assert torch.equal(got[:, 2], src[:, 1]) and torch.equal(got[:, 0], src[:, 0])  # person, background


def test_pretrained_url_uses_the_same_all_or_nothing_downloader(tmp_path, monkeypatch, small_model):
    """`--pretrained URL` (load_backbone_weights) goes through pocketdet/download.py too: a cut body leaves no
    file in torch hub's cache and says so in one line; a whole one is cached, loaded and not fetched again."""
    from pocketdet.convert import load_backbone_weights
    from pocketdet.download import DownloadError

    from pocketdet.convert.paddle_names import to_paddle_dygraph

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch/hub/checkpoints"
    backbone = {to_paddle_dygraph(k[len("backbone."):]): v.numpy() for k, v in small_model.state_dict().items()
                if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    write_pdparams(backbone, tmp_path / "b.pdparams")
    with LoopbackServer({"/w/small.pdparams": (tmp_path / "b.pdparams").read_bytes()}) as srv:
        srv.truncate.add("/w/small.pdparams")
        with pytest.raises(DownloadError, match="truncated") as e:
            load_backbone_weights(build("ssdlite_mnv3_small_320"), srv.base + "/w/small.pdparams")
        assert "\n" not in str(e.value) and not any(cache.glob("*"))
        srv.truncate.clear()
        for _ in range(2):
            m = build("ssdlite_mnv3_small_320")
            report = load_backbone_weights(m, srv.base + "/w/small.pdparams")
            assert report.loaded and torch.equal(m.backbone.conv1.conv.weight, small_model.backbone.conv1.conv.weight)
        assert [p.name for p in cache.glob("*")] == ["small.pdparams"] and len(srv.requests) == 2
