"""Every SQL statement of the PostgreSQL queue, named (procrastinate's ``queries.sql`` habit).

The schema lives in ``sql/postgres/NNNN_*.sql`` migrations; these are the statements the queue
runs against it (asyncpg placeholders ``$n``). Lock order, everywhere: identity rows, then
seen_events, then partitions, each sorted by key, so concurrent processes never deadlock;
claims and heartbeats take partitions with ``SKIP LOCKED`` and never wait at all.
"""

from __future__ import annotations

# --- schema version -------------------------------------------------------------------------

# An arbitrary constant: the advisory lock every migrating process takes (transaction scoped).
MIGRATION_LOCK_KEY = 0x70686369_6F6D6967  # "phciomig"
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock($1)"
CREATE_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SCHEMA_VERSION_EXISTS = "SELECT to_regclass('schema_version') IS NOT NULL"
CURRENT_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"
RECORD_SCHEMA_VERSION = "INSERT INTO schema_version (version, name) VALUES ($1, $2)"

# --- ingest (one group-committed transaction for many concurrent calls) ---------------------

# Locks (and creates, as the empty state) the identity rows of every related distinct_id of the
# group, in the sorted order of $1, and returns their current state: whatever another process
# committed last is what this transaction maps from, and nobody else writes them until COMMIT.
LOCK_IDENTITIES = """
INSERT INTO identity (distinct_id, state, updated_at)
SELECT id, $2::bytea, $3 FROM unnest($1::text[]) WITH ORDINALITY AS t(id, n) ORDER BY n
ON CONFLICT (distinct_id) DO UPDATE SET updated_at = identity.updated_at
RETURNING distinct_id, state
"""
SEEN_ALREADY = "SELECT uuid FROM seen_events WHERE uuid = ANY($1::text[])"
# Returns the uuids actually inserted; fewer than given means another process won a race.
MARK_SEEN = """
INSERT INTO seen_events (uuid, seen_at)
SELECT u, $2 FROM unnest($1::text[]) WITH ORDINALITY AS t(u, n) ORDER BY n
ON CONFLICT (uuid) DO NOTHING
RETURNING uuid
"""
# Ids follow the order of the arrays (ORDER BY n), so they are the ingest order.
INSERT_OPERATIONS = """
INSERT INTO operations (partition_key, endpoint, action, body, size, event_uuid, lane, enqueued_at)
SELECT p, e, a, b, s, u, l, $8
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int[], $6::text[], $7::text[])
     WITH ORDINALITY AS t(p, e, a, b, s, u, l, n)
ORDER BY n
RETURNING id, partition_key
"""
# DO UPDATE (not DO NOTHING) so that it waits for, and re-checks after, a settle that holds the
# row: a settle deleting an emptied partition can then never orphan this ingest's operations.
ADD_PARTITIONS = """
INSERT INTO partitions (partition_key, head_id)
SELECT k, h FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS t(k, h, n) ORDER BY n
ON CONFLICT (partition_key) DO UPDATE SET head_id = least(partitions.head_id, excluded.head_id)
"""
# Upsert (not UPDATE) in key order: a state the mapper returns for an id it did not list in
# distinct_ids is still written, never lost.
PUT_IDENTITIES = """
INSERT INTO identity (distinct_id, state, updated_at)
SELECT id, state, $3 FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS t(id, state, n)
ORDER BY n
ON CONFLICT (distinct_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at
"""
PUT_CHECKPOINT = """
INSERT INTO checkpoints (source, position, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (source) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
"""
GET_CHECKPOINT = "SELECT position FROM checkpoints WHERE source = $1"
# The reverse path: who Customer.io's person-by-email is, and whether a uuid was ingested.
# A scan of identity (reporting webhooks only, and only for people addressed by email).
DISTINCT_ID_FOR_EMAIL = """
SELECT distinct_id FROM identity
WHERE convert_from(state, 'UTF8')::jsonb ->> 'email' = $1
ORDER BY (convert_from(state, 'UTF8')::jsonb ->> 'identified') = 'true' DESC, updated_at DESC
LIMIT 1
"""
WAS_SEEN = "SELECT 1 FROM seen_events WHERE uuid = $1"

