"""Helpers shared by the three command-line tools: errors for people, JSON for machines."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, NoReturn

import typer


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error for the person at the terminal and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(doc: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2, default=str) + "\n")


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain aligned text table that also lines up Chinese names (wide characters count 2)."""
    import unicodedata

    def width(s: str) -> int:
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)

    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(width(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c + " " * (widths[i] - width(c)) for i, c in enumerate(r)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run main(stop) in asyncio until it returns; SIGTERM and Ctrl-C set `stop` so it can finish
    its work (commit, ack, say goodbye to the broker) and return cleanly."""
    import signal

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    from common.mqtt import MqttSetupError

    try:
        asyncio.run(runner())
    except MqttSetupError as exc:  # TLS files that exist but cannot be used: say so, no traceback
        fail(str(exc), 2)


def load_config_or_fail(load: Callable[[Path], Any], path: Path, hint: str) -> Any:
    """Load a config with `load`; on a ConfigError print every problem and `hint` (when the file
    does not exist) and exit with code 2."""
    from common.yamlconf import ConfigError

    try:
        return load(path)
    except ConfigError as exc:
        more = f"\n  {hint}" if not path.exists() else ""
        fail(f"cannot use {path}:\n  " + str(exc).replace("\n", "\n  ") + more, 2)
