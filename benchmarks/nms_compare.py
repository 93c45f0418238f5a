"""NMS cost, 80 classes x 2034 priors, 1 thread: pocketdet numpy vs an ORT TopK + NonMaxSuppression graph vs
torchvision (docs/deploy.md, "NMS in numpy"). Run: .venv/bin/python benchmarks/nms_compare.py"""
import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto as T
from onnx import helper
from torchvision.ops import batched_nms

from harness import parser, stats_ms, time_interleaved
from pocketdet.deploy.postprocess import class_wise_nms

P, C, K, KEEP, THR = 2034, 80, 400, 200, 0.45


def torch_post(b, s):
    b, s = torch.from_numpy(b), torch.from_numpy(s)
    ts, ti = s.topk(K, 0)
    keep = ts > 0.01
    cls = torch.arange(C).expand(K, -1)[keep]
    sc, ix = ts[keep], ti[keep]
    return batched_nms(b[ix], sc, cls, THR)[:KEEP]


def ort_nms_session():
    g = helper.make_graph([
        helper.make_node("Transpose", ["scores"], ["sT"], perm=[1, 0]),
        helper.make_node("TopK", ["sT", "k"], ["tv", "ti"], axis=1),
        helper.make_node("Gather", ["boxes", "ti"], ["cb"], axis=0),
        helper.make_node("Unsqueeze", ["tv", "one"], ["tv3"]),
        helper.make_node("NonMaxSuppression", ["cb", "tv3", "maxout", "iou", "sthr"], ["sel"])], "nms",
        [helper.make_tensor_value_info("boxes", T.FLOAT, [P, 4]),
         helper.make_tensor_value_info("scores", T.FLOAT, [P, C])],
        [helper.make_tensor_value_info("sel", T.INT64, None), helper.make_tensor_value_info("tv", T.FLOAT, None)],
        initializer=[helper.make_tensor("k", T.INT64, [1], [K]), helper.make_tensor("one", T.INT64, [1], [1]),
                     helper.make_tensor("maxout", T.INT64, [1], [KEEP]),
                     helper.make_tensor("iou", T.FLOAT, [1], [THR]), helper.make_tensor("sthr", T.FLOAT, [1], [0.01])])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = parser(__doc__, md=False)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    ctr = rng.uniform(0, 1, (P, 2))
    wh = rng.uniform(0.02, 0.6, (P, 2))
    boxes = np.clip(np.concatenate([ctr - wh / 2, ctr + wh / 2], 1), 0, 1).astype(np.float32)
    cfg = dict(score_thresh=0.01, nms_thresh=THR, nms_top_k=K, keep_top_k=KEEP)
    sess = ort_nms_session()

    def ort_post(b, s):
        sel, tv = sess.run(None, {"boxes": b, "scores": s})
        sc = tv[sel[:, 0], sel[:, 2]]
        return sel[np.argsort(-sc, kind="stable")[:KEEP]]

    for case, lo, hi in (("random-weights worst case (all pass)", 0.011, 0.0135),
                         ("trained-like (~300 candidates)", 0.0, 0.0104)):
        scores = rng.uniform(lo, hi, (P, C)).astype(np.float32)
        if hi < 0.011:
            scores[rng.integers(0, P, 300), rng.integers(0, C, 300)] = rng.uniform(0.02, 0.99, 300)
        fns = {"numpy (pocketdet)": lambda: class_wise_nms(boxes, scores, cfg, (1, 1)),
               "ORT NonMaxSuppression graph": lambda: ort_post(boxes, scores),
               "torchvision batched_nms": lambda: torch_post(boxes, scores)}
        st = {k: stats_ms(v) for k, v in time_interleaved(fns, args.runs, warmup=0).items()}
        print(case, {k: f"{s['median_ms']:.2f} ms (min {s['min_ms']:.2f})" for k, s in st.items()})


if __name__ == "__main__":
    main()
