"""Cheaper candidate selection of the dense post-processing (issue 16): `npops.class_wise_nms` (threshold,
then per-class top-k applied inside NMS's best-first prefix) gives exactly the detections of torch's
`scores.topk(k, 0)` + threshold + torchvision `batched_nms` (`models.ssdlite.nms_per_class`) and of the
previous numpy path (`per_class_candidates` + `batched_nms`)."""
import numpy as np
import pytest
import torch

from pocketdet.deploy import npops
from pocketdet.models.ssdlite import nms_per_class


def random_case(rng, p: int, c: int, kind: str):
    ctr, wh = rng.uniform(0, 1, (p, 2)), rng.uniform(0.02, 0.5, (p, 2))
    boxes = np.clip(np.concatenate([ctr - wh / 2, ctr + wh / 2], 1), 0, 1).astype(np.float32)
    logits = rng.normal(0, 1, (p, c + 1))
    if kind == "undertrained":  # tens of thousands of pairs over 0.01, a few crowded classes
        logits[:, 0] += 4
        logits[:, rng.integers(1, c + 1, 3)] += 2.5
    elif kind == "trained":  # background wins, a few confident pairs
        logits[:, 0] += 9
        logits[rng.integers(0, p, 40), rng.integers(1, c + 1, 40)] += 14
    else:  # random init: every pair near 1/(C+1)
        logits *= 0.05
    s = np.exp(logits - logits.max(1, keepdims=True))
    scores = (s / s.sum(1, keepdims=True))[:, 1:]
    scores += rng.uniform(0, 1e-7, scores.shape)  # distinct scores: ties have no defined order anywhere
    return boxes, scores.astype(np.float32)


@pytest.mark.parametrize("kind", ["undertrained", "trained", "random"])
def test_class_wise_nms_matches_torch_and_the_old_path(kind):
    rng = np.random.default_rng({"undertrained": 0, "trained": 1, "random": 2}[kind])
    for p, c, top_k, keep_top_k in ((2034, 80, 400, 200), (500, 6, 20, 50), (300, 3, 400, 100)):
        boxes, scores = random_case(rng, p, c, kind)
        pi, ci, sc = npops.class_wise_nms(boxes, scores, 0.01, top_k, 0.45, keep_top_k)
        cfg = {"score_thresh": 0.01, "nms_top_k": top_k, "nms_thresh": 0.45, "keep_top_k": keep_top_k}
        ref = nms_per_class(torch.from_numpy(boxes), torch.from_numpy(scores), cfg, (1, 1))
        assert np.array_equal(ci, ref["labels"].numpy()), (kind, p, c)
        assert np.array_equal(boxes[pi], ref["boxes"].numpy()) and np.array_equal(sc, ref["scores"].numpy())
        old_p, old_c, old_s = npops.per_class_candidates(scores, 0.01, top_k)
        keep = npops.batched_nms(boxes[old_p], old_s, old_c, 0.45, keep_top_k)
        assert np.array_equal(old_p[keep], pi) and np.array_equal(old_c[keep], ci)


def test_class_wise_nms_without_candidates():
    pi, ci, sc = npops.class_wise_nms(np.zeros((10, 4), np.float32), np.zeros((10, 3), np.float32), 0.01, 5, 0.45, 5)
    assert pi.shape == ci.shape == sc.shape == (0,)
