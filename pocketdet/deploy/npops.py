"""Numpy pre/post-processing for the deployed runtime (torch-free: imports numpy and PIL only).

Every function here reproduces a torch step of `pocketdet.models` exactly enough that the runtime's
detections equal the torch model's (tests/test_deploy.py compares them on real photos).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..images import draft_at_least, to_rgb_array

# same clamp as pocketdet.models.box_ops: exp() of a width/height offset cannot overflow
_DWH_CLAMP = np.float32(np.log(1000.0 / 16))


# -- images ---------------------------------------------------------------------------------------------
# Orientation: pixels are used as stored; an EXIF orientation tag is NOT applied, here, in the torch
# `predict` (models/inputs.py) and in training (data/base.py). That is COCO's convention (its annotations and
# width/height are in the stored frame; pycocotools and torchvision's decoders ignore the tag too), so boxes
# are always in the frame of the stored pixels. Callers who want the upright frame rotate the image first
# (`PIL.ImageOps.exif_transpose`) and pass the result.

REDUCING_GAP = 2.0  # integer pre-reduction keeps >= this many source pixels per output pixel (PIL's reducing_gap)


def load_rgb(image) -> np.ndarray:
    """A path, PIL image or HxWx3 uint8 array -> contiguous HxWx3 uint8 RGB array (full resolution)."""
    if isinstance(image, (str, Path)):
        with _open(image) as f:
            return np.ascontiguousarray(_decode(f, image))
    return _check_array(to_rgb_array(image) if isinstance(image, Image.Image) else image)


def load_for_input(image, min_wh) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode for inference at no more resolution than the network can use: (HxWx3 uint8 RGB, the original
    (width, height)). `min_wh(w, h) -> (tw, th)` is the size the network input is resized to.

    A JPEG file decodes at the largest DCT scale (1/2, 1/4, 1/8: libjpeg's scaled IDCT, PIL `Image.draft`)
    that keeps the image at least (tw, th): a 12 MP photo for a 320 input decodes 8x smaller, ~8x faster.
    Any image that is still more than `REDUCING_GAP` times larger than needed along an axis is then
    box-averaged by an integer factor (`reduce_large`), so the exact antialiased resize that follows works
    on a small image. Both steps average whole blocks of pixels, as the wide antialias filter does anyway:
    detections move by far less than a pixel of the network input (benchmarks/predict_overhead.py: AP
    unchanged on 12 MP photos). Photos at most twice the input size (VGA for 320) take the exact path."""
    if isinstance(image, (str, Path)):
        with _open(image) as f:
            w, h = f.size
            draft_at_least(f, *min_wh(w, h))
            rgb = _decode(f, image)
    else:
        rgb = load_rgb(image)
        h, w = rgb.shape[:2]
    tw, th = min_wh(w, h)
    return reduce_large(rgb, tw, th), (w, h)


def reduce_large(rgb: np.ndarray, out_w: int, out_h: int, gap: float = REDUCING_GAP) -> np.ndarray:
    """Box-average by the largest integer factors (per axis) that keep the image at least `gap` times
    (out_w, out_h); the image itself when no axis is that large. PIL `Image.reduce`: ~1 ms per 12 MP."""
    h, w = rgb.shape[:2]
    fx, fy = max(1, int(w / (out_w * gap))), max(1, int(h / (out_h * gap)))
    if fx == 1 and fy == 1:
        return rgb
    return np.asarray(Image.fromarray(rgb).reduce((fx, fy)))


