-- 0002: lanes (live traffic before history) and source checkpoints (resumable backfills).
--
-- operations.lane       'live' (webhooks, --follow) or 'backfill' (history); existing rows
--                       were all live traffic.
-- partitions.head_lane  the lane of the partition's head operation, kept with head_id, so a
--                       claim restricted to one lane walks partitions_ready_lane by head_id and
--                       never reads operations of the other lane.
-- checkpoints           a source's resume position, written in the same transaction as the
--                       operations it produced.

ALTER TABLE operations ADD COLUMN lane TEXT NOT NULL DEFAULT 'live';
ALTER TABLE partitions ADD COLUMN head_lane TEXT NOT NULL DEFAULT 'live';
CREATE INDEX partitions_ready_lane ON partitions (head_lane, head_id) WHERE state = 0;

CREATE TABLE checkpoints (
    source     TEXT PRIMARY KEY,
    position   TEXT NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
