"""What `Detector.predict` costs on top of the bare network forward, for trained checkpoints on real photos.

    .venv/bin/python benchmarks/predict_overhead.py runs/demo/best.pt [more.pt ...] [--threads 1] [--rounds 5]

Each checkpoint is exported to ONNX (`pocketdet.deploy.export.export_onnx`) and run by the torch-free
`pocketdet.Detector` (ONNX Runtime) on the held-out photos of data/demo.yaml (coco_mini val2017). Per photo and
round, four timings run back to back so that load from other processes hits them alike: the bare forward
(`Detector.forward` on the already resized input), the whole `Detector.predict` on the decoded photo, and its
two host-side parts, pre-processing (resize + /255) and post-processing (candidates + NMS + scaling).
predict / forward is the issue's "pre/post-processing <= 30%" measure. Results go to BENCHMARKS.md between
`<!-- deploy-overhead:start -->` and `<!-- deploy-overhead:end -->`, inside the `deploy` section.

    .venv/bin/python benchmarks/predict_overhead.py CKPT --files [--rounds 5]    # issue 16 part 1
    .venv/bin/python benchmarks/predict_overhead.py CKPT --folder [--rounds 3]   # issue 16 part 2

--files: `Detector.predict` from JPEG files, before (full decode, exact resize of the full image, per-class
candidate sort: the code before issue 16, re-created here) and after (DCT-scaled decode + integer reduce,
per-class top-k inside NMS's best-first prefix), next to the bare forward, on VGA photos and on 12 MP JPEGs
made by upscaling real photos (written to a temp folder, never committed); interleaved per photo. Section
`deploy-preproc`. --folder: `pocketdet predict`'s loop (`predict_run.run_predict`) over a folder, sequential
vs overlapped (reader / writer threads), torch and ONNX runtimes, rounds interleaved. Section `deploy-folder`.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from harness import ROOT, command_line, machine_line, parser, replace_section

from pocketdet.deploy import npops  # noqa: E402


def photos(n: int) -> list[Path]:
    return sorted((ROOT / "data" / "coco_mini" / "val2017").glob("*.jpg"))[:n]


def measure(det, rgbs: list[np.ndarray], rounds: int) -> dict:
    xs = [det.preprocess(r)[0] for r in rgbs]
    for r, x in zip(rgbs[:3], xs):  # warm-up
        det.forward(x)
        det.predict(r)
    t = {"forward": [], "predict": [], "pre": [], "post": []}
    dets = []
    for _ in range(rounds):
        for r, x in zip(rgbs, xs):
            a = time.perf_counter()
            out = det.forward(x)
            b = time.perf_counter()
            res = det.predict(r)
            c = time.perf_counter()
            det.preprocess(r)
            d = time.perf_counter()
            det.postprocess(out, (r.shape[1], r.shape[0]))
            e = time.perf_counter()
            for k, dt in zip(("forward", "predict", "pre", "post"), (b - a, c - b, d - c, e - d)):
                t[k].append(dt)
            dets.append(len(res["scores"]))
    ms = {k: 1e3 * np.asarray(v) for k, v in t.items()}
    ratio = ms["predict"] / ms["forward"]
    return {**{f"{k}_ms": float(np.median(v)) for k, v in ms.items()},
            "ratio_median": float(np.median(ratio)), "ratio_of_medians": float(np.median(ms["predict"]) /
                                                                               np.median(ms["forward"])),
            "detections_mean": float(np.mean(dets))}


def before_predict(det, path) -> dict:
    """The pre-issue-16 path for an SSD export decoded in the graph: full decode, exact resize of the whole
    image, per-class candidate sort (`npops.per_class_candidates`) then NMS."""
    rgb = npops.load_rgb(path)
    h, w = rgb.shape[:2]
    out = det.forward(npops.resize_chw(rgb, det.input_size))
    boxes, scores = out["boxes"][0], out["scores"][0]
    cfg = det.postprocess_cfg
    prior_idx, labels, cand = npops.per_class_candidates(scores, cfg["score_thresh"], cfg["nms_top_k"])
    keep = npops.batched_nms(boxes[prior_idx], cand, labels, cfg["nms_thresh"], cfg["keep_top_k"])
    return {"boxes": boxes[prior_idx][keep] * np.array([w, h, w, h], np.float32), "scores": cand[keep],
            "labels": labels[keep]}


def phone_jpegs(tmp: Path, n: int) -> list[Path]:
    """n 4000x3000 JPEGs (quality 92) upscaled from real photos: a phone camera's size, real content."""
    from PIL import Image

    out = []
    for p in photos(n):
        q = tmp / f"12mp_{p.name}"
        Image.open(p).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(q, quality=92)
        out.append(q)
    return out


