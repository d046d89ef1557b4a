"""`poplar-edge analytics faces IMAGE [--json]` on real photos (tests/data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app
from tests.conftest import run_cli

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name,count", [("two_faces.jpg", 2), ("coffee.jpg", 0)])
def test_faces_json_through_the_console_script(name, count):
    r = run_cli("poplar-edge", "analytics", "faces", str(DATA / name), "--json")
    doc = json.loads(r.stdout)
    assert set(doc) == {"faces", "boxes"} and doc["faces"] == count == len(doc["boxes"])
    for box in doc["boxes"]:
        x, y, w, h, score = box
        assert all(isinstance(v, int) for v in (x, y, w, h)) and w > 50 and h > 50
        assert 0.9 <= score <= 1.0
    if count == 2:
        assert abs(doc["boxes"][0][0] - doc["boxes"][1][0]) > 150      # one per person


def test_faces_text_for_the_installer():
    r = CliRunner().invoke(app, ["analytics", "faces", str(DATA / "astronaut.jpg")])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("1 face in ")
    header, _, row = r.output.splitlines()[1:4]
    assert header.split() == ["x", "y", "width", "height", "score"]
    x, y, w, h, score = row.split()
    assert 150 < int(x) < 220 and float(score) >= 0.9


def test_no_face_says_what_to_check():
    r = CliRunner().invoke(app, ["analytics", "faces", str(DATA / "coffee.jpg")])
    assert r.exit_code == 0 and r.output.startswith("0 faces") and "no face found" in r.output


def test_min_score_option():
    r = CliRunner().invoke(app, ["analytics", "faces", str(DATA / "grace_hopper.jpg"), "--json", "--min-score", "0.2"])
    doc = json.loads(r.stdout)
    assert doc["faces"] >= 1 and all(b[4] >= 0.2 for b in doc["boxes"])


@pytest.mark.parametrize("args,code,message", [
    (["README.md"], 1, "not a decodable image; use a JPEG or PNG photo"),
    (["/no/such/photo.jpg"], 2, "cannot read /no/such/photo.jpg: No such file or directory"),
    ([str(DATA)], 2, "is a folder"),
    ([str(DATA / "astronaut.jpg"), "--min-score", "1.5"], 2, "--min-score 1.5: use a value between 0 and 1"),
])
def test_bad_input_gets_a_clear_error(args, code, message):
    r = CliRunner().invoke(app, ["analytics", "faces", *args])
    assert r.exit_code == code
    assert message in r.output and "Traceback" not in r.output


def test_broken_jpeg(tmp_path):
    p = tmp_path / "cut.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    r = run_cli("poplar-edge", "analytics", "faces", str(p), "--json", check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert "error:" in r.stderr and "not a decodable image" in r.stderr