# --- claim ----------------------------------------------------------------------------------

# Frees what time has released: backoffs over ($1, the caller's clock) and leases not renewed
# (the database clock). A lost lease also forgets its owner's claim marks.
FREE_DUE_PARTITIONS = """
WITH due AS (
    SELECT partition_key, (owner IS NOT NULL AND lease_until < now()) AS lost
    FROM partitions
    WHERE blocked_until <= $1 OR (owner IS NOT NULL AND lease_until < now())
    FOR UPDATE SKIP LOCKED
), freed AS (
    UPDATE partitions p SET
        blocked_until = CASE WHEN p.blocked_until <= $1 THEN NULL ELSE p.blocked_until END,
        owner = CASE WHEN due.lost THEN NULL ELSE p.owner END,
        lease_until = CASE WHEN due.lost THEN NULL ELSE p.lease_until END
    FROM due WHERE p.partition_key = due.partition_key
    RETURNING p.partition_key, due.lost
)
UPDATE operations o SET claimed_by = NULL
FROM freed
WHERE freed.lost AND o.partition_key = freed.partition_key AND o.claimed_by IS NOT NULL
"""
# $1 max_ops, $2 max_bytes, $3 worker id, $4 lanes (NULL = any), $5 lease_secs.
# Takes up to $1 ready partitions in head order (SKIP LOCKED: a partition another process is
# claiming, settling or ingesting into is left for the next claim), their first operations, and
# cuts the id-ordered union at $1 operations and $2 bytes; a cut in id order of per-partition
# prefixes leaves each partition's claim a prefix. Leases the partitions that got operations.
CLAIM = """
WITH cand AS (
    SELECT p.partition_key
    FROM partitions p
    WHERE p.owner IS NULL AND p.blocked_until IS NULL
      AND ($4::text[] IS NULL OR EXISTS (
          SELECT 1 FROM operations h WHERE h.id = p.head_id AND h.lane = ANY($4::text[])))
    ORDER BY p.head_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), firsts AS (
    SELECT o.id, o.partition_key, o.size
    FROM cand CROSS JOIN LATERAL (
        SELECT id, partition_key, size FROM operations
        WHERE partition_key = cand.partition_key ORDER BY id LIMIT $1
    ) o
), ranked AS (
    SELECT id, partition_key,
           row_number() OVER w AS n, sum(size) OVER w AS running
    FROM firsts WINDOW w AS (ORDER BY id)
), picked AS (
    SELECT id, partition_key FROM ranked WHERE n <= $1 AND (n = 1 OR running <= $2)
), leased AS (
    UPDATE partitions p SET owner = $3, lease_until = now() + $5 * interval '1 second'
    WHERE p.partition_key IN (SELECT partition_key FROM picked)
)
UPDATE operations o SET claimed_by = $3
FROM picked WHERE o.id = picked.id
RETURNING o.id, o.partition_key, o.endpoint, o.action, o.body, o.size, o.attempts,
          o.enqueued_at, o.event_uuid
"""

# --- settle (ack, retry, release, dead letter) ----------------------------------------------

