"""The wake-up that lets delivery sleep until this process adds pending work.

Every store signals it after an ingest, replay, release or forget commits; delivery waits on
it with a timeout, because work added by other processes (a CLI replay, another `serve` on
PostgreSQL) and expiring backoffs are only found by polling.
"""

from __future__ import annotations

import asyncio


class WorkSignal:
    """An ``asyncio.Event`` bound to the loop that uses it: a store may outlive one event
    loop (tests, the CLI), and an Event must not be shared across loops."""

    __slots__ = ("_event", "_loop")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def _current(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._event is None or self._loop is not loop:
            self._loop, self._event = loop, asyncio.Event()
        return self._event

    def set(self) -> None:
        """Pending work was added (call from the event loop)."""
        self._current().set()

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True when work was signalled within ``timeout`` seconds, False on timeout."""
        event = self._current()
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        event.clear()
        return True
