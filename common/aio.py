"""Small asyncio helpers."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for an event up to `timeout` s; True if it was set.

    Uses asyncio.timeout rather than wait_for: on Python 3.11, wait_for can swallow a
    cancellation that arrives just as the event is set, and a task then never stops.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return event.is_set()
