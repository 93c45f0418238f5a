"""AP where it runs (issue 15): `val` and `bench --data` evaluate every model form through its deployed path,
on the fitted fixture model and the real photos it was fitted to."""
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from pocketdet.cli import app
from pocketdet.deploy.bench_checks import ap_gate

runner = CliRunner()
AP_TOL = 0.001  # 0.1 AP point on the 0..1 scale of the stats


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread per module


@pytest.fixture(scope="module")
def exports(fitted_ckpt, tmp_path_factory):
    from pocketdet.deploy.export import export_model

    d = tmp_path_factory.mktemp("forms")
    onnx_path, _ = export_model(str(fitted_ckpt), d / "fit.onnx", verify=False)
    out = {"onnx": onnx_path}
    try:
        import ncnn  # noqa: F401
        import pnnx  # noqa: F401
    except ImportError:
        return out
    out["ncnn"], _ = export_model(str(fitted_ckpt), d / "fit", format="ncnn", verify=False)
    return out


def _val(model, data, tmp_path, *extra) -> dict:
    out = tmp_path / "stats.json"
    r = runner.invoke(app, ["val", str(model), "--data", str(data), "--workers", "0", "--threads", "1",
                            "--json", str(out), *extra])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


def test_val_gives_the_torch_ap_for_every_fp32_form(fitted_ckpt, fitted_yaml, exports, tmp_path):
    ref = _val(fitted_ckpt, fitted_yaml, tmp_path)
    assert ref["format"] == "torch" and ref["AP50"] > 0.5  # the fixture detects its photos
    nameless = tmp_path / "model_without_suffix"  # recognised as ONNX by content, not by name
    shutil.copy(exports["onnx"], nameless)
    forms = {"onnx": exports["onnx"], "nameless": nameless}
    if "ncnn" in exports:
        forms["ncnn"] = exports["ncnn"]
    for label, path in forms.items():
        st = _val(path, fitted_yaml, tmp_path)
        assert st["format"] == ("ncnn" if label == "ncnn" else "onnx")
        assert set(st) == set(ref)
        for k in ("AP", "AP50", "AP75"):
            assert abs(st[k] - ref[k]) <= AP_TOL, (label, k, st[k], ref[k])
    if "ncnn" not in exports:
        pytest.skip("ncnn/pnnx not installed: ncnn form not evaluated")


def test_val_refuses_a_runtime_that_does_not_fit_the_file(exports, fitted_yaml):
    r = runner.invoke(app, ["val", str(exports["onnx"]), "--data", str(fitted_yaml), "--runtime", "ncnn"])
    assert r.exit_code != 0 and "is an ONNX export" in r.output and "--runtime onnx" in r.output


@pytest.mark.slow
def test_bench_data_reports_ap_per_format_and_gates_on_the_drop(fitted_ckpt, fitted_yaml, tmp_path, monkeypatch):
    """`bench CKPT --data`: AP / AP50 per runtime and format, each format's difference from torch fp32,
    fp32 exports within 0.1 AP of torch, int8 reports its drop, and `--max-ap-drop` exits 1 exactly when a
    format falls further than allowed."""
    from pocketdet.deploy.bench import BenchRow

    monkeypatch.chdir(tmp_path)  # bench writes runs/bench under the working directory
    runtimes = ["torch", "onnxruntime", "onnxruntime-int8"]
    try:
        import ncnn  # noqa: F401
        import pnnx  # noqa: F401
        runtimes.append("ncnn")
    except ImportError:
        pass
    args = ["bench", str(fitted_ckpt), "--data", str(fitted_yaml), "--threads", "1", "--runs", "1", "--warmup", "0",
            "--md", str(tmp_path / "B.md"), "--png", str(tmp_path / "p.png"), "--max-ap-drop", "0.1"]
    for rt in runtimes:
        args += ["--runtime", rt]
    r = runner.invoke(app, args)
    rows = [BenchRow(**d) for d in json.loads((tmp_path / "runs/bench/rows.json").read_text())]
    by_rt = {row.runtime: row for row in rows}
    assert set(by_rt) == set(runtimes) and all(row.ap is not None and row.forward for row in rows), r.output
    torch_ap = by_rt["torch"].ap
    assert torch_ap > 50
    for rt in ("onnxruntime", "ncnn"):
        if rt in by_rt:
            assert abs(by_rt[rt].ap - torch_ap) <= 0.1, (rt, by_rt[rt].ap, torch_ap)
            assert f"{by_rt[rt].ap - torch_ap:+.2f} AP vs torch fp32" in r.output
    drop = torch_ap - by_rt["onnxruntime-int8"].ap
    assert f"onnxruntime-int8: AP {by_rt['onnxruntime-int8'].ap:.2f}" in r.output
    # the gate fails exactly when some format is more than 0.1 AP below torch (here: int8 or nothing)
    assert r.exit_code == (1 if drop > 0.1 else 0), r.output
    assert ("AP gate: " in r.output) == (drop > 0.1)
    assert ap_gate(rows, drop + 0.01) == [] and len(ap_gate(rows, max(drop - 0.01, 0))) == (drop > 0.01)
    md = (tmp_path / "B.md").read_text()
    assert "measured AP / AP50" in md and "Difference from torch fp32" in md and (tmp_path / "p.png").exists()


def test_max_ap_drop_needs_data():
    r = runner.invoke(app, ["bench", "ssdlite_mnv3_small_320", "--max-ap-drop", "1"])
    assert r.exit_code == 2 and "--max-ap-drop needs --data" in r.output


def test_a_quantized_checkpoint_runs_as_the_int8_model_it_holds(fitted_ckpt, exports, tmp_path):
    """`val q.pt` of a `pocketdet quantize` checkpoint evaluates its stored ONNX model (not the float weights
    beside it); `--runtime torch` asks for the float weights."""
    from pocketdet.model_forms import open_model

    ck = torch.load(fitted_ckpt, weights_only=True)
    onnx_bytes = bytearray(exports["onnx"].read_bytes())
    ck["quant"] = {"method": "ptq", "onnx": torch.frombuffer(onnx_bytes, dtype=torch.uint8)}
    q = tmp_path / "q.pt"
    torch.save(ck, q)
    form = open_model(q)
    assert form.runtime == "onnx" and "stored int8 ONNX" in form.detector.source
    assert open_model(q, "torch").runtime == "torch"