def _open(path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        return Image.open(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def _decode(f: Image.Image, path) -> np.ndarray:
    try:
        return to_rgb_array(f)
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for truncated / garbage data
        raise ValueError(f"cannot read image {path}: {e}") from e


def _check_array(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, PIL image or HxWx3 uint8 array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 array, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array (0..255), got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def resize_chw(rgb: np.ndarray, size: int, exact: bool = True) -> np.ndarray:
    """HxWx3 uint8 -> [1,3,size,size] float32 in 0..1, as the torch model resizes
    (`F.interpolate(bilinear, align_corners=False, antialias=True)`, PIL's triangle filter with its support
    widened by the downscale factor).

    exact=True: a separable resize in float32 with the same filter taps and weights as torch (max difference
    ~1e-6 on coco128), ~1.5 ms for a 640x480 photo; PIL's float mode took ~4.5 ms and uint8 PIL ~4 ms here.
    exact=False: PIL on the uint8 image (rounds to 1/255), kept for comparison.
    """
    h, w = rgb.shape[:2]
    if not exact:
        small = rgb if (h, w) == (size, size) else np.asarray(Image.fromarray(rgb).resize((size, size),
                                                                                          Image.BILINEAR))
        x = small.transpose(2, 0, 1).astype(np.float32)
        x *= np.float32(1.0 / 255.0)
        return x[None]
    cols, wx = _aa_taps(w, size, channels=3)
    rows, wy = _aa_taps(h, size, scale=1.0 / 255.0)
    flat = rgb.reshape(h, w * 3)
    # horizontal pass on interleaved RGB rows: tap k of output column j reads input columns 3*cols[j,k]+(0,1,2)
    # (astype, then an in-place multiply: a mixed uint8 x float32 ufunc is ~2x slower here)
    acc = None
    for c, wk in zip(cols, wx):
        term = np.take(flat, c, axis=1).astype(np.float32)
        term *= wk
        acc = term if acc is None else acc.__iadd__(term)
    # vertical pass (row gathers), with the 1/255 folded into the weights
    out = None
    for r, wk in zip(rows, wy):
        term = np.take(acc, r, axis=0)
        term *= wk
        out = term if out is None else out.__iadd__(term)
    return np.ascontiguousarray(out.reshape(size, size, 3).transpose(2, 0, 1))[None]


_TAPS_CACHE: dict[tuple, tuple[list, list]] = {}


def _aa_taps(n_in: int, n_out: int, channels: int = 0, scale: float = 1.0) -> tuple[list, list]:
    """torch's antialiased bilinear resize along one axis, as per-tap lists: `idx[k]` input indices and
    `wts[k]` float32 weights of tap k for every output. Output i is centred at f*(i+0.5) (f = n_in/n_out); the
    triangle filter is stretched by f when downscaling; taps outside the input get weight 0, each output's
    weights sum to 1 (times `scale`), taps that are 0 for every output are dropped. `channels` > 0: indices
    into interleaved rows (`channels*i + c`) and weights repeated per channel; else weights shaped [n_out, 1]."""
    key = (n_in, n_out, channels, scale)
    cached = _TAPS_CACHE.get(key)  # one lookup: another thread may clear the cache meanwhile
    if cached is None:
        f = n_in / n_out
        support = f if f >= 1.0 else 1.0
        inv = 1.0 / f if f >= 1.0 else 1.0
        center = f * (np.arange(n_out) + 0.5)
        lo = np.maximum((center - support + 0.5).astype(np.int64), 0)  # int() truncation, as torch/PIL
        hi = np.minimum((center + support + 0.5).astype(np.int64), n_in)
        idx = lo[:, None] + np.arange(int((hi - lo).max()))
        wts = np.maximum(1.0 - np.abs((idx - center[:, None] + 0.5) * inv), 0.0)
        wts[idx >= hi[:, None]] = 0.0
        wts = wts / wts.sum(1, keepdims=True) * scale
        idx = np.minimum(idx, n_in - 1)
        used = np.flatnonzero(wts.any(0))
        if channels:
            taps = [(channels * idx[:, k, None] + np.arange(channels)).ravel() for k in used]
            weights = [np.repeat(wts[:, k], channels).astype(np.float32) for k in used]
        else:
            taps = [idx[:, k] for k in used]
            weights = [wts[:, k, None].astype(np.float32) for k in used]
        cached = (taps, weights)
        if len(_TAPS_CACHE) > 128:  # photos of many sizes: keep the cache bounded
            _TAPS_CACHE.clear()
        _TAPS_CACHE[key] = cached
    return cached


# -- boxes and scores -----------------------------------------------------------------------------------
def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def decode_boxes(deltas: np.ndarray, ref: np.ndarray, variance) -> np.ndarray:
    """numpy twin of `pocketdet.models.box_ops.decode_boxes` for [N,4] xyxy references."""
    v = np.asarray(variance, np.float32)
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    rx, ry = ref[:, 0] + np.float32(0.5) * rw, ref[:, 1] + np.float32(0.5) * rh
    cx = deltas[:, 0] * v[0] * rw + rx
    cy = deltas[:, 1] * v[1] * rh + ry
    w = np.exp(np.minimum(deltas[:, 2] * v[2], _DWH_CLAMP)) * rw
    h = np.exp(np.minimum(deltas[:, 3] * v[3], _DWH_CLAMP)) * rh
    half_w, half_h = np.float32(0.5) * w, np.float32(0.5) * h
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def per_class_candidates(scores: np.ndarray, score_thresh: float, top_k: int):
    """Per class, the `top_k` highest scores among those above `score_thresh` (torch: `scores.topk(k, 0)`
    then `> thresh`). scores: [P, C]. Returns (prior index, class index, score), each [M].
    The runtime now uses `class_wise_nms` (same detections, cheaper); this stays as the reference that
    tests/test_candidates.py and benchmarks/predict_overhead.py compare it with.

    A trained model has few scores above the threshold, so usually no class needs a partial sort."""
    num_classes = scores.shape[1]
    flat = np.flatnonzero(scores > score_thresh)
    prior_idx, class_idx = np.divmod(flat, num_classes)
    crowded = np.flatnonzero(np.bincount(class_idx, minlength=num_classes) > top_k)
    if crowded.size:
        is_crowded = np.zeros(num_classes, bool)
        is_crowded[crowded] = True
        calm = ~is_crowded[class_idx]
        prior_idx, class_idx = prior_idx[calm], class_idx[calm]
        cols = np.ascontiguousarray(scores[:, crowded].T)  # [c, P]
        best = np.argpartition(-cols, top_k - 1, axis=1)[:, :top_k]  # [c, top_k] prior indices
        best_cls = np.broadcast_to(crowded[:, None], best.shape)
        # crowded classes have > top_k scores above the threshold, so all of their top_k pass it
        prior_idx = np.concatenate([prior_idx, best.ravel()])
        class_idx = np.concatenate([class_idx, best_cls.ravel()])
    return prior_idx, class_idx, scores[prior_idx, class_idx]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thresh: float,
                max_keep: int, max_pairs: int = 1_000_000) -> np.ndarray:
    """Greedy NMS within each label (torchvision `batched_nms` semantics: a box is suppressed by a kept,
    higher-scored box of its label with IoU > thresh). Returns kept indices sorted by score, at most
    `max_keep` (keep_top_k).

    Greedy NMS decides box k from the boxes before it in score order only, so the kept boxes among the
    best m candidates are final. We solve a prefix of the best 2*max_keep candidates and double it until it
    yields max_keep kept boxes: with random weights (80 classes x 400 candidates, few overlaps per class)
    the first prefix is enough; with a trained model the candidates are few anyway.

    Inside a prefix all same-label IoUs are computed at once and greedy NMS is solved as a fixed point on
    the "suppresses" edges: kept[j] = no kept i before j with an edge i->j. The edges go one way in score
    order, so the solution is unique and iterating from "all kept" until nothing changes gives exactly
    greedy NMS, in as many rounds as the longest suppression chain (2-5 in practice). A prefix whose largest
    label group has more than `max_pairs` pairs falls back to the plain best-first loop (bounded memory).
    """
    n = scores.shape[0]
    m = min(n, max(2 * max_keep, 64))
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 IoU of empty boxes: NaN, never > thresh
        while True:
            prefix = best_first(scores, m)
            kept = _greedy_nms(boxes[prefix], labels[prefix], iou_thresh, max_keep, max_pairs)
            if len(kept) >= max_keep or m == n:
                return prefix[kept[:max_keep]]
            m = min(n, 2 * m)


def class_wise_nms(boxes: np.ndarray, scores: np.ndarray, score_thresh: float, top_k: int, iou_thresh: float,
                   max_keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense detector tail on boxes [P,4] and scores [P,C]: per class the `top_k` best (prior, class) pairs
    above `score_thresh`, greedy NMS per class, the best `max_keep` overall -> (prior index, class index,
    score) of the kept pairs, best first. Same result as torch's `scores.topk(top_k, dim=0)`, threshold,
    `batched_nms`, `[:max_keep]` (`pocketdet.models.ssdlite.nms_per_class`), for distinct scores.

    Cheap for undertrained models too (tens of thousands of pairs over a 0.01 threshold): after the
    threshold only the pairs' flat indices and scores are kept; the best-first prefix of `batched_nms`
    (2*max_keep, doubled while too few survive) is the only part that is sorted, split into prior/class,
    cut to `top_k` per class and given boxes. The per-class cut is exact inside a prefix because a pair's
    rank in its class depends only on better pairs, which are all in the prefix."""
    num_classes = scores.shape[1]
    flat_scores = np.ascontiguousarray(scores).ravel()
    cand = np.flatnonzero(flat_scores > score_thresh)
    cand_scores = flat_scores[cand]
    n = len(cand)
    m = min(n, max(2 * max_keep, 64))
    with np.errstate(invalid="ignore", divide="ignore"):
        while True:
            pairs = cand[best_first(cand_scores, m)]
            prior_idx, class_idx = np.divmod(pairs, num_classes)
            within_top_k = _rank_in_label(class_idx) < top_k
            prior_idx, class_idx = prior_idx[within_top_k], class_idx[within_top_k]
            kept = _greedy_nms(boxes[prior_idx], class_idx, iou_thresh, max_keep, 1_000_000)[:max_keep]
            if len(kept) >= max_keep or m == n:
                prior_idx, class_idx = prior_idx[kept], class_idx[kept]
                return prior_idx, class_idx, scores[prior_idx, class_idx]
            m = min(n, 2 * m)


def _rank_in_label(labels: np.ndarray) -> np.ndarray:
    """For labels listed best first: how many earlier entries share each entry's label (0 = its best)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    start = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), np.int64)
    rank[order] = np.arange(len(labels)) - start
    return rank


def best_first(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m highest scores, best first (a partial sort: cheaper than argsort for m << n)."""
    if m < len(scores):
        top = np.argpartition(-scores, m - 1)[:m]
        return top[np.argsort(-scores[top], kind="stable")]
    return np.argsort(-scores, kind="stable")


def _greedy_nms(boxes, labels, iou_thresh, max_keep, max_pairs) -> np.ndarray:
    """Boxes already in score order -> indices of kept boxes, ascending (= best first)."""
    n = len(labels)
    if n == 0:
        return np.zeros(0, np.int64)
    by_label = np.argsort(labels, kind="stable")  # groups by label, score order kept inside a group
    g_boxes, g_labels = boxes[by_label], labels[by_label]
    group_end = np.searchsorted(g_labels, g_labels, side="right")
    areas = (g_boxes[:, 2] - g_boxes[:, 0]) * (g_boxes[:, 3] - g_boxes[:, 1])
    largest = int((group_end - np.searchsorted(g_labels, g_labels, side="left")).max())
    if largest * (largest - 1) // 2 <= max_pairs:
        kept_grouped = _nms_fixed_point(g_boxes, g_labels, areas, iou_thresh)
    else:
        kept_grouped = _nms_best_first(g_boxes, areas, group_end, by_label, iou_thresh, max_keep)
    return np.sort(by_label[kept_grouped])


def _iou_pairs(b1: np.ndarray, a1: np.ndarray, b2: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """IoU as torchvision's CPU kernel computes it (same float32 operations, so the same > decisions).
    Broadcasts: pairs of equal-shape arrays, or [n,1,4] against [1,n,4] for a whole matrix."""
    iw = np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0])
    ih = np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    return inter / (a1 + a2 - inter)


_DENSE_GROUP = 32  # label groups at least this large get a dense IoU matrix instead of gathered pairs


def _suppression_edges(g_boxes, g_labels, areas, iou_thresh) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) with src before dst in the same label group and IoU > thresh. Small groups: every pair
    gathered in one vectorised pass (many classes with a few boxes each). Large groups (one crowded class,
    an undertrained model): the group's IoU matrix by broadcasting, ~5x cheaper than gathering its pairs."""
    idx = np.arange(len(areas))
    group_start = np.searchsorted(g_labels, g_labels, side="left")
    group_end = np.searchsorted(g_labels, g_labels, side="right")
    size = group_end - group_start
    partners = np.where(size < _DENSE_GROUP, group_end - idx - 1, 0)
    num_pairs = int(partners.sum())
    srcs, dsts = [], []
    if num_pairs:
        src = np.repeat(idx, partners)
        first_pair = np.cumsum(partners) - partners
        dst = src + 1 + (np.arange(num_pairs) - np.repeat(first_pair, partners))
        hit = _iou_pairs(g_boxes[src], areas[src], g_boxes[dst], areas[dst]) > iou_thresh
        srcs.append(src[hit])
        dsts.append(dst[hit])
    for start in np.unique(group_start[size >= _DENSE_GROUP]):
        end = int(group_end[start])
        b, a = g_boxes[start:end], areas[start:end]
        hit = np.triu(_iou_pairs(b[:, None], a[:, None], b[None], a[None]) > iou_thresh, 1)
        i, j = np.nonzero(hit)
        srcs.append(i + start)
        dsts.append(j + start)
    if not srcs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(srcs), np.concatenate(dsts)


def _nms_fixed_point(g_boxes, g_labels, areas, iou_thresh) -> np.ndarray:
    n = len(areas)
    src, dst = _suppression_edges(g_boxes, g_labels, areas, iou_thresh)
    keep = np.ones(n, bool)
    while True:
        suppressed = np.zeros(n, bool)
        suppressed[dst[keep[src]]] = True
        new_keep = ~suppressed
        if np.array_equal(new_keep, keep):
            return np.flatnonzero(keep)
        keep = new_keep


def _nms_best_first(g_boxes, areas, group_end, by_label, iou_thresh, max_keep) -> np.ndarray:
    suppressed = np.zeros(len(areas), bool)
    kept = []
    rank_to_grouped = np.empty_like(by_label)
    rank_to_grouped[by_label] = np.arange(len(by_label))
    for g in rank_to_grouped:  # best first
        if suppressed[g]:
            continue
        kept.append(g)
        if len(kept) >= max_keep:
            break
        end = group_end[g]
        if g + 1 < end:
            iou = _iou_pairs(g_boxes[g], areas[g], g_boxes[g + 1:end], areas[g + 1:end])
            suppressed[g + 1:end] |= iou > iou_thresh
    return np.asarray(kept, np.int64)
