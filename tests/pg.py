"""PostgreSQL for tests: one server check, one migrated template, a fresh clone per test.

The server is ``POSTHOG_CUSTOMERIO_TEST_PG`` (an admin DSN), by default the local trust-auth
``postgresql://postgres@127.0.0.1:5432/postgres``. Without a reachable server the tests that
need one are skipped with the reason, except under ``CI=true``, where that is a failure.

The session creates ``phcio_test_<random>_tpl`` with every migration applied; each test gets
``CREATE DATABASE ... TEMPLATE`` of it (a file copy, tens of milliseconds) and drops it after.
Every database this session created is dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from posthog_customerio.queue.postgres import PostgresQueue, apply_migrations

ADMIN_DSN = os.environ.get(
    "POSTHOG_CUSTOMERIO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def dsn_for(database: str, admin_dsn: str = ADMIN_DSN) -> str:
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{database}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def admin(sql: str) -> None:
    asyncio.run(_admin(sql))


async def _fetch(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def fetch(dsn: str, sql: str, *args: Any) -> list[Any]:
    return asyncio.run(_fetch(dsn, sql, *args))


def server_problem() -> str | None:
    """None when the server answers, else why not."""
    try:
        admin("SELECT 1")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        return f"PostgreSQL not reachable at {ADMIN_DSN}: {type(exc).__name__}: {exc}"
    return None


async def crash(queue: PostgresQueue) -> None:
    """Make ``queue`` stop as a SIGKILL would: no more heartbeats, connections dropped, nothing
    released, so its leases run out by themselves. Reaches into the queue's private parts on
    purpose: the product never needs this."""
    queue._closed = True
    tasks = [*queue._writers, *([queue._heartbeat] if queue._heartbeat else [])]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if queue._pool is not None:
        queue._pool.terminate()


class PgServer:
    """The session's server: a migrated template and clones of it."""

    def __init__(self) -> None:
        self.prefix = f"phcio_test_{secrets.token_hex(4)}"
        self.template = f"{self.prefix}_tpl"
        self._n = 0

    def create_template(self) -> None:
        admin(f'CREATE DATABASE "{self.template}"')

        async def migrate() -> None:
            conn = await asyncpg.connect(dsn_for(self.template), timeout=5)
            try:
                await apply_migrations(conn)
            finally:
                await conn.close()

        asyncio.run(migrate())

    def empty_database(self) -> str:
        """A new database without any schema; its name."""
        self._n += 1
        name = f"{self.prefix}_{self._n}"
        admin(f'CREATE DATABASE "{name}"')
        return name

    def clone(self) -> str:
        """A new database with the current schema (from the template); its name."""
        self._n += 1
        name = f"{self.prefix}_{self._n}"
        admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def drop(self, name: str) -> None:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        rows = fetch(
            ADMIN_DSN,
            "SELECT datname FROM pg_database WHERE datname LIKE $1",
            f"{self.prefix}%",
        )
        for (name,) in rows:
            if name != self.template:
                self.drop(name)
        self.drop(self.template)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    problem = server_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem} (CI=true: the PostgreSQL tests must run; .ci/run starts it)")
        pytest.skip(f"{problem}; set POSTHOG_CUSTOMERIO_TEST_PG or start PostgreSQL")
    server = PgServer()
    server.create_template()
    try:
        yield server
    finally:
        server.drop_all()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, migrated database for this test; dropped after it."""
    name = pg_server.clone()
    try:
        yield dsn_for(name)
    finally:
        pg_server.drop(name)
