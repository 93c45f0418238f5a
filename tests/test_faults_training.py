"""Faults during training (issue 13 part 2, issue 21.3): signals, SIGKILL, a full disk, non-finite losses and
devices that are not there. Real coco128 photos (`tiny_coco`), a few iterations of SSDLite-MNV3-Small."""
import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pocketdet.cli import app
from pocketdet.config import apply_overrides, load_config
from pocketdet.data import CocoDetection
from pocketdet import checkpoint as ckpt
from pocketdet.checkpoint import CheckpointError, load_checkpoint, save_atomic
from pocketdet.engine.trainer import TrainingError, TrainOptions, train

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
ITERS = 6


@pytest.fixture
def data_yaml(tmp_path, tiny_coco):
    img_dir, ann_file, _ = tiny_coco
    p = tmp_path / "d.yaml"
    p.write_text(f"train: {{images: {img_dir}, annotations: {ann_file}}}\n")
    return p


def _train_args(data_yaml, out, *extra, workers=0):
    return ["train", "ssdlite_mnv3_small_320", "--data", str(data_yaml), "--out", str(out), "--iters", str(ITERS),
            "--batch-size", "2", "--workers", str(workers), "--device", "cpu", "--no-eval",
            "--set", "train.checkpoint_interval=1", "--set", "train.schedule.warmup_iters=2", *extra]


def _spawn(args, log: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "pocketdet.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT, **popen)


def _wait(pred, proc, timeout=1200.0, what=""):  # generous: only a hang should hit it
    end = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, f"training ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def _iteration(path: Path) -> int:
    return int(load_checkpoint(path)["iteration"])


@pytest.mark.slow
def test_sigkill_and_sigterm_then_resume_equals_a_straight_run(tmp_path, data_yaml):
    """SIGKILL mid-run leaves a loadable last.pt (at most the current iteration lost); SIGTERM to the whole
    process group (as `scancel` sends it; data loader workers included) stops at the end of the iteration with a
    checkpoint and exit code 143; resuming twice gives the straight run's weights."""
    log = tmp_path / "log.txt"
    straight = _spawn(_train_args(data_yaml, tmp_path / "a"), log)
    assert straight.wait(timeout=1200) == 0, log.read_text()[-3000:]

    out = tmp_path / "b"
    last = out / "last.pt"
    p = _spawn(_train_args(data_yaml, out), log)
    _wait(last.exists, p, what="the first checkpoint")
    time.sleep(0.3)  # a checkpoint per iteration: the kill may land in a save or between two
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    k1 = _iteration(last)
    assert 1 <= k1 < ITERS, f"the SIGKILL came too late (iteration {k1}): nothing was tested"

    p = _spawn(_train_args(data_yaml, out, "--resume", "auto", workers=2), log, start_new_session=True)
    before = last.stat().st_mtime_ns
    _wait(lambda: last.stat().st_mtime_ns != before, p, what="a checkpoint after resuming")
    os.killpg(p.pid, signal.SIGTERM)
    assert p.wait(timeout=600) == 143, log.read_text()[-3000:]
    k2 = _iteration(last)
    assert k1 < k2 < ITERS, (k1, k2)
    assert '"interrupted": "SIGTERM"' in log.read_text()
    assert not list(out.glob(".last.pt.*.tmp"))  # a clean stop leaves no temp file

    p = _spawn(_train_args(data_yaml, out, "--resume", "auto"), log)
    assert p.wait(timeout=1200) == 0, log.read_text()[-3000:]
    assert not list(out.glob(".*.tmp"))  # what a SIGKILL may leave mid-save is cleaned up on resume
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(last)
    assert a["iteration"] == b["iteration"] == ITERS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def _save_forever(path, payloads):
    i = 0
    while True:
        save_atomic(payloads[i % 2], path)
        i += 1


def test_sigkill_during_saves_never_leaves_an_unreadable_file(tmp_path):
    """A process saving ~16 MB checkpoints back to back, SIGKILLed at varied moments until three kills have
    landed inside a save (a temp file is left): last.pt is always one complete checkpoint (os.replace of an
    fsynced temp file), never a torn one."""
    path = tmp_path / "last.pt"
    payloads = [{"model": {"w": torch.full((4_000_000,), float(v))}, "iteration": v} for v in (1, 2)]
    ctx = multiprocessing.get_context("fork")
    mid_save = 0
    for attempt in range(30):
        proc = ctx.Process(target=_save_forever, args=(path, payloads), daemon=True)
        proc.start()
        end = time.monotonic() + 60
        while not path.exists() and time.monotonic() < end:
            time.sleep(0.005)
        time.sleep(0.02 + 0.037 * attempt % 0.4)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        ck = load_checkpoint(path)
        assert torch.equal(ck["model"]["w"], payloads[ck["iteration"] - 1]["model"]["w"])
        torn = list(tmp_path.glob(".last.pt.*.tmp"))  # what a SIGKILL inside a save leaves is only the temp file
        mid_save += bool(torn)
        for tmp in torn:
            tmp.unlink()
        if mid_save >= 3:
            break
    assert mid_save >= 1, "no kill landed inside a save: nothing was tested"


def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path, data_yaml, monkeypatch):
    """ENOSPC when the second checkpoint is flushed: one-line error, exit 2, last.pt of iteration 1 intact."""
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    out = tmp_path / "run"
    r = runner.invoke(app, _train_args(data_yaml, out))
    assert r.exit_code == 2, r.output
    err = [line[line.index("error:"):] for line in r.output.splitlines() if "error:" in line]  # after tqdm's \r
    assert len(err) == 1 and "No space left on device (ENOSPC)" in err[0] and "last.pt" in err[0], r.output
    assert "Traceback" not in r.output
    assert _iteration(out / "last.pt") == 1
    assert [p.name for p in out.glob("*.pt")] == ["last.pt"] and not list(out.glob(".*.tmp"))