def measure_files(det, paths: list[Path], rounds: int) -> dict:
    xs = [det.preprocess(p)[0] for p in paths]
    for p, x in zip(paths[:2], xs):  # warm-up
        det.forward(x), det.predict(p), before_predict(det, p)
    t = {"forward": [], "before": [], "after": [], "post_before": [], "post_after": []}
    for _ in range(rounds):
        for p, x in zip(paths, xs):
            a = time.perf_counter()
            out = det.forward(x)
            b = time.perf_counter()
            before_predict(det, p)
            c = time.perf_counter()
            det.predict(p)
            d = time.perf_counter()
            t["forward"].append(b - a)
            t["before"].append(c - b)
            t["after"].append(d - c)
            scores, boxes, cfg = out["scores"][0], out["boxes"][0], det.postprocess_cfg
            e = time.perf_counter()
            pi, lab, cand = npops.per_class_candidates(scores, cfg["score_thresh"], cfg["nms_top_k"])
            npops.batched_nms(boxes[pi], cand, lab, cfg["nms_thresh"], cfg["keep_top_k"])
            f = time.perf_counter()
            npops.class_wise_nms(boxes, scores, cfg["score_thresh"], cfg["nms_top_k"], cfg["nms_thresh"], cfg["keep_top_k"])
            g = time.perf_counter()
            t["post_before"].append(f - e)
            t["post_after"].append(g - f)
    med = {k: 1e3 * float(np.median(v)) for k, v in t.items()}
    same = all(np.array_equal(before_predict(det, p)["labels"], det.predict(p)["labels"]) for p in paths)
    return {**med, "same_labels": same}


FILES_NOTE = (
    "What bounds the ratios: a VGA photo is less than 2x a 320 input along its short side, so no DCT scale keeps "
    "it >= 320 both ways and it takes the unchanged exact path: its JPEG decode (~2-3 ms quiet) and exact resize "
    "(~1.5 ms) stay next to a ~7 ms SSDLite-Small forward, and only post-processing got cheaper. A 12 MP photo "
    "decodes at 1/8 scale (500x375): that decode (~10 ms quiet) is the bound. AP effect "
    "(tests/test_images.py::test_reduced_decode_ap_on_phone_sized_photos, the fitted fixture's 8 photos upscaled "
    "4x to ~2560x1700, boxes in the big images' pixels): AP50 97.9 both ways, AP 95.3 full decode vs 93.1 reduced; "
    "upscaled 6.25x (4000x2669) in a one-off run of the same comparison: AP50 97.9 both, AP 95.9 vs 81.4 (AP75 "
    "97.9 vs 91.8). The same model scores AP 85.1 on the original VGA photos: it memorised 8 photos and its AP "
    "moves by ~10 points between two renderings of one photo, so it cannot show an effect of 0.1 AP either way; "
    "the reduced input is measurably blurrier than the exact filter (mean |diff| ~0.01 of the 0..1 range at "
    "12 MP). `det.reduced_decode = False` keeps the full-resolution path.")
FOLDER_NOTE = (
    "Overlap needs an idle core: the reader (decode + resize) and writer (draw + JPEG encode) threads run beside "
    "the 1-thread inference. On a quiet 2-core machine the pipeline is bounded by max(inference, total work / 2); "
    "on a machine already running ~17 other runnable threads (the load average above) there is no spare core and "
    "the extra threads only add switching, so this table measures the load, not the pipeline.")


