-- 0002: many processes on one database: workers with heartbeats, leased partitions, lanes
-- and source checkpoints.
--
-- workers      one row per serving process (owner=True), heartbeat_at renewed every
--              heartbeat_secs; rows silent for long are deleted by the others.
-- partitions   owner + lease_until: the worker whose claim holds the partition in flight and
--              until when (database clock). A lease not renewed by lease_until is free to take,
--              with every operation of that partition, by any other worker.
-- operations   claimed_by: the worker that claimed it; a partition stays in flight while one
--              of its operations is claimed by its owner. lane: live or backfill.
-- checkpoints  a source's resume position, committed with the operations it produced.

CREATE TABLE workers (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE operations ADD COLUMN lane text NOT NULL DEFAULT 'live';
ALTER TABLE operations ADD COLUMN claimed_by bigint;
-- "Is this partition still in flight?" reads only claimed operations.
CREATE INDEX operations_claimed ON operations (partition_key) WHERE claimed_by IS NOT NULL;

ALTER TABLE partitions ADD COLUMN owner bigint;
ALTER TABLE partitions ADD COLUMN lease_until timestamptz;
-- Claims walk ready partitions (not leased, not blocked) in head order through this index.
CREATE INDEX partitions_ready ON partitions (head_id) WHERE owner IS NULL AND blocked_until IS NULL;
CREATE INDEX partitions_leased ON partitions (lease_until) WHERE owner IS NOT NULL;
CREATE INDEX partitions_owner ON partitions (owner) WHERE owner IS NOT NULL;

CREATE TABLE checkpoints (
    source     text             PRIMARY KEY,
    position   text             NOT NULL,
    updated_at double precision NOT NULL
);
