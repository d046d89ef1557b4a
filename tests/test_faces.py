"""Face counting on real photographs (tests/data/README.md lists them and their licences)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edge.analytics import faces
from edge.analytics.faces import detect_faces, tailgating

DATA = Path(__file__).parent / "data"


def jpg(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_package_import_does_not_load_cv2_or_onnxruntime():
    code = ("import sys, edge.analytics as a; "
            "assert 'cv2' not in sys.modules and 'onnxruntime' not in sys.modules, 'loaded'; "
            "import edge.analytics.anomaly, edge.analytics.carewatch; "
            "assert 'cv2' not in sys.modules and 'onnxruntime' not in sys.modules, 'loaded later'; "
            "assert callable(a.CareWatch)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["astronaut.jpg", "grace_hopper.jpg"])
def test_one_face(name):
    found = detect_faces(jpg(name))
    assert len(found) == 1
    x, y, w, h, score = found[0]
    assert score >= 0.9 and w >= 60 and h >= 60
    img = cv2.imdecode(np.frombuffer(jpg(name), np.uint8), cv2.IMREAD_COLOR)
    assert 0 <= x and x + w <= img.shape[1] and 0 <= y and y + h <= img.shape[0]


def test_face_box_is_on_the_face():
    # Eileen Collins' face in skimage's astronaut.png lies around x 180-265, y 60-170.
    (x, y, w, h, _), = detect_faces(jpg("astronaut.jpg"))
    cx, cy = x + w / 2, y + h / 2
    assert 190 < cx < 255 and 80 < cy < 150


def test_coffee_cup_is_not_a_face():
    assert detect_faces(jpg("coffee.jpg")) == []
    # not even a weak candidate survives the three stages
    assert detect_faces(jpg("coffee.jpg"), min_score=0.3) == []


def test_min_score_is_the_o_net_confidence():
    low = detect_faces(jpg("grace_hopper.jpg"), min_score=0.2)
    high = detect_faces(jpg("grace_hopper.jpg"))
    assert all(s >= 0.2 for *_, s in low) and all(s >= 0.9 for *_, s in high)
    assert len(low) >= len(high) == 1
    assert [s for *_, s in low] == sorted((s for *_, s in low), reverse=True)


def test_two_faces_shipped_image():
    found = detect_faces(jpg("two_faces.jpg"))
    assert len(found) == 2
    xs = sorted(x for x, *_ in found)
    assert xs[1] > xs[0] + 150   # one per person, side by side


def test_two_faces_composed_at_run_time():
    a = cv2.imdecode(np.frombuffer(jpg("astronaut.jpg"), np.uint8), cv2.IMREAD_COLOR)[0:300, 100:350]
    g = cv2.imdecode(np.frombuffer(jpg("grace_hopper.jpg"), np.uint8), cv2.IMREAD_COLOR)[40:440, 110:420]
    g = cv2.resize(g, (232, 300), interpolation=cv2.INTER_AREA)
    both = np.hstack([g, np.zeros((300, 60, 3), np.uint8), a])
    ok, buf = cv2.imencode(".jpg", both)
    assert ok
    assert len(detect_faces(buf.tobytes())) == 2


def test_png_and_grey_also_work():
    img = cv2.imdecode(np.frombuffer(jpg("astronaut.jpg"), np.uint8), cv2.IMREAD_GRAYSCALE)
    ok, buf = cv2.imencode(".png", img)
    assert ok and len(detect_faces(buf.tobytes())) == 1


def test_large_snapshot_is_scaled_down_and_boxes_scaled_back():
    img = cv2.imdecode(np.frombuffer(jpg("astronaut.jpg"), np.uint8), cv2.IMREAD_COLOR)
    big = cv2.resize(img, (1600, 1600))
    ok, buf = cv2.imencode(".jpg", big)
    (x, y, w, h, _), = detect_faces(buf.tobytes())
    assert 2.5 < w / 87 < 3.7 and 600 < x + w / 2 < 800


@pytest.mark.parametrize("blob", [b"", b"hello", b"\xff\xd8\xff\xe0" + b"\x00" * 100, bytes(range(256)) * 8])
def test_garbage_raises_value_error(blob):
    with pytest.raises(ValueError, match="not a decodable image"):
        detect_faces(blob)


def test_truncated_jpeg_is_garbage_or_decodes():
    data = jpg("astronaut.jpg")
    try:
        detect_faces(data[:200])
    except ValueError as e:
        assert "not a decodable image" in str(e)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(blob):
    try:
        assert isinstance(detect_faces(blob), list)
    except ValueError:
        pass


def test_noise_and_flat_images_have_no_face():
    rng = np.random.default_rng(0)
    for img in (rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), np.full((480, 640, 3), 128, np.uint8)):
        ok, buf = cv2.imencode(".jpg", img)
        assert detect_faces(buf.tobytes()) == []


def test_oversized_upload_is_refused_before_decoding():
    with pytest.raises(ValueError, match="too large"):
        detect_faces(b"\xff" * (faces.MAX_IMAGE_BYTES + 1))


def test_detector_is_created_once_even_under_concurrency(monkeypatch):
    made = []
    real = faces.FaceDetector

    class Counting(real):
        def __init__(self, *a, **k):
            made.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(faces, "_detector", None)
    monkeypatch.setattr(faces, "FaceDetector", Counting)
    got = []
    barrier = threading.Barrier(8)

    def work():
        barrier.wait()
        got.append(faces.get_detector())

    ts = [threading.Thread(target=work) for _ in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert len(made) == 1 and len({id(d) for d in got}) == 1


def test_concurrent_detections_agree():
    data = jpg("two_faces.jpg")
    want = detect_faces(data)
    out: list = []
    ts = [threading.Thread(target=lambda: out.append(detect_faces(data))) for _ in range(6)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert out == [want] * 6


def test_weights_come_from_the_installed_wheel():
    d = faces.weights_dir()
    assert {p.name for p in d.glob("*.onnx")} >= {"pnet.onnx", "rnet.onnx", "onet.onnx"}


@pytest.mark.parametrize("count,granted,persons,want", [
    (2, True, 1, True), (1, True, 1, False), (0, True, 1, False),
    (2, True, 2, False), (3, True, 2, True), (2, False, 1, False),
])
def test_tailgating(count, granted, persons, want):
    assert tailgating(count, granted, persons) is want


def test_tailgating_on_the_two_face_snapshot():
    assert tailgating(len(detect_faces(jpg("two_faces.jpg"))), granted=True)
    assert not tailgating(len(detect_faces(jpg("astronaut.jpg"))), granted=True)


def test_tailgating_rejects_negative_counts():
    with pytest.raises(ValueError):
        tailgating(-1, True)
