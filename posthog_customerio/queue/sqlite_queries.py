"""Every SQL statement of the SQLite queue, named (procrastinate's ``queries.sql`` habit).

The schema lives in ``sql/sqlite/NNNN_*.sql`` migrations; these are the statements the queue
runs against it. Keeping them here means a reviewer reads the whole data access in one page,
and ``EXPLAIN QUERY PLAN`` checks have one place to look.
"""

from __future__ import annotations

# --- schema version -----------------------------------------------------------------------

CREATE_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
)
"""
SCHEMA_VERSION_EXISTS = (
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
)
CURRENT_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"
RECORD_SCHEMA_VERSION = "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)"

# --- ingest ---------------------------------------------------------------------------------

# Ingest reads and writes set-at-a-time: one statement per job for the uuids already seen and
# the identity states, executemany for the rows. Each walks the JSON array and probes the
# primary key (EXPLAIN QUERY PLAN: SCAN json_each, SEARCH ... USING PRIMARY KEY).
SEEN_AMONG = """
SELECT s.uuid FROM json_each(?) AS j JOIN seen_events AS s ON s.uuid = j.value
"""
MARK_SEEN = "INSERT OR IGNORE INTO seen_events (uuid, seen_at) VALUES (?, ?)"
GET_IDENTITY = "SELECT state FROM identity WHERE distinct_id = ?"
# The reverse path: who Customer.io's person-by-email is, and whether a uuid was ingested.
# A scan of identity (reporting webhooks only, and only for people addressed by email).
DISTINCT_ID_FOR_EMAIL = """
SELECT distinct_id FROM identity WHERE json_extract(CAST(state AS TEXT), '$.email') = ?
ORDER BY json_extract(CAST(state AS TEXT), '$.identified') DESC, updated_at DESC LIMIT 1
"""
WAS_SEEN = "SELECT 1 FROM seen_events WHERE uuid = ?"
GET_IDENTITIES = """
SELECT i.distinct_id, i.state FROM json_each(?) AS j JOIN identity AS i ON i.distinct_id = j.value
"""
# AUTOINCREMENT's next id: above both the largest id ever handed out and the largest present.
# Ingest numbers its rows itself from here (it is the only writer inside BEGIN IMMEDIATE), so
# it knows each partition's head id without reading ``lastrowid`` row by row; SQLite raises
# sqlite_sequence past explicit ids, so ids still never repeat.
LAST_OPERATION_ID = """
SELECT max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'operations'), 0),
    coalesce((SELECT max(id) FROM operations), 0)
)
"""
PUT_IDENTITY = """
INSERT INTO identity (distinct_id, state, updated_at) VALUES (?, ?, ?)
ON CONFLICT (distinct_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at
"""
INSERT_OPERATION = """
INSERT INTO operations (
    partition_key, endpoint, action, body, size, event_uuid, enqueued_at, lane
)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
INSERT_OPERATION_WITH_ID = """
INSERT INTO operations (
    id, partition_key, endpoint, action, body, size, event_uuid, enqueued_at, lane
)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# No row trigger counts inserts (migration 0004): whoever inserts operations adds the number.
OPERATIONS_ADDED = "UPDATE counters SET value = value + ? WHERE name = 'operations'"
# The first operation of a partition sets its head (and head lane); later ones have larger ids.
ADD_PARTITION = """
INSERT INTO partitions (partition_key, head_id, head_lane) VALUES (?, ?, ?)
ON CONFLICT (partition_key) DO NOTHING
"""
PUT_CHECKPOINT = """
INSERT INTO checkpoints (source, position, updated_at) VALUES (?, ?, ?)
ON CONFLICT (source) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
"""
GET_CHECKPOINT = "SELECT position FROM checkpoints WHERE source = ?"

# --- claim ----------------------------------------------------------------------------------

UNBLOCK_EXPIRED = """
UPDATE partitions SET state = 0, blocked_until = NULL
WHERE state = 2 AND blocked_until <= ?
"""
# Walks partitions_ready in head order; the cursor is read lazily, only as far as needed.
READY_PARTITIONS = "SELECT partition_key, head_id FROM partitions WHERE state = 0 ORDER BY head_id"
# The same walk for one lane, through partitions_ready_lane (head_lane, head_id).
READY_PARTITIONS_IN_LANE = """
SELECT partition_key, head_id FROM partitions
WHERE state = 0 AND head_lane = ? ORDER BY head_id
"""
# The claim's fast path: operations in id order from the first ready head on, each with
# whether its partition may be claimed now (ready, and in the lane asked for, ?2 NULL = any).
# Read lazily and only so far: see _claim.
SCAN_FROM = """
SELECT o.id, o.partition_key, o.endpoint, o.action, o.body, o.size, o.attempts,
       o.enqueued_at, o.event_uuid, p.state = 0 AND (?2 IS NULL OR p.head_lane = ?2)
FROM operations AS o JOIN partitions AS p ON p.partition_key = o.partition_key
WHERE o.id >= ?1 ORDER BY o.id
"""
GET_OPERATION = """
SELECT id, partition_key, endpoint, action, body, size, attempts, enqueued_at, event_uuid
FROM operations WHERE id = ?
"""
# Answered from the (partition_key, id) index alone: no table row, no body read.
NEXT_ID_IN_PARTITION = """
SELECT id FROM operations WHERE partition_key = ? AND id > ? ORDER BY id LIMIT 1
"""
MARK_CLAIMED = "UPDATE operations SET claimed = 1 WHERE id = ?"
PARTITION_CLAIMED = (
    "UPDATE partitions SET state = 1, inflight = inflight + ? WHERE partition_key = ?"
)

# --- settle (ack, retry, release, dead letter) ----------------------------------------------

OPERATION_PARTITION = "SELECT partition_key, claimed FROM operations WHERE id = ?"
DELETE_OPERATION = "DELETE FROM operations WHERE id = ?"
# Set-at-a-time forms for the hot path (ack of a whole batch): ?1 is a JSON array of ids, or
# a JSON object partition -> released claims. One statement per batch, not per operation.
OPERATIONS_PARTITIONS_IN = """
SELECT partition_key, claimed FROM operations WHERE id IN (SELECT value FROM json_each(?1))
"""
DELETE_OPERATIONS_IN = "DELETE FROM operations WHERE id IN (SELECT value FROM json_each(?1))"
DROP_EMPTY_PARTITIONS_IN = """
DELETE FROM partitions
WHERE partition_key IN (SELECT key FROM json_each(?1))
  AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.partition_key = partitions.partition_key)
