"""`poplar-edge analytics ...`: on-box analytics checks for installers.

`analytics faces IMAGE` counts the faces in a photo taken by a gate camera, so an installer can
check the camera angle and distance before relying on tailgating detection. The image is read,
analysed and dropped; nothing is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.cli import fail, print_json, table
from edge.cli.options import JsonOpt

app = typer.Typer(no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="analytics", help="Check the on-box analytics (face counting at gates).")


@app.command("faces")
def faces(
    image: Annotated[Path, typer.Argument(help="a JPEG or PNG snapshot from the gate camera")],
    min_score: Annotated[float, typer.Option(help="smallest detector confidence that counts as a face (0-1)")] = 0.9,
    json: JsonOpt = False,
) -> None:
    """Count the faces in IMAGE and print their boxes (x, y, width, height, confidence)."""
    if not 0.0 < min_score < 1.0:
        fail(f"--min-score {min_score}: use a value between 0 and 1, e.g. 0.9", 2)
    try:
        data = image.read_bytes()
    except IsADirectoryError:
        fail(f"{image} is a folder; give the path of one JPEG or PNG file", 2)
    except OSError as exc:
        fail(f"cannot read {image}: {exc.strerror or exc}", 2)
    # Imported here: OpenCV and onnxruntime load only for this command, not for every CLI call.
    try:
        from edge.analytics.faces import detect_faces
        boxes = detect_faces(data, min_score=min_score)
    except ValueError as exc:
        fail(f"{image}: {exc}; use a JPEG or PNG photo saved from the gate camera", 1)
    except (ImportError, RuntimeError) as exc:
        fail(f"the face detector is not available ({exc}); install the poplar package with its "
             "dependencies (opencv-python, onnxruntime, mtcnn-runtime)", 1)
    rows = [[int(x), int(y), int(w), int(h), round(float(s), 4)] for x, y, w, h, s in boxes]
    if json:
        print_json({"faces": len(rows), "boxes": rows})
        return
    typer.echo(f"{len(rows)} face{'s' if len(rows) != 1 else ''} in {image}")
    if rows:
        typer.echo(table([[*r[:4], f"{r[4]:.3f}"] for r in rows], ["x", "y", "width", "height", "score"]))
    if len(rows) == 0:
        typer.echo("no face found: check that people face the camera and are not backlit; faces smaller "
                   "than about 24 px (after scaling to 800 px) are not looked for")