# First statement of every settle: lock the partitions concerned, in key order.
LOCK_PARTITIONS_OF = """
SELECT p.partition_key FROM partitions p
WHERE p.partition_key IN (SELECT partition_key FROM operations WHERE id = ANY($1::bigint[]))
ORDER BY p.partition_key
FOR UPDATE OF p
"""
DELETE_OPERATIONS = "DELETE FROM operations WHERE id = ANY($1::bigint[])"
# Only this worker's claims: a worker whose lease was lost must not touch the new owner's.
RETRY_OPERATIONS = """
UPDATE operations SET attempts = attempts + 1, last_error = $2, claimed_by = NULL
WHERE id = ANY($1::bigint[]) AND claimed_by = $3
RETURNING partition_key
"""
RELEASE_OPERATIONS = """
UPDATE operations SET claimed_by = NULL WHERE id = ANY($1::bigint[]) AND claimed_by = $2
"""
BLOCK_PARTITIONS = """
UPDATE partitions SET blocked_until = greatest(coalesce(blocked_until, 0), $2)
WHERE partition_key = ANY($1::text[]) AND owner = $3
"""
DELETE_EMPTY_PARTITIONS = """
DELETE FROM partitions p
WHERE p.partition_key = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.partition_key = p.partition_key)
"""
# Runs after the partitions are locked, as a new statement: it sees every operation committed
# before the lock, and any later ingest waits for this transaction (ADD_PARTITIONS).
SETTLE_PARTITIONS = """
UPDATE partitions p SET
    head_id = (SELECT min(o.id) FROM operations o WHERE o.partition_key = p.partition_key),
    owner = s.owner,
    lease_until = CASE WHEN s.owner IS NULL THEN NULL ELSE p.lease_until END
FROM (
    SELECT q.partition_key,
           CASE WHEN EXISTS (SELECT 1 FROM operations o
                             WHERE o.partition_key = q.partition_key
                               AND o.claimed_by = q.owner)
                THEN q.owner END AS owner
    FROM partitions q WHERE q.partition_key = ANY($1::text[])
) s
WHERE p.partition_key = s.partition_key
"""

# --- dead letters ---------------------------------------------------------------------------

INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (
    op_id, partition_key, endpoint, action, body, event_uuid, enqueued_at, attempts,
    reason, detail, request, response, status, created_at
)
SELECT o.id, o.partition_key, o.endpoint, o.action, o.body, o.event_uuid, o.enqueued_at,
       o.attempts, r.reason, r.detail, r.request, r.response, r.status, $7
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[])
     WITH ORDINALITY AS r(op_id, reason, detail, request, response, status, n)
JOIN operations o ON o.id = r.op_id
ORDER BY r.n
"""
_DEAD_LETTER_COLUMNS = """
SELECT id, op_id, partition_key, endpoint, action, body, reason, detail, request, response,
       status, created_at, event_uuid
FROM dead_letters
"""
LIST_DEAD_LETTERS = (
    _DEAD_LETTER_COLUMNS
    + """
WHERE ($1::text IS NULL OR reason = $1) AND ($2::float8 IS NULL OR created_at >= $2)
ORDER BY id DESC LIMIT $3
"""
)
DEAD_LETTER_IDS = """
SELECT id FROM dead_letters
WHERE ($1::text IS NULL OR reason = $1) AND ($2::float8 IS NULL OR created_at >= $2)
ORDER BY id
"""
GET_DEAD_LETTER = _DEAD_LETTER_COLUMNS + "WHERE id = $1"
REPLAY_DEAD_LETTERS = """
WITH moved AS (
    DELETE FROM dead_letters WHERE id = ANY($1::bigint[])
    RETURNING id, partition_key, endpoint, action, body, event_uuid
), inserted AS (
    INSERT INTO operations (partition_key, endpoint, action, body, size, event_uuid, enqueued_at)
    SELECT partition_key, endpoint, action, body, length(body), event_uuid, $2
    FROM moved ORDER BY id
    RETURNING id, partition_key
)
SELECT id, partition_key FROM inserted
"""
PURGE_DEAD_LETTERS = "DELETE FROM dead_letters WHERE id = ANY($1::bigint[])"

# --- workers and leases ---------------------------------------------------------------------

REGISTER_WORKER = "INSERT INTO workers (host, pid) VALUES ($1, $2) RETURNING id"
# After being presumed dead (silent for long), a worker comes back under its old id.
REREGISTER_WORKER = """
INSERT INTO workers (id, host, pid) OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
"""
HEARTBEAT = "UPDATE workers SET heartbeat_at = now() WHERE id = $1 RETURNING id"
# Only the partitions of claims this worker still tracks ($3): a claim it lost track of
# expires. SKIP LOCKED: a partition being settled right now is renewed by the next beat.
RENEW_LEASES = """
UPDATE partitions SET lease_until = now() + $2 * interval '1 second'
WHERE partition_key IN (
    SELECT partition_key FROM partitions
    WHERE owner = $1 AND partition_key = ANY($3::text[])
    FOR UPDATE SKIP LOCKED
)
"""
REAP_WORKERS = "DELETE FROM workers WHERE heartbeat_at < now() - $1 * interval '1 second'"
RELEASE_WORKER_OPERATIONS = "UPDATE operations SET claimed_by = NULL WHERE claimed_by = $1"
RELEASE_WORKER_PARTITIONS = """
UPDATE partitions SET owner = NULL, lease_until = NULL WHERE owner = $1
"""
UNREGISTER_WORKER = "DELETE FROM workers WHERE id = $1"
# Live workers (heartbeat within $1 seconds) with their leased partitions (count, sample).
LIVE_WORKERS = """
SELECT w.id, w.host, w.pid,
       extract(epoch FROM w.started_at)::float8,
       extract(epoch FROM w.heartbeat_at)::float8,
       (SELECT count(*) FROM partitions p WHERE p.owner = w.id AND p.lease_until > now()),
       ARRAY(SELECT p.partition_key FROM partitions p
             WHERE p.owner = w.id AND p.lease_until > now()
             ORDER BY p.partition_key LIMIT $2)
