-- An instance of a version before migration 20261228000012 still running beside a migrated
-- database is refused at its next batch with orders, with one line naming the cause, instead
-- of writing ids into the re-keyed table with `ON CONFLICT DO NOTHING`, which skips without an
-- error an id whose row sits in an expired bucket not yet pruned (it would count that order
-- without recording it; docs/operations.md). An instance of the version that brought
-- migration 12, which writes correctly, is refused too: it would be at its next start anyway.
-- This version sets `pulseboard.order_ids` on every connection it opens
-- (`store::postgres::SESSION`); older versions never did. One check per statement, not per row.
CREATE FUNCTION order_ids_writer_checked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('pulseboard.order_ids', true) IS DISTINCT FROM 'keyed_by_digest' THEN
        RAISE EXCEPTION 'this database was migrated by a newer pulseboard (migration 20261228000013: order ids keyed by their digest): stop this older instance and run the new version';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER order_ids_writer_checked BEFORE INSERT ON order_ids
    FOR EACH STATEMENT EXECUTE FUNCTION order_ids_writer_checked();
