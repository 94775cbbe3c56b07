"""Where the queue lives: the one place that turns a database URL into a store.

Every command opens the queue here (``serve`` as its owner; ``backfill``, ``migrate``,
``status``, ``dead-letters`` and ``forget`` beside it), so they all accept the same URLs, only
``serve``, ``migrate`` and ``backfill`` create a store, and a command that finds none says
where it looked (``StoreNotFound``) instead of leaving an empty folder behind.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from posthog_customerio.errors import ConfigError
from posthog_customerio.queue.base import Queue

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``."""
    return re.sub(r"^([a-z]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """A database URL, checked: ``sqlite:///relative/or/absolute.db`` (``sqlite:////abs`` is
    absolute) or ``postgresql://…``. ``lease_secs`` and ``heartbeat_secs`` are PostgreSQL's
    (who counts as a live worker, how often the owner says so)."""

    url: str
    lease_secs: float = 30.0
    heartbeat_secs: float = 5.0

    def __post_init__(self) -> None:
        if not self.url.startswith((SQLITE_PREFIX, *POSTGRES_PREFIXES)):
            raise ConfigError([f"database_url: {self.url.split(':', 1)[0]!r} is not supported"])

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith(POSTGRES_PREFIXES)

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None on PostgreSQL."""
        return None if self.is_postgres else Path(self.url.removeprefix(SQLITE_PREFIX))

    def __str__(self) -> str:
        """For messages and logs: the SQLite path, or the URL without its password."""
        path = self.sqlite_path
        return redact_url(self.url) if path is None else str(path)

    def open(self, *, owner: bool) -> Queue:
        """The store, not started yet (no I/O): call ``start()`` then ``close()``.

        ``owner=True`` is ``serve``: on start it creates or migrates the store and registers as
        its serving process. ``owner=False`` is a command beside it: it needs an existing
        store at the current schema (``StoreNotFound`` if there is none) and creates nothing.
        """
        path = self.sqlite_path
        if path is None:
            from posthog_customerio.queue.postgres import PostgresQueue

            return PostgresQueue.open(
                self.url,
                owner=owner,
                lease_secs=self.lease_secs,
                heartbeat_secs=self.heartbeat_secs,
            )
        from posthog_customerio.queue.sqlite import SQLiteQueue

        return SQLiteQueue(path, owner=owner)

    async def migrate(self) -> list[int]:
        """Create the store if needed (the SQLite file and its folder; a PostgreSQL database
        must exist) and apply the pending migrations; returns their versions. Safe beside a
        running ``serve``."""
        path = self.sqlite_path
        if path is None:
            from posthog_customerio.queue.postgres import migrate_database

            return await migrate_database(self.url)
        from posthog_customerio.queue.sqlite import migrate_file

        return await asyncio.to_thread(migrate_file, path)

    async def owner_running(self) -> bool:
        """Whether a ``serve`` owns the store now (on PostgreSQL: any live worker), so that
        what a command enqueues gets delivered without starting one."""
        path = self.sqlite_path
        if path is not None:
            from posthog_customerio.queue.sqlite import owner_running

            return owner_running(path)
        async with self.opened() as store:
            return bool(await store.workers())

    @asynccontextmanager
    async def opened(self, *, create: bool = False) -> AsyncIterator[Queue]:
        """The store, started as a non-owner for one command, closed after it. Without
        ``create`` a missing store raises ``StoreNotFound``; with it (``backfill``) the store
        is created or migrated first, as ``serve`` would."""
        if create:
            await self.migrate()
        store = self.open(owner=False)
        try:
            await store.start()
            yield store
        finally:
            await store.close()
