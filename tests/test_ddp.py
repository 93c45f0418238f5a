"""torchrun + DDP on CPU (gloo, 2 processes)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from ddp_common import global_batch, make_model  # noqa: E402

HERE = Path(__file__).parent


def _torchrun(args, tmp_path, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.parametrize("arch", ["ssdlite", "picodet"])
def test_two_processes_give_the_gradients_of_one(tmp_path, arch):
    """Losses normalised by the global batch (positives, or PicoDet's sum of soft targets, all-reduced): the
    averaged gradients of 2 x 2 images equal those of 4 in one process."""
    out = tmp_path / "grads.pt"
    _torchrun([str(HERE / "ddp_worker.py"), str(out), arch], tmp_path)
    ddp_grads = torch.load(out, weights_only=True)
    model = make_model(arch)
    images, targets = global_batch()
    sum(model(images, targets).values()).backward()
    ref = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert ddp_grads.keys() == ref.keys() and len(ref) > 100
    worst = max((ddp_grads[n] - ref[n]).abs().max().item() for n in ref)
    scale = max(ref[n].abs().max().item() for n in ref)
    assert worst <= 1e-5 * max(1.0, scale), worst


def test_only_rank0_writes(tmp_path, tiny_coco):
    img_dir, ann_file, _ = tiny_coco
    data = tmp_path / "d.yaml"
    data.write_text(f"train: {{images: {img_dir}, annotations: {ann_file}}}\n"
                    f"val: {{images: {img_dir}, annotations: {ann_file}}}\n")
    out = tmp_path / "run"
    _torchrun(["-m", "pocketdet.cli", "train", "ssdlite_mnv3_small_320", "--data", str(data), "--out", str(out),
               "--iters", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu",
               "--set", "train.eval_interval=2", "--set", "train.schedule.warmup_iters=1"], tmp_path)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    events = [f for f in files if f.startswith("tb/")]
    assert len(events) == 1, files               # one TensorBoard writer: rank 0's
    assert "last.pt" in files and "best.pt" in files and "metrics.jsonl" in files
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # evaluated once, by rank 0
    assert not any(".tmp" in f for f in files)
