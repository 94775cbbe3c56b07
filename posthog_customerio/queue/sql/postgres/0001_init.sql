-- 0001: the queue on PostgreSQL, as the single-process SQLite queue has it.
--
-- operations   pending and claimed Customer.io operations; id is the ingest order.
-- partitions   one row per customer key that has operations: head_id (its smallest
--              operation id) orders claims across partitions; blocked_until is the retry
--              backoff (the caller's clock, like SQLite). The row is also the lock that
--              orders ingest, claims and settles of that partition.
-- identity     IdentityState per distinct_id (JSON, queue/codec.py), locked FOR UPDATE by
--              ingest so concurrent processes merge sticky flags instead of overwriting them.
-- seen_events  PostHog uuids already ingested (dedup across processes), pruned by seen_at.
-- dead_letters rejected operations with the reason, request and response.
--
-- Times the caller passes (enqueued_at, blocked_until, created_at) are Unix seconds
-- (double precision), as in SQLite; times the database decides are timestamptz.

CREATE TABLE operations (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition_key text             NOT NULL,
    endpoint      text             NOT NULL,
    action        text             NOT NULL,
    body          bytea            NOT NULL,  -- orjson bytes, sent as is
    size          integer          NOT NULL,
    event_uuid    text             NOT NULL,
    enqueued_at   double precision NOT NULL,
    attempts      integer          NOT NULL DEFAULT 0,
    last_error    text
);
-- Claims read (partition_key, id, size) of a partition's first operations from this index alone.
CREATE INDEX operations_partition_id ON operations (partition_key, id) INCLUDE (size);

CREATE TABLE partitions (
    partition_key text             PRIMARY KEY,
    head_id       bigint           NOT NULL,
    blocked_until double precision
);
CREATE INDEX partitions_blocked ON partitions (blocked_until) WHERE blocked_until IS NOT NULL;

CREATE TABLE identity (
    distinct_id text             PRIMARY KEY,
    state       bytea            NOT NULL,
    updated_at  double precision NOT NULL
);

CREATE TABLE seen_events (
    uuid    text             PRIMARY KEY,
    seen_at double precision NOT NULL
);
CREATE INDEX seen_events_seen_at ON seen_events (seen_at);

CREATE TABLE dead_letters (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    op_id         bigint           NOT NULL,
    partition_key text             NOT NULL,
    endpoint      text             NOT NULL,
    action        text             NOT NULL,
    body          bytea            NOT NULL,
    event_uuid    text             NOT NULL,
    enqueued_at   double precision NOT NULL,
    attempts      integer          NOT NULL,
    reason        text             NOT NULL,
    detail        text             NOT NULL,
    request       text             NOT NULL,
    response      text             NOT NULL,
    status        integer,
    created_at    double precision NOT NULL
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, id);
CREATE INDEX dead_letters_created_at ON dead_letters (created_at);
