-- 0001: the first schema of the embedded SQLite queue.
--
-- operations   pending and claimed Customer.io operations; id is the ingest order.
-- partitions   one row per partition that has operations: its state (0 ready, 1 in flight,
--              2 blocked until blocked_until) and head_id (its smallest operation id), so a
--              claim walks ready partitions by head_id through an index instead of scanning
--              operations that belong to claimed or blocked partitions.
-- identity     IdentityState per distinct_id, JSON.
-- seen_events  PostHog uuids already ingested (dedup), pruned by seen_at.
-- dead_letters rejected operations with the reason, request and response.
-- counters     row counts kept by triggers, so status never counts a million rows.

CREATE TABLE operations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids only grow
    partition_key TEXT    NOT NULL,
    endpoint      TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    body          BLOB    NOT NULL,                   -- orjson bytes, sent as is
    size          INTEGER NOT NULL,
    event_uuid    TEXT    NOT NULL,
    enqueued_at   REAL    NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    claimed       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX operations_partition_id ON operations (partition_key, id);
CREATE INDEX operations_claimed ON operations (id) WHERE claimed = 1;

CREATE TABLE partitions (
    partition_key TEXT    PRIMARY KEY,
    head_id       INTEGER NOT NULL,
    state         INTEGER NOT NULL DEFAULT 0,
    inflight      INTEGER NOT NULL DEFAULT 0,
    blocked_until REAL
) WITHOUT ROWID;
CREATE INDEX partitions_ready ON partitions (head_id) WHERE state = 0;
CREATE INDEX partitions_blocked ON partitions (blocked_until) WHERE state = 2;
CREATE INDEX partitions_in_flight ON partitions (partition_key) WHERE state = 1;

CREATE TABLE identity (
    distinct_id TEXT PRIMARY KEY,
    state       BLOB NOT NULL,
    updated_at  REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE seen_events (
    uuid    TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX seen_events_seen_at ON seen_events (seen_at);

CREATE TABLE dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id         INTEGER NOT NULL,
    partition_key TEXT    NOT NULL,
    endpoint      TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    body          BLOB    NOT NULL,
    event_uuid    TEXT    NOT NULL,
    enqueued_at   REAL    NOT NULL,
    attempts      INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    detail        TEXT    NOT NULL,
    request       TEXT    NOT NULL,
    response      TEXT    NOT NULL,
    status        INTEGER,
    created_at    REAL    NOT NULL
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, id);
CREATE INDEX dead_letters_created_at ON dead_letters (created_at);

CREATE TABLE counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO counters (name, value) VALUES ('operations', 0), ('dead_letters', 0);

CREATE TRIGGER operations_counter_insert AFTER INSERT ON operations
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'operations';
END;
CREATE TRIGGER operations_counter_delete AFTER DELETE ON operations
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'operations';
END;
CREATE TRIGGER dead_letters_counter_insert AFTER INSERT ON dead_letters
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'dead_letters';
END;
CREATE TRIGGER dead_letters_counter_delete AFTER DELETE ON dead_letters
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'dead_letters';
END;