def test_save_atomic_reports_disk_full_in_one_line(tmp_path, monkeypatch):
    def full(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ckpt.os, "fsync", full)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*x\.pt: No space left on device \(ENOSPC\); "
                                              r"no earlier one exists"):
        save_atomic({"model": {}}, tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


def _poison(model, at_calls: set):
    """Make the training losses NaN on the given forward calls (counted from 0)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        n = calls["n"]
        calls["n"] += 1
        if module.training and n in at_calls:
            return {k: v * float("nan") for k, v in output.items()}
        return output
    model.register_forward_hook(hook)


def _nan_cfg(iters, **extra):
    over = [f"train.schedule.max_iters={iters}", "train.schedule.warmup_iters=1", "train.batch_size=2",
            "train.num_workers=0", "train.checkpoint_interval=1"]
    return apply_overrides(load_config("ssdlite_mnv3_small_320"), over + [f"{k}={v}" for k, v in extra.items()])


def test_nonfinite_loss_stops_naming_iteration_and_terms(tmp_path, tiny_coco):
    img_dir, ann_file, _ = tiny_coco
    ds = CocoDetection(img_dir, ann_file)
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        train(_nan_cfg(4), ds, TrainOptions(out_dir=out, progress=False, init_fn=lambda m: _poison(m, {2})))
    msg = str(e.value)
    assert "iteration 2" in msg and "loss terms" in msg and "nan" in msg and "skip_nonfinite" in msg
    assert "\n" not in msg
    ck = load_checkpoint(out / "last.pt")  # the last good step is on disk, nothing NaN in it
    assert ck["iteration"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_nonfinite_steps_skipped_when_asked_and_counted(tmp_path, tiny_coco, caplog):
    """--set train.skip_nonfinite=N: up to N bad steps in a row are skipped (logged, counted), never applied."""
    img_dir, ann_file, _ = tiny_coco
    ds = CocoDetection(img_dir, ann_file)
    out = tmp_path / "run"
    # NaN at iterations 1, 3 and 4 with a limit of one in a row: 1 and 3 are skipped, 4 is one too many
    with pytest.raises(TrainingError, match="iteration 4.*already skipped 1 in a row"):
        train(_nan_cfg(5, **{"train.skip_nonfinite": 1}), ds,
              TrainOptions(out_dir=out, progress=False, init_fn=lambda m: _poison(m, {1, 3, 4})))
    assert "iteration 1: skipped the step" in caplog.text and "iteration 3: skipped the step" in caplog.text
    assert "iteration 2: skipped" not in caplog.text
    ck = load_checkpoint(out / "last.pt")
    assert ck["iteration"] == 4 and ck["skipped_nonfinite"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("verb", ["train", "val", "distill"])
@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:1"])
def test_device_without_gpu_is_a_one_line_error(verb, device, data_yaml, tmp_path):
    args = {"train": ["train", "ssdlite_mnv3_small_320", "--data", str(data_yaml)],
            "val": ["val", "ssdlite_mnv3_small_320", "--data", str(data_yaml)],
            "distill": ["distill", "--teacher", "yolov3_r34_320", "--student", "yolov3_mnv3_large_320",
                        "--data", str(data_yaml), "--iters", "1", "-o", str(tmp_path / "s.pt")]}[verb]
    r = runner.invoke(app, args + ["--device", device])
    assert r.exit_code == 2 and "no CUDA GPU is visible" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, args + ["--device", "tpu9"])
    assert r.exit_code == 2 and "unknown device" in r.output, r.output


def _save_under_fsize_limit(path, payload, limit, queue):
    """Runs in a forked child: no torch op here (a forked child can hang in OpenMP the parent already used)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        save_atomic(payload, path)
        queue.put("saved")
    except CheckpointError as e:
        queue.put(f"CheckpointError: {e}")
    except BaseException as e:  # anything else is the bug this test looks for
        queue.put(f"{type(e).__name__}: {e}")


def test_a_real_failing_write_keeps_the_previous_checkpoint(tmp_path):
    """Not a monkeypatch: the kernel refuses the write (RLIMIT_FSIZE, as a full disk would with ENOSPC)."""
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(10)}, "iteration": 1}, path)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    payload = {"model": {"w": torch.zeros(1_000_000)}, "iteration": 2}  # 4 MB, over the 1 MB limit
    proc = ctx.Process(target=_save_under_fsize_limit, args=(path, payload, 1_000_000, queue), daemon=True)
    proc.start()
    try:
        msg = queue.get(timeout=120)
    finally:
        proc.kill()
        proc.join()
    assert msg.startswith("CheckpointError: cannot write checkpoint") and "File too large (EFBIG)" in msg, msg
    assert "the previous one is kept" in msg and "\n" not in msg
    assert load_checkpoint(path)["iteration"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
