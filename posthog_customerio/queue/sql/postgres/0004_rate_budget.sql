-- 0004: one request budget for the account, shared by every serve process.
--
-- rate_budget  a single row (id = 1): the state of delivery/budget.py as JSON, namely the
--              next free send slot on the database clock (tat) and the AIMD rate, max,
--              learned ceiling and cooldown times. Processes take grants of a few slots
--              under its row lock. UNLOGGED: no WAL and no fsync per grant; after a crash
--              the table is empty and the next grant starts afresh at the configured rate,
--              which is all a crash can lose.

CREATE UNLOGGED TABLE rate_budget (
    id         smallint    PRIMARY KEY CHECK (id = 1),
    state      jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);
