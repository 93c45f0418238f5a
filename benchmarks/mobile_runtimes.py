"""Mobile-runtime candidates on the same SSDLite graph (raw outputs), interleaved with torch and ORT, 1 and 2
threads (docs/deploy.md, "Mobile runtime"). ExecuTorch is optional and heavy, so it is not a pocketdet
dependency: `pip install --target /tmp/et --no-deps executorch==1.5.1 torchao==0.18.0 ruamel.yaml tabulate
flatbuffers` then `PYTHONPATH=/tmp/et .venv/bin/python benchmarks/mobile_runtimes.py ssdlite_mnv3_small_320 20`.
Random init: ExecuTorch's exporter refused the BN-recalibrated copy ("0 in strides is not supported")."""
import os
import tempfile
import time
import warnings

import numpy as np
import torch

from harness import ROOT, parser, stats_ms, time_interleaved
from pocketdet.config import load_config
from pocketdet.deploy import npops
from pocketdet.deploy.export import export_onnx
from pocketdet.deploy.graphs import graph_spec
from pocketdet.deploy.mobile import NcnnDetector, export_ncnn
from pocketdet.deploy.runtime import Detector
from pocketdet.models import build_model

PHOTO = ROOT / "data" / "coco128" / "images" / "val2017" / "000000000139.jpg"


def export_executorch(m, x: np.ndarray, pte: str) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    class Raw(torch.nn.Module):
        def __init__(s, m):
            super().__init__()
            s.m = m

        def forward(s, x):
            loc, conf, pri = s.m.forward_raw(s.m.normalize(x))
            return loc, conf

    t = time.time()
    ep = torch.export.export(Raw(m).eval(), (torch.from_numpy(x),))
    with open(pte, "wb") as f:
        f.write(to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    print("ET export s", round(time.time() - t, 1))


def main() -> None:
    ap = parser(__doc__, md=False)
    ap.add_argument("name", help="zoo model (an SSDLite)")
    ap.add_argument("runs", type=int, help="timed rounds")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    name = args.name
    # random init: ExecuTorch refuses the BN-recalibrated copy (0-stride check)
    m = build_model(load_config(name).model).eval()
    out = tempfile.mkdtemp(prefix="pocketdet-mobile-")
    onnx_p = export_onnx(m, f"{out}/{name}.onnx", decode_in_graph=False)
    ncnn_p = export_ncnn(m, f"{out}/{name}", decode_in_graph=False)
    pte = f"{out}/{name}.pte"
    spec = graph_spec(m, False)
    x = npops.resize_chw(npops.load_rgb(PHOTO), 320)
    with torch.no_grad():
        ref = [o.numpy() for o in spec.module(torch.from_numpy(x))]
    if not os.path.exists(pte):
        export_executorch(m, x, pte)
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    meth = Runtime.get().load_program(pte).load_method("forward")
    xt = torch.from_numpy(x)
    for th in (1, 2):
        torch.set_num_threads(th)
        portable_lib._unsafe_reset_threadpool(th)
        ort_d = Detector(onnx_p, threads=th)
        ncnn_d = NcnnDetector(ncnn_p, threads=th)
        fns = {"torch eager": lambda: spec.module(xt), "onnxruntime": lambda: ort_d.forward(x),
               "ncnn fp32": lambda: ncnn_d.forward(x), "executorch xnnpack": lambda: meth.execute([xt])}
        errs = {}
        with torch.no_grad():
            for k, f in fns.items():
                o = f()
                o = list(o.values()) if isinstance(o, dict) else [np.asarray(v) for v in o]
                errs[k] = max(float(np.abs(a - b).max()) for a, b in zip(o, ref))
            st = {k: stats_ms(v) for k, v in time_interleaved(fns, args.runs, warmup=3).items()}
        for k, s in st.items():
            print(f"{name} threads={th} {k:20s} median {s['median_ms']:7.2f} ms  min {s['min_ms']:7.2f}  "
                  f"max abs err vs torch {errs[k]:.1e}")


if __name__ == "__main__":
    main()
