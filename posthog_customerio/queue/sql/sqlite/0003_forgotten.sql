-- 0003: GDPR erasure (`forget`).
--
-- forgotten  that a distinct_id was forgotten, and when: the distinct_id and the time only.
--            Everything else about the person (identity state, pending operations, dead
--            letters) is deleted in the same transaction that writes this row.

CREATE TABLE forgotten (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    distinct_id  TEXT NOT NULL,
    forgotten_at REAL NOT NULL
);
CREATE INDEX forgotten_distinct_id ON forgotten (distinct_id);
