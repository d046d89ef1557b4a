"""Face counting on gate snapshots: MTCNN (P/R/O-net ONNX weights from the `mtcnn-runtime` wheel)
run with onnxruntime, images decoded with OpenCV.

Why our own runner instead of `mtcnnruntime.MTCNN`: its `detect()` crashes on images where P-net
finds no candidate at all (np.vstack of an empty list), prints to stdout, and feeds O-net by R-net's
input name. We reuse only its weight files, which is what the design asks for (no download, ever).

Privacy: the image lives only inside `detect_faces()`; nothing here stores, logs or returns pixels.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

Box = tuple[int, int, int, int, float]   # x, y, w, h, score

#: Bigger uploads are refused before decoding (a gate snapshot is ~50-300 kB).
MAX_IMAGE_BYTES = 8 * 1024 * 1024
#: Snapshots are scaled down so the longer side is at most this; gate cameras frame faces large,
#: and the P-net pyramid cost grows with the pixel count.
MAX_SIDE = 800
#: Smallest face (pixels, at working resolution) worth counting at a gate.
MIN_FACE = 24
#: P-net and R-net candidate thresholds; the final gate is the caller's min_score on O-net.
_STAGE_THRESHOLDS = (0.6, 0.7)
_NMS = (0.7, 0.7, 0.7)


def weights_dir() -> Path:
    """Where the mtcnn-runtime wheel installed its ONNX weights (found without importing it)."""
    spec = importlib.util.find_spec("mtcnnruntime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mtcnn-runtime is not installed; it ships the face-detector weights")
    return Path(next(iter(spec.submodule_search_locations))) / "weights"


def _nms(boxes: np.ndarray, thresh: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression over rows (x1, y1, x2, y2, score)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-s)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= thresh]
    return np.asarray(keep, dtype=np.int64)


def _calibrate(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out = boxes.copy()
    out[:, :4] += np.stack([w, h, w, h], axis=1) * offsets
    return out


def _square(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w / 2 - side / 2
    out[:, 1] = boxes[:, 1] + h / 2 - side / 2
    out[:, 2] = out[:, 0] + side - 1
    out[:, 3] = out[:, 1] + side - 1
    out[:, :4] = np.round(out[:, :4])
    return out


def _norm(img: np.ndarray) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32 in [-1, 1], the scaling the weights were trained with."""
    return ((img.astype(np.float32) - 127.5) * 0.0078125).transpose(2, 0, 1)


def _crops(boxes: np.ndarray, img: np.ndarray, size: int) -> np.ndarray:
    """Cut each box out of img (zero padding where it leaves the image), resized to size x size."""
    out = np.zeros((len(boxes), 3, size, size), np.float32)
    H, W = img.shape[:2]
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if bw <= 0 or bh <= 0:
            continue
        patch = np.zeros((bh, bw, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, W - 1), min(y2, H - 1)
        if sx2 >= sx1 and sy2 >= sy1:
            patch[sy1 - y1:sy2 - y1 + 1, sx1 - x1:sx2 - x1 + 1] = img[sy1:sy2 + 1, sx1:sx2 + 1]
        out[k] = _norm(cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA))
    return out


