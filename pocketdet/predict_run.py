"""The `pocketdet predict` loop: read -> detect -> write, as three overlapping stages.

    reader thread:  decode the next images / video frames and pre-process them (`prepare`), <= `depth` ahead
    caller thread:  the network + post-processing (`infer`), one item at a time, in order
    writer thread:  draw boxes, encode JPEG / PNG / video frames, JSON

Decoding, resizing and encoding run in C with the GIL released (PIL, numpy, FFmpeg), so on 2 cores they
overlap with inference instead of adding to it (benchmarks/predict_overhead.py --folder: images/s vs the
same work done sequentially). The queues are bounded, so memory stays at a few frames whatever the input.
Outputs: `<out>/<name>.jpg` (or .png) per image plus `predictions.json`; `<out>/<name>.mp4` (annotated) and
`<out>/<name>.jsonl` (one line per processed frame) per video or camera. `<name>` is unique per source
(`sources.unique_names`).
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from .sources import Frame, Item, frames, video_rate
from .viz import detections_to_json, draw_detections

log = logging.getLogger("pocketdet.predict")
_DONE = object()


def prefetch(iterable: Iterable, depth: int = 4) -> Iterator:
    """Items of `iterable`, produced by a background thread at most `depth` ahead. An exception in the
    producer is raised here, at the item where it happened; closing the generator stops the producer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for x in iterable:
                while not stop.is_set():
                    try:
                        q.put(("item", x), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", _DONE))
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(("error", e))

    t = threading.Thread(target=produce, name="pocketdet-prefetch", daemon=True)
    t.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise x
            yield x
    finally:
        stop.set()
        t.join(timeout=5)


class BackgroundWriter:
    """Runs submitted jobs in order on one thread (bounded queue); `close()` waits and re-raises the first
    error. Sequential mode (`threaded=False`) runs each job at once, for measuring the overlap."""

    def __init__(self, depth: int = 4, threaded: bool = True):
        self.error: BaseException | None = None
        self.threaded = threaded
        if threaded:
            self.q: queue.Queue = queue.Queue(maxsize=depth)
            self.thread = threading.Thread(target=self._work, name="pocketdet-writer", daemon=True)
            self.thread.start()

    def submit(self, fn: Callable, *args) -> None:
        if self.error is not None:
            raise self.error
        if self.threaded:
            self.q.put((fn, args))
        else:
            fn(*args)

    def _work(self) -> None:
        while True:
            job = self.q.get()
            if job is _DONE:
                return
            if self.error is None:
                try:
                    job[0](*job[1])
                except BaseException as e:
                    self.error = e

    def close(self) -> None:
        if self.threaded:
            self.q.put(_DONE)
            self.thread.join()
        if self.error is not None:
            raise self.error


class VideoWriter:
    """Annotated frames -> an H.264 (or MPEG-4 part 2, when the FFmpeg build lacks libx264) .mp4 via PyAV."""

    def __init__(self, path: Path, fps: float):
        import av
        from fractions import Fraction

        self.path = path
        self.container = av.open(str(path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=Fraction(round(fps * 1000), 1000))
        self.stream.pix_fmt = "yuv420p"
        self.opened = False
        self._av = av

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2] // np.array(2) * 2  # yuv420p needs even sizes: drop an odd last row/column
        if not self.opened:
            self.stream.width, self.stream.height = int(w), int(h)
            self.opened = True
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.opened:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


class Outputs:
    """Where each item's results go (runs on the writer thread, except `summary`)."""

    def __init__(self, out: Path, class_names: list[str], conf: float, png: bool, stride: int):
        self.out, self.class_names, self.conf, self.png, self.stride = out, class_names, conf, png, stride
        self.image_results: list[dict] = []
        self.videos: dict[str, tuple[VideoWriter, object]] = {}  # out_name -> (writer, jsonl file)
        self.counts = {"images": 0, "frames": 0, "skipped": 0}

    def write(self, frame: Frame, dets) -> None:
        boxes, scores, labels = dets
        if frame.item.kind == "image":
            suffix = ".png" if self.png else ".jpg"
            path = self.out / f"{frame.item.out_name}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            drawn = draw_detections(Image.fromarray(frame.rgb), boxes, scores, labels, self.class_names, self.conf)
            drawn.save(path, **({} if self.png else {"quality": 90}))
            rec = detections_to_json(Path(frame.item.location), boxes, scores, labels, self.class_names, self.conf)
            rec["output"] = str(path.relative_to(self.out))
            self.image_results.append(rec)
            self.counts["images"] += 1
            return
        writer, lines = self._video(frame.item)
        drawn = draw_detections(Image.fromarray(frame.rgb), boxes, scores, labels, self.class_names, self.conf)
        writer.write(np.asarray(drawn))
        rec = detections_to_json(Path(frame.item.location), boxes, scores, labels, self.class_names, self.conf)
        rec = {"source": rec.pop("image"), "frame": frame.index, "time_s": frame.time_s, **rec}
        lines.write(json.dumps(rec) + "\n")
        self.counts["frames"] += 1

    def _video(self, item: Item):
        if item.out_name not in self.videos:
            base = self.out / item.out_name
            base.parent.mkdir(parents=True, exist_ok=True)
            fps = video_rate(item) / self.stride
            self.videos[item.out_name] = (VideoWriter(base.with_suffix(".mp4"), fps),
                                          base.with_suffix(".jsonl").open("w"))
        return self.videos[item.out_name]

    def skip(self, frame: Frame) -> None:
        log.warning("skipping %s: %s", frame.item.location, frame.error)
        self.counts["skipped"] += 1

    def close(self) -> None:
        for writer, lines in self.videos.values():
            writer.close()
            lines.close()
        if self.image_results or not self.videos:
            (self.out / "predictions.json").write_text(json.dumps(self.image_results, indent=1))


def run_predict(items: list[Item], prepare: Callable, infer: Callable, class_names: list[str], out: Path,
                conf: float = 0.3, png: bool = False, stride: int = 1, max_frames: int | None = None,
                overlap: bool = True, depth: int = 4, progress=None) -> dict:
    """Detect on every item; returns counts {images, frames, skipped}. `prepare(rgb)` runs on the reader
    thread (decode-side work: resize), `infer(prepared) -> (boxes, scores, labels)` on this thread.
    `overlap=False` runs the same steps one after another (the sequential baseline)."""
    out.mkdir(parents=True, exist_ok=True)
    outputs = Outputs(out, class_names, conf, png, stride)
    writer = BackgroundWriter(depth, threaded=overlap)

    def read():
        for fr in frames(items, stride, max_frames):
            yield fr, (None if fr.rgb is None else prepare(fr.rgb))

    stream = prefetch(read(), depth) if overlap else read()
    try:
        for fr, prepared in stream:
            if fr.rgb is None:
                writer.submit(outputs.skip, fr)
            else:
                writer.submit(outputs.write, fr, infer(prepared))
            if progress is not None:
                progress(fr)
    except KeyboardInterrupt:  # a camera runs until stopped: keep what was written
        log.warning("interrupted: closing the outputs")
    finally:
        if hasattr(stream, "close"):
            stream.close()
        try:
            writer.close()
        finally:
            outputs.close()
    return outputs.counts
