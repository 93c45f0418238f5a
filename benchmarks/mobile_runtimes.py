"""Mobile-runtime candidates on the same SSDLite graph (raw outputs), interleaved with torch and ORT, 1 and 2
threads (docs/deploy.md, "Mobile runtime"). ExecuTorch is optional and heavy, so it is not a pocketdet
dependency: `pip install --target /tmp/et --no-deps executorch==1.5.1 torchao==0.18.0 ruamel.yaml tabulate
flatbuffers` then `PYTHONPATH=/tmp/et .venv/bin/python benchmarks/mobile_runtimes.py ssdlite_mnv3_small_320 20`.
Random init: ExecuTorch's exporter refused the BN-recalibrated copy ("0 in strides is not supported")."""
import sys, time, glob, torch, numpy as np, warnings, os
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
from pocketdet.config import load_config
from pocketdet.models import build_model
from pocketdet.deploy.export import export_onnx, graph_spec
from pocketdet.deploy.mobile import export_ncnn, NcnnDetector
from pocketdet.deploy.runtime import Detector
from pocketdet.deploy import npops
name = sys.argv[1]; runs = int(sys.argv[2])
m = build_model(load_config(name).model).eval()  # random init: ExecuTorch refuses the BN-recalibrated copy (0-stride check)
import tempfile
out = tempfile.mkdtemp(prefix="pocketdet-mobile-")
onnx_p = export_onnx(m, f"{out}/{name}.onnx", decode_in_graph=False)
ncnn_p = export_ncnn(m, f"{out}/{name}", decode_in_graph=False)
pte = f"{out}/{name}.pte"
spec = graph_spec(m, False)
x = npops.resize_chw(npops.load_rgb("/work/main/data/coco128/images/val2017/000000000139.jpg"), 320)
with torch.no_grad(): ref = [o.numpy() for o in spec.module(torch.from_numpy(x))]
if not os.path.exists(pte):
    from executorch.exir import to_edge_transform_and_lower
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    t = time.time()
    class Raw(torch.nn.Module):
        def __init__(s, m): super().__init__(); s.m = m
        def forward(s, x):
            loc, conf, pri = s.m.forward_raw(s.m.normalize(x)); return loc, conf
    ep = torch.export.export(Raw(m).eval(), (torch.from_numpy(x),))
    open(pte, "wb").write(to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    print("ET export s", round(time.time() - t, 1))
from executorch.runtime import Runtime
from executorch.extension.pybindings import portable_lib
meth = Runtime.get().load_program(pte).load_method("forward")
xt = torch.from_numpy(x)
for th in (1, 2):
    torch.set_num_threads(th)
    portable_lib._unsafe_reset_threadpool(th)
    ort_d = Detector(onnx_p, threads=th); ncnn_d = NcnnDetector(ncnn_p, threads=th)
    fns = {"torch eager": lambda: spec.module(xt), "onnxruntime": lambda: ort_d.forward(x), "ncnn fp32": lambda: ncnn_d.forward(x),
           "executorch xnnpack": lambda: meth.execute([xt])}
    errs = {}
    with torch.no_grad():
        for k, f in fns.items():
            o = f(); o = list(o.values()) if isinstance(o, dict) else [np.asarray(v) for v in o]
            errs[k] = max(float(np.abs(a - b).max()) for a, b in zip(o, ref))
        ts = {k: [] for k in fns}
        for _ in range(3):
            for f in fns.values(): f()
        for _ in range(runs):
            for k, f in fns.items():
                t = time.perf_counter(); f(); ts[k].append(time.perf_counter() - t)
    for k, v in ts.items():
        print(f"{name} threads={th} {k:20s} median {np.median(v)*1e3:7.2f} ms  min {np.min(v)*1e3:7.2f}  max abs err vs torch {errs[k]:.1e}")
