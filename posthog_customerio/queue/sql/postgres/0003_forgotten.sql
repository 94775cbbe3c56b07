-- 0003: GDPR erasure (`forget`).
--
-- forgotten  that a distinct_id was forgotten, and when: the distinct_id and the time only.
--            Everything else about the person (identity state, pending operations, dead
--            letters) is deleted in the same transaction that writes this row.

CREATE TABLE forgotten (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    distinct_id  text             NOT NULL,
    forgotten_at double precision NOT NULL
);
CREATE INDEX forgotten_distinct_id ON forgotten (distinct_id);