FROM workers w
WHERE w.heartbeat_at > now() - $1 * interval '1 second'
ORDER BY w.id
"""

# --- the account's rate budget (delivery/budget.py) ----------------------------------------

# Locks the budget row (creating it when absent: the table is unlogged and empty after a crash)
# and returns its state with the database clock read after the lock was granted, and the live
# workers (heartbeat within $1 seconds).
LOCK_RATE_BUDGET = """
INSERT INTO rate_budget AS b (id) VALUES (1)
ON CONFLICT (id) DO UPDATE SET id = b.id
RETURNING b.state::text,
          extract(epoch FROM clock_timestamp())::float8,
          (SELECT count(*) FROM workers WHERE heartbeat_at > now() - $1 * interval '1 second')
"""
PUT_RATE_BUDGET = "UPDATE rate_budget SET state = $1::jsonb, updated_at = now() WHERE id = 1"

# --- stats and housekeeping -----------------------------------------------------------------

COUNT_OPERATIONS = "SELECT count(*) FROM operations"
COUNT_DEAD_LETTERS = "SELECT count(*) FROM dead_letters"
OLDEST_ENQUEUED_AT = "SELECT enqueued_at FROM operations ORDER BY id LIMIT 1"
BLOCKED_PARTITIONS = "SELECT count(*) FROM partitions WHERE blocked_until > $1"
PRUNE_SEEN_CHUNK = """
DELETE FROM seen_events
WHERE uuid IN (SELECT uuid FROM seen_events WHERE seen_at < $1 LIMIT $2)
"""

# --- forget (GDPR erasure) ------------------------------------------------------------------

# The forgotten partitions ($1) and any body containing one of the needles ($2, JSON-encoded
# names): a scan, fine for a rare operator action; candidates are confirmed in Python.
FORGET_OPERATION_CANDIDATES = """
SELECT id, partition_key, body, claimed_by IS NOT NULL FROM operations
WHERE partition_key = ANY($1::text[])
   OR EXISTS (SELECT 1 FROM unnest($2::bytea[]) AS n(v) WHERE position(n.v IN body) > 0)
"""
FORGET_DEAD_LETTER_CANDIDATES = """
SELECT id, partition_key, body FROM dead_letters
WHERE partition_key = ANY($1::text[])
   OR EXISTS (SELECT 1 FROM unnest($2::bytea[]) AS n(v) WHERE position(n.v IN body) > 0)
"""
LOCK_PARTITIONS = """
SELECT partition_key FROM partitions WHERE partition_key = ANY($1::text[])
ORDER BY partition_key FOR UPDATE
"""
# Claimed operations are being delivered: left alone (the delete follows them in order).
DELETE_UNCLAIMED_OPERATIONS = """
DELETE FROM operations WHERE id = ANY($1::bigint[]) AND claimed_by IS NULL RETURNING id
"""
DELETE_IDENTITIES = "DELETE FROM identity WHERE distinct_id = ANY($1::text[])"
RECORD_FORGOTTEN = """
INSERT INTO forgotten (distinct_id, forgotten_at)
SELECT d, $2 FROM unnest($1::text[]) WITH ORDINALITY AS t(d, n) ORDER BY n
"""