"""
# Right-hand sides see the old row, so inflight - r.value is the new in-flight count.
SETTLE_PARTITIONS_IN = """
UPDATE partitions SET
    head_id = (SELECT min(id) FROM operations o WHERE o.partition_key = partitions.partition_key),
    head_lane = coalesce(
        (SELECT lane FROM operations o WHERE o.partition_key = partitions.partition_key
         ORDER BY id LIMIT 1),
        head_lane
    ),
    inflight = max(inflight - r.value, 0),
    state = CASE
        WHEN inflight - r.value > 0 THEN 1
        WHEN blocked_until IS NOT NULL THEN 2
        ELSE 0
    END
FROM json_each(?1) AS r
WHERE partitions.partition_key = r.key
"""
RETRY_OPERATION = """
UPDATE operations SET attempts = attempts + 1, last_error = ?, claimed = 0 WHERE id = ?
"""
RELEASE_OPERATION = "UPDATE operations SET claimed = 0 WHERE id = ?"
BLOCK_PARTITION = """
UPDATE partitions SET blocked_until = max(coalesce(blocked_until, 0), ?) WHERE partition_key = ?
"""
RESET_CLAIMED_OPERATIONS = "UPDATE operations SET claimed = 0 WHERE claimed = 1"
RESET_CLAIMED_PARTITIONS = """
UPDATE partitions SET
    inflight = 0,
    state = CASE WHEN blocked_until IS NOT NULL THEN 2 ELSE 0 END
WHERE state = 1
"""

# --- dead letters ---------------------------------------------------------------------------

INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (
    op_id, partition_key, endpoint, action, body, event_uuid, enqueued_at, attempts,
    reason, detail, request, response, status, created_at
)
SELECT id, partition_key, endpoint, action, body, event_uuid, enqueued_at, attempts,
       ?, ?, ?, ?, ?, ?
FROM operations WHERE id = ?
"""
# Optional filters as "? IS NULL OR ..." keep this one statement for every combination.
LIST_DEAD_LETTERS = """
SELECT id, op_id, partition_key, endpoint, action, body, reason, detail, request, response,
       status, created_at, event_uuid
FROM dead_letters
WHERE (?1 IS NULL OR reason = ?1) AND (?2 IS NULL OR created_at >= ?2)
ORDER BY id DESC LIMIT ?3
"""
DEAD_LETTER_IDS = """
SELECT id FROM dead_letters
WHERE (?1 IS NULL OR reason = ?1) AND (?2 IS NULL OR created_at >= ?2)
ORDER BY id
"""
GET_DEAD_LETTER = """
SELECT id, op_id, partition_key, endpoint, action, body, reason, detail, request, response,
       status, created_at, event_uuid
FROM dead_letters WHERE id = ?
"""
GET_DEAD_LETTER_FOR_REPLAY = """
SELECT partition_key, endpoint, action, body, event_uuid FROM dead_letters WHERE id = ?
"""
DELETE_DEAD_LETTER = "DELETE FROM dead_letters WHERE id = ?"

# --- stats and housekeeping -----------------------------------------------------------------

COUNTER = "SELECT value FROM counters WHERE name = ?"
OLDEST_ENQUEUED_AT = "SELECT enqueued_at FROM operations ORDER BY id LIMIT 1"
BLOCKED_PARTITIONS = "SELECT count(*) FROM partitions WHERE state = 2 AND blocked_until > ?"
PRUNE_SEEN_CHUNK = """
DELETE FROM seen_events
WHERE uuid IN (SELECT uuid FROM seen_events WHERE seen_at < ? LIMIT ?)
"""

# --- workers (status) -----------------------------------------------------------------------

IN_FLIGHT_PARTITIONS = "SELECT count(*) FROM partitions WHERE state = 1"
IN_FLIGHT_SAMPLE = (
    "SELECT partition_key FROM partitions WHERE state = 1 ORDER BY partition_key LIMIT ?"
)

# --- forget (GDPR erasure) ------------------------------------------------------------------

PARTITION_OPERATIONS = "SELECT id, claimed FROM operations WHERE partition_key = ?"
# A byte search over every stored body: forget is a rare operator action, and instr() on the
# BLOB runs in C; the candidates are then confirmed on the parsed body (queue/forget.py).
OPERATIONS_CONTAINING = """
SELECT id, partition_key, body, claimed FROM operations WHERE instr(body, ?) > 0
"""
PARTITION_DEAD_LETTERS = "SELECT id FROM dead_letters WHERE partition_key = ?"
DEAD_LETTERS_CONTAINING = "SELECT id, body FROM dead_letters WHERE instr(body, ?) > 0"
DELETE_IDENTITY = "DELETE FROM identity WHERE distinct_id = ?"
RECORD_FORGOTTEN = "INSERT INTO forgotten (distinct_id, forgotten_at) VALUES (?, ?)"
