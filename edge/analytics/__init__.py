"""On-box analytics: face counting on gate snapshots, meter-day anomaly scores, care watch.

Importing this package loads neither OpenCV nor onnxruntime: the agent imports it even when
analytics are off. Names are resolved lazily (PEP 562), so `from edge.analytics import
detect_faces` pays for cv2/onnxruntime only then, and the face models load on first detection.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "detect_faces": "faces", "tailgating": "faces", "get_detector": "faces",
    "LoadAnomalyModel": "anomaly",
    "CareWatch": "carewatch", "CareWatchConfig": "carewatch", "CareAlert": "carewatch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
