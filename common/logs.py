"""One log format for every Poplar process: time, level, component, message."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # pymodbus and paho log every retry at INFO/ERROR; our own lines say what matters once.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)