def post_undertrained(det, rounds: int) -> dict:
    """Candidate selection + NMS, before vs after, on this model's boxes with undertrained-looking scores
    (background-heavy softmax, three classes half-confident: ~30k (prior, class) pairs over 0.01 and 200
    detections kept, like the demo's minutes-trained checkpoints). Same detections asserted."""
    rng = np.random.default_rng(0)
    out = det.forward(det.preprocess(photos(1)[0])[0])
    boxes = out["boxes"][0]
    logits = rng.normal(0, 1, (boxes.shape[0], out["scores"].shape[2] + 1)).astype(np.float32)
    logits[:, 0] += 4
    logits[:, [1, 3, 18]] += 2.5
    scores = npops.softmax(logits)[:, 1:]
    cfg = det.postprocess_cfg
    t = {"before": [], "after": []}
    for _ in range(rounds * 10):
        a = time.perf_counter()
        pi, lab, cand = npops.per_class_candidates(scores, cfg["score_thresh"], cfg["nms_top_k"])
        keep = npops.batched_nms(boxes[pi], cand, lab, cfg["nms_thresh"], cfg["keep_top_k"])
        b = time.perf_counter()
        new = npops.class_wise_nms(boxes, scores, cfg["score_thresh"], cfg["nms_top_k"], cfg["nms_thresh"], cfg["keep_top_k"])
        c = time.perf_counter()
        t["before"].append(b - a)
        t["after"].append(c - b)
    assert np.array_equal(pi[keep], new[0]) and np.array_equal(lab[keep], new[1])
    return {"pairs": int(len(cand)), "kept": int(len(keep)),
            **{k: 1e3 * float(np.median(v)) for k, v in t.items()}}