class FaceDetector:
    """The three MTCNN stages. One instance per process; onnxruntime sessions are thread-safe for
    run(), and this class keeps no per-call state, so concurrent detect() calls are fine."""

    def __init__(self, weights: Path | None = None, threads: int = 1) -> None:
        d = weights or weights_dir()
        opts = ort.SessionOptions()
        # One intra-op thread: the box has 2 cores and the agent's pollers must keep theirs.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        mk = lambda name: ort.InferenceSession(str(d / f"{name}.onnx"), opts,  # noqa: E731
                                               providers=["CPUExecutionProvider"])
        self._pnet, self._rnet, self._onet = mk("pnet"), mk("rnet"), mk("onet")

    def detect(self, bgr: np.ndarray, min_score: float = 0.9, min_face: int = MIN_FACE) -> np.ndarray:
        """Rows (x1, y1, x2, y2, score) in the coordinates of `bgr`, score = O-net probability."""
        scale0 = min(1.0, MAX_SIDE / max(bgr.shape[:2]))
        if scale0 < 1.0:
            bgr = cv2.resize(bgr, None, fx=scale0, fy=scale0, interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        boxes = self._stage1(rgb, min_face)
        if len(boxes):
            boxes = self._refine(self._rnet, rgb, boxes, 24, _STAGE_THRESHOLDS[1], _NMS[1])
        if len(boxes):
            boxes = self._refine(self._onet, rgb, boxes, 48, min_score, _NMS[2], last=True)
        boxes[:, :4] /= scale0
        return boxes

    def _stage1(self, rgb: np.ndarray, min_face: int) -> np.ndarray:
        h, w = rgb.shape[:2]
        m = 12.0 / min_face
        found = []
        s, side = m, min(h, w) * m
        while side >= 12:
            sw, sh = math.ceil(w * s), math.ceil(h * s)
            img = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_LINEAR)
            offsets, probs = self._pnet.run(None, {"input": _norm(img)[None]})
            p = probs[0, 1]
            ys, xs = np.nonzero(p > _STAGE_THRESHOLDS[0])
            if ys.size:
                # P-net is a 12x12 window sliding with stride 2 over the scaled image.
                b = np.stack([np.round((2 * xs + 1) / s), np.round((2 * ys + 1) / s),
                              np.round((2 * xs + 1 + 12) / s), np.round((2 * ys + 1 + 12) / s),
                              p[ys, xs]], axis=1)
                off = offsets[0, :, ys, xs]
                b = np.hstack([b, off.reshape(-1, 4)])
                found.append(b[_nms(b[:, :5], 0.5)])
            s *= 0.709
            side *= 0.709
        if not found:
            return np.zeros((0, 5), np.float64)
        b = np.vstack(found)
        b = b[_nms(b[:, :5], _NMS[0])]
        return _square(_calibrate(b[:, :5], b[:, 5:9]))

    @staticmethod
    def _refine(net: ort.InferenceSession, rgb: np.ndarray, boxes: np.ndarray, size: int,
                thresh: float, nms: float, last: bool = False) -> np.ndarray:
        out = net.run(None, {"input": _crops(boxes, rgb, size)})
        offsets, probs = (out[1], out[2]) if last else (out[0], out[1])
        keep = probs[:, 1] > thresh
        b, off = boxes[keep].copy(), offsets[keep]
        b[:, 4] = probs[keep, 1]
        if last:
            # O-net: calibrate first, then suppress boxes mostly inside a better one.
            b = _calibrate(b, off)
            return b[_nms(b, nms, mode="min")]
        k = _nms(b, nms)
        return _square(_calibrate(b[k], off[k]))


_detector: FaceDetector | None = None
_lock = threading.Lock()


def get_detector() -> FaceDetector:
    """The process-wide detector, created (models loaded) on first use only."""
    global _detector
    if _detector is None:
        with _lock:
            if _detector is None:
                _detector = FaceDetector()
    return _detector


def decode(image_bytes: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> BGR uint8 array. ValueError for anything that is not a decodable image."""
    if not isinstance(image_bytes, (bytes, bytearray, memoryview)) or len(image_bytes) == 0:
        raise ValueError("not a decodable image")
    if len(image_bytes) > MAX_IMAGE_BYTES:
        raise ValueError(f"image too large ({len(image_bytes)} bytes > {MAX_IMAGE_BYTES})")
    buf = np.frombuffer(image_bytes, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:
        img = None
    if img is None or img.ndim != 3 or min(img.shape[:2]) < 12:
        raise ValueError("not a decodable image")
    return img


def detect_faces(image_bytes: bytes, min_score: float = 0.9) -> list[Box]:
    """Faces in a snapshot as (x, y, w, h, score), best first. The image is decoded, analysed and
    dropped here: nothing is kept. ValueError("not a decodable image") for garbage."""
    if not 0.0 < min_score < 1.0:
        raise ValueError("min_score must be in (0, 1)")
    img = decode(image_bytes)
    boxes = get_detector().detect(img, min_score=min_score)
    H, W = img.shape[:2]
    out: list[Box] = []
    for x1, y1, x2, y2, s in boxes[np.argsort(-boxes[:, 4])] if len(boxes) else []:
        x1, y1 = max(0, int(round(x1))), max(0, int(round(y1)))
        x2, y2 = min(W - 1, int(round(x2))), min(H - 1, int(round(y2)))
        if x2 > x1 and y2 > y1:
            out.append((x1, y1, x2 - x1 + 1, y2 - y1 + 1, float(s)))
    return out


def tailgating(face_count: int, granted: bool, persons: int = 1) -> bool:
    """True when more faces passed than the gate let through: an access granted for `persons`
    people but the snapshot shows more (尾随). A denied access with any face is not tailgating
    (that is a refused entry, reported by the gate itself)."""
    if face_count < 0 or persons < 0:
        raise ValueError("counts must be >= 0")
    return granted and face_count > persons
