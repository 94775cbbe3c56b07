"""psycopg 3 (async + psycopg_pool) vs asyncpg on the queue's two hot paths.

    .venv/bin/python bench/pg_drivers.py [--dsn postgresql://postgres@127.0.0.1/postgres]

1. ingest: 64 concurrent callers, each a transaction of one 1-event batch (dedup insert,
   identity upsert, operation insert), like a webhook carrying one event;
2. claim + ack of 1000-operation batches: one ``FOR UPDATE SKIP LOCKED`` claim returning the
   bodies (~400 bytes each), then one ``DELETE ... WHERE id = ANY(...)``.

Each driver gets its own scratch database, created and dropped here. Needs both drivers:
``pip install "psycopg[binary,pool]" asyncpg`` (only asyncpg is a dependency of the project).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import psycopg
import psycopg_pool

SCHEMA = """
CREATE TABLE seen (uuid text PRIMARY KEY, seen_at double precision NOT NULL);
CREATE TABLE ident (id text PRIMARY KEY, state bytea NOT NULL);
CREATE TABLE ops (id bigserial PRIMARY KEY, pk text NOT NULL, body bytea NOT NULL,
                  claimed boolean NOT NULL DEFAULT false);
CREATE INDEX ops_pk ON ops (pk, id);
"""
BODY = (
    b'{"type":"person","action":"event","name":"clicked","attributes":{"x":"' + b"y" * 330 + b'"}}'
)
INGEST_TOTAL = 4_000
CALLERS = 64
CLAIM_BATCH = 1_000
CLAIM_ROUNDS = 20


def with_db(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


async def timed(n: int, fn: Callable[[], Awaitable[None]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return n / (time.perf_counter() - t0)


async def bench_psycopg(dsn: str) -> tuple[float, float]:
    async with psycopg_pool.AsyncConnectionPool(
        dsn, min_size=CALLERS, max_size=CALLERS, open=False
    ) as pool:
        await pool.wait()

        async def one(i: int) -> None:
            async with pool.connection() as conn, conn.transaction():
                u = uuid.uuid4().hex
                await conn.execute(
                    "INSERT INTO seen VALUES (%s, %s) ON CONFLICT DO NOTHING", (u, time.time())
                )
                await conn.execute(
                    "INSERT INTO ident VALUES (%s, %s) ON CONFLICT (id) DO UPDATE"
                    " SET state = excluded.state",
                    (f"u{i % 500}", b"{}"),
                )
                await conn.execute("INSERT INTO ops (pk, body) VALUES (%s, %s)", (f"u{i}", BODY))

        async def ingest() -> None:
            sem = asyncio.Semaphore(CALLERS)

            async def guarded(i: int) -> None:
                async with sem:
                    await one(i)

            await asyncio.gather(*(guarded(i) for i in range(INGEST_TOTAL)))

        ingest_rate = await timed(INGEST_TOTAL, ingest)
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO ops (pk, body) SELECT 'p' || (g %% 5000), %s"
                " FROM generate_series(1, %s) g",
                (BODY, CLAIM_BATCH * CLAIM_ROUNDS),
            )

        async def claims() -> None:
            for _ in range(CLAIM_ROUNDS):
                async with pool.connection() as conn, conn.transaction():
                    cur = await conn.execute(
                        "UPDATE ops SET claimed = true WHERE id IN (SELECT id FROM ops"
                        " WHERE NOT claimed ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
                        " RETURNING id, pk, body",
                        (CLAIM_BATCH,),
                    )
                    rows = await cur.fetchall()
                async with pool.connection() as conn:
                    await conn.execute(
                        "DELETE FROM ops WHERE id = ANY(%s)", ([r[0] for r in rows],)
                    )

        claim_rate = await timed(CLAIM_BATCH * CLAIM_ROUNDS, claims)
    return ingest_rate, claim_rate


async def bench_asyncpg(dsn: str) -> tuple[float, float]:
    pool = await asyncpg.create_pool(dsn, min_size=CALLERS, max_size=CALLERS)
    try:

        async def one(i: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                u = uuid.uuid4().hex
                await conn.execute(
                    "INSERT INTO seen VALUES ($1, $2) ON CONFLICT DO NOTHING", u, time.time()
                )
                await conn.execute(
                    "INSERT INTO ident VALUES ($1, $2) ON CONFLICT (id) DO UPDATE"
                    " SET state = excluded.state",
                    f"u{i % 500}",
                    b"{}",
                )
                await conn.execute("INSERT INTO ops (pk, body) VALUES ($1, $2)", f"u{i}", BODY)

        async def ingest() -> None:
            await asyncio.gather(*(one(i) for i in range(INGEST_TOTAL)))

        ingest_rate = await timed(INGEST_TOTAL, ingest)
        await pool.execute(
            "INSERT INTO ops (pk, body) SELECT 'p' || (g % 5000), $1 FROM generate_series(1, $2) g",
            BODY,
            CLAIM_BATCH * CLAIM_ROUNDS,
        )

        async def claims() -> None:
            for _ in range(CLAIM_ROUNDS):
                async with pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(
                        "UPDATE ops SET claimed = true WHERE id IN (SELECT id FROM ops"
                        " WHERE NOT claimed ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                        " RETURNING id, pk, body",
                        CLAIM_BATCH,
                    )
                await pool.execute("DELETE FROM ops WHERE id = ANY($1)", [r[0] for r in rows])

        claim_rate = await timed(CLAIM_BATCH * CLAIM_ROUNDS, claims)
    finally:
        await pool.close()
    return ingest_rate, claim_rate


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--dsn", default=os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1/postgres")
    )
    args = parser.parse_args()
    print(
        f"{CALLERS} concurrent 1-event ingests x {INGEST_TOTAL};"
        f" claim+ack {CLAIM_BATCH} x {CLAIM_ROUNDS}"
    )
    for name, fn in (("psycopg", bench_psycopg), ("asyncpg", bench_asyncpg)):
        db = f"phcio_bench_{name}_{os.getpid()}"
        admin = await psycopg.AsyncConnection.connect(args.dsn, autocommit=True)
        await admin.execute(f'CREATE DATABASE "{db}"')
        try:
            async with await psycopg.AsyncConnection.connect(
                with_db(args.dsn, db), autocommit=True
            ) as c:
                await c.execute(SCHEMA)
            ingest, claim = await fn(with_db(args.dsn, db))
            print(f"{name:8} ingest {ingest:8.0f} events/s   claim+ack {claim:8.0f} ops/s")
        finally:
            await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
