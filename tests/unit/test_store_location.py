"""The one place that opens the queue: URLs, creation, the owner, and a store not found."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from posthog_customerio.errors import ConfigError, QueueUnavailable, StoreNotFound
from posthog_customerio.queue.location import StoreLocation, redact_url
from posthog_customerio.queue.migrations import migrations
from posthog_customerio.queue.postgres import PostgresQueue
from posthog_customerio.queue.sqlite import SQLiteQueue
from tests.pg import PgServer, dsn_for
from tests.unit.test_queue_contract import MAPPER, ev


def sqlite_at(path: Path) -> StoreLocation:
    return StoreLocation(f"sqlite:///{path}")


def test_urls_and_how_they_are_shown(tmp_path: Path) -> None:
    loc = sqlite_at(tmp_path / "q.db")
    assert loc.sqlite_path == tmp_path / "q.db" and not loc.is_postgres
    assert str(loc) == str(tmp_path / "q.db")
    assert StoreLocation("sqlite:///data/connector.db").sqlite_path == Path("data/connector.db")
    pg = StoreLocation("postgres://u:pw@db.internal:5432/phcio")
    assert pg.is_postgres and pg.sqlite_path is None
    assert str(pg) == "postgres://u:***@db.internal:5432/phcio"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ConfigError, match="database_url: 'mysql' is not supported"):
        StoreLocation("mysql://u@h/db")


def test_the_store_is_opened_without_io_and_started_by_its_lifecycle(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "q.db"
    store = sqlite_at(path).open(owner=True)
    assert isinstance(store, SQLiteQueue)
    assert not path.parent.exists()  # nothing until start()
    assert isinstance(StoreLocation("postgresql://u@h/db").open(owner=False), PostgresQueue)

    async def body() -> None:
        with pytest.raises(QueueUnavailable, match="not started"):
            await store.stats(time.time())
        await store.start()
        await store.start()  # idempotent
        assert (await store.ingest([ev("u1")], MAPPER)).accepted == 1
        await store.close()
        await store.close()  # idempotent

    asyncio.run(body())
    assert path.exists()


def test_a_command_finds_no_sqlite_store_and_creates_nothing(tmp_path: Path) -> None:
    loc = sqlite_at(tmp_path / "data" / "connector.db")

    async def body() -> None:
        with pytest.raises(StoreNotFound) as caught:
            async with loc.opened():
                raise AssertionError("opened a store that does not exist")
        message = str(caught.value)
        assert str(tmp_path / "data" / "connector.db") in message
        for way in ("--data-dir", "--database-url", "POSTHOG_CUSTOMERIO_DATABASE_URL"):
            assert way in message
        assert await loc.owner_running() is False

    asyncio.run(body())
    assert list(tmp_path.iterdir()) == []


def test_migrate_creates_then_commands_open_it_and_see_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "data" / "connector.db"
    loc = sqlite_at(path)

    async def body() -> None:
        assert await loc.migrate() == [m.version for m in migrations("sqlite")]
        assert await loc.migrate() == []
        async with loc.opened() as store:
            assert (await store.stats(time.time())).depth == 0
        assert await loc.owner_running() is False
        owner = loc.open(owner=True)
        await owner.start()
        try:
            assert await loc.owner_running() is True
            async with loc.opened(create=True) as store:  # backfill beside serve
                assert (await store.ingest([ev("u1")], MAPPER)).accepted == 1
        finally:
            await owner.close()
        assert await loc.owner_running() is False

    asyncio.run(body())


def test_postgresql_migrate_owner_and_a_missing_database(pg_server: PgServer) -> None:
    name = pg_server.empty_database()
    loc = StoreLocation(dsn_for(name), lease_secs=5.0, heartbeat_secs=1.0)
    missing = StoreLocation(dsn_for(f"{pg_server.prefix}_missing"))

    async def body() -> None:
        with pytest.raises(QueueUnavailable, match="posthog-customerio migrate"):
            async with loc.opened():
                pass
        assert await loc.migrate() == [m.version for m in migrations("postgres")]
        assert await loc.migrate() == []
        assert await loc.owner_running() is False
        owner = loc.open(owner=True)
        await owner.start()
        try:
            assert await loc.owner_running() is True
            async with loc.opened(create=True) as store:
                assert (await store.ingest([ev("u1")], MAPPER)).accepted == 1
        finally:
            await owner.close()
        assert await loc.owner_running() is False
        for attempt in (missing.migrate(), missing.owner_running()):
            with pytest.raises(StoreNotFound, match=f"{pg_server.prefix}_missing"):
                await attempt

    try:
        asyncio.run(body())
    finally:
        pg_server.drop(name)
