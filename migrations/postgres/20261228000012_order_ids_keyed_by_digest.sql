-- Order ids keyed by their digest alone (issue 28; docs/events.md, "What is kept"): the batch
-- commit decides which orders are new and records them in one upsert, one primary-key probe
-- per order, instead of asking every live bucket first (about seven probes an order with the
-- default window). Pruning still drops a whole bucket at once, now through `order_ids_bucket`
-- (its entries for one bucket are one run of the index, kept compact by the B-tree's
-- deduplication of equal keys).
--
-- Until now a repeat whose first copy's bucket had expired but was not yet pruned was recorded
-- again in the current bucket: of two rows with one digest, the newer bucket's is the one the
-- window counts from, and the only one kept.
-- Taken first, so that no writer adds a second row of a digest between the DELETE and the new
-- key (which would fail it; the migration would then roll back and run again at the next start).
LOCK TABLE order_ids IN ACCESS EXCLUSIVE MODE;
DELETE FROM order_ids AS older USING order_ids AS newer
    WHERE older.hi = newer.hi AND older.lo = newer.lo AND older.bucket < newer.bucket;
ALTER TABLE order_ids DROP CONSTRAINT order_ids_pkey;
ALTER TABLE order_ids ADD PRIMARY KEY (hi, lo);
CREATE INDEX order_ids_bucket ON order_ids (bucket);
