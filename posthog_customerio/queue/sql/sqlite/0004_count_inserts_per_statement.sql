-- 0004: operations are counted by the statement that inserts them, not by a row trigger.
--
-- The AFTER INSERT trigger ran an UPDATE of counters for every operation: about 40% of the
-- cost of inserting one (bench/ingest.py). Ingest, replay and forget now add how many rows
-- they inserted with one UPDATE each (OPERATIONS_ADDED). Deletes keep their trigger.

DROP TRIGGER operations_counter_insert;
UPDATE counters SET value = (SELECT count(*) FROM operations) WHERE name = 'operations';