def files_section(det, ck: Path, args, tmp: Path, command: str) -> str:
    vga = photos(args.photos)
    big = phone_jpegs(tmp, 3)
    rows = [("VGA JPEG (coco_mini val2017)", measure_files(det, vga, args.rounds), len(vga)),
            ("12 MP JPEG (4000x3000, upscaled coco_mini photo)", measure_files(det, big, args.rounds), len(big))]
    for name, r, _ in rows:
        print(name, {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
    under = post_undertrained(det, args.rounds)
    print("undertrained post", under, flush=True)
    lines = ["### predict from a JPEG file: before / after issue 16 (`benchmarks/predict_overhead.py --files`)", "",
             f"Command: `{command}`; {machine_line()}",
             f"ONNX Runtime, {args.threads} thread(s), medians in ms, the three timings interleaved per photo and round. "
             "before = full decode + exact antialiased resize of the whole image + per-class candidate sort + NMS; "
             "after = `Detector.predict(path)`: DCT-scaled JPEG decode (largest 1/2, 1/4, 1/8 scale keeping >= the "
             "input size), integer reduce of what is still > 2x the input, exact resize, per-class top-k inside "
             "NMS's best-first prefix. post = candidate selection + NMS alone (before / after, same outputs).", "",
             "| photos | n | forward | predict before | predict after | before / forward | after / forward | "
             "post before | post after |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r, n in rows:
        lines.append(f"| {name} | {n} | {r['forward']:.2f} | {r['before']:.2f} | {r['after']:.2f} | "
                     f"{r['before'] / r['forward']:.2f}x | **{r['after'] / r['forward']:.2f}x** | "
                     f"{r['post_before']:.2f} | {r['post_after']:.2f} |")
    lines += ["", f"Post-processing of an undertrained model (this model's boxes, background-heavy scores: "
              f"{under['pairs']} (prior, class) pairs over the threshold, {under['kept']} kept; `post_undertrained`): "
              f"before {under['before']:.2f} ms, after **{under['after']:.2f} ms**, identical detections.", "",
              FILES_NOTE]
    return "\n".join(lines)


def folder_section(ck: Path, args, tmp: Path, command: str) -> str:
    import shutil

    from pocketdet.cli import _predictor
    from pocketdet.predict_run import run_predict
    from pocketdet.sources import collect_sources

    folder = tmp / "folder"
    folder.mkdir()
    for p in photos(args.photos):
        shutil.copy(p, folder / p.name)
    items = collect_sources([str(folder)])
    lines = ["### `pocketdet predict` on a folder: sequential vs overlapped (`benchmarks/predict_overhead.py --folder`)",
             "", f"Command: `{command}`; {machine_line()}",
             f"{len(items)} coco_mini photos -> annotated JPEGs + predictions.json; runtime intra-op threads = "
             f"{args.threads}. sequential = `--no-overlap` (decode, detect, draw + encode one after another); "
             "overlapped = default (reader and writer threads, queues of 4). Median images/s over the rounds, "
             "A/B interleaved.", "", "| runtime | sequential img/s | overlapped img/s | speed-up |", "|---|---|---|---|"]
    for runtime in ("torch", "onnx"):
        model = str(ck)
        if runtime == "onnx":
            from pocketdet import api
            from pocketdet.deploy.export import export_onnx
            model = str(export_onnx(api.load(ck), tmp / "folder_model.onnx"))
        prepare, infer, names = _predictor(model, runtime, args.threads)
        rate = {False: [], True: []}
        for r in range(args.rounds + 1):
            for overlap in (False, True):
                a = time.perf_counter()
                run_predict(items, prepare, infer, names, tmp / f"out_{runtime}_{overlap}", overlap=overlap)
                if r:  # round 0 warms up
                    rate[overlap].append(len(items) / (time.perf_counter() - a))
        seq, par = float(np.median(rate[False])), float(np.median(rate[True]))
        print(runtime, "sequential", round(seq, 2), "overlapped", round(par, 2), flush=True)
        lines.append(f"| {runtime} | {seq:.1f} | {par:.1f} | **{par / seq:.2f}x** |")
    return "\n".join(lines + ["", FOLDER_NOTE])


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", action="store_true", help="before/after from JPEG files, VGA and 12 MP")
    ap.add_argument("--folder", action="store_true", help="predict on a folder: sequential vs overlapped")
    args = ap.parse_args(argv)
    command = command_line(__file__, argv)
    from pocketdet import api
    from pocketdet.deploy.export import export_onnx
    from pocketdet.deploy.runtime import Detector

    tmp = Path(tempfile.mkdtemp(prefix="pocketdet-overhead-"))
    if args.files or args.folder:
        ck = args.checkpoints[0]
        if args.files:
            det = Detector(export_onnx(api.load(ck), tmp / "files.onnx"), threads=args.threads)
            md = files_section(det, ck, args, tmp, command)
            print(md)
            replace_section(args.md, "deploy-preproc", md, parent="deploy")
        if args.folder:
            md = folder_section(ck, args, tmp, command)
            print(md)
            replace_section(args.md, "deploy-folder", md, parent="deploy")
        return
    rgbs = [npops.load_rgb(p) for p in photos(args.photos)]
    rows = []
    for ck in args.checkpoints:
        model = api.load(ck)
        path = export_onnx(model, tmp / f"{ck.parent.name}_{ck.stem}.onnx")
        det = Detector(path, threads=args.threads)
        res = measure(det, rgbs, args.rounds)
        rows.append((ck, model, res))
        print(ck, {k: round(v, 3) for k, v in res.items()}, flush=True)
    lines = ["### predict vs bare forward, trained checkpoints (`benchmarks/predict_overhead.py`)", "",
             f"Command: `{command}`; {machine_line()}",
             f"ONNX Runtime, {args.threads} thread(s), {len(rgbs)} held-out coco_mini photos x {args.rounds} rounds; "
             "medians in ms. pre = resize to the input size + /255 (numpy/PIL), post = score threshold, per-class "
             "top-k, NMS, scaling (numpy).", "",
             "| checkpoint | model | forward | predict | pre | post | predict / forward | detections / photo |",
             "|---|---|---|---|---|---|---|---|"]
    for ck, model, r in rows:
        lines.append(f"| `{ck}` | {getattr(getattr(model, 'zoo_config', None), 'name', type(model).__name__)} | {r['forward_ms']:.2f} | "
                     f"{r['predict_ms']:.2f} | {r['pre_ms']:.2f} | {r['post_ms']:.2f} | "
                     f"**{r['ratio_of_medians']:.2f}x** | {r['detections_mean']:.0f} |")
    lines += ["", "pre is the antialiased resize of the photo, a fixed cost per photo size (2-4 ms for VGA on this CPU "
              "whichever library does it: docs/deploy.md), so it weighs most on the smallest network; post grows with "
              "the number of (class, prior) pairs over the score threshold, large for an undertrained model (the demo "
              "runs are minutes of CPU training from scratch) and small for a converged one (peers table: 1.21x with "
              "trained-like weights)."]
    md = "\n".join(lines)
    print(md)
    replace_section(args.md, "deploy-overhead", md, parent="deploy")


if __name__ == "__main__":
    main()
