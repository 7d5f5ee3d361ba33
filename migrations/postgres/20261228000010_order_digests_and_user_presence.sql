-- What the store keeps grows with orders and users, not with every event (issue 28; docs/events.md,
-- "What is kept").
--
-- Order and refund ids only, as the first 16 bytes of their SHA-256 (hi, lo), in time buckets:
-- a lookup probes every live bucket, a prune deletes one bucket on the leading key of the
-- primary key. `order_id_buckets` lists the buckets and where each ends (widths follow the
-- configured window). `occurred_at` and `signed_minor` (a placed order's amount, a refund's as
-- -amount - 1) are what a new leader rebuilds the last hour from.
CREATE TABLE order_ids (
    bucket       BIGINT NOT NULL,
    hi           BIGINT NOT NULL,
    lo           BIGINT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    signed_minor BIGINT NOT NULL,
    PRIMARY KEY (bucket, hi, lo)
);

CREATE TABLE order_id_buckets (
    bucket  BIGINT PRIMARY KEY,
    ends_at BIGINT NOT NULL
);

-- One row per user: the latest activity and the latest sign-out by event time (NULL: none),
-- and a 64-bit hash of the id of the event that set each (so that a new leader still
-- recognises a redelivery of it as a duplicate; 0: unknown).
-- `part` is the ingest partition the user belongs to (always 0 until ingest is partitioned by
-- user_id; it fills alignment padding before the two BIGINTs).
-- Every upsert that moves a user's time writes a new row version. Pages half empty
-- (fillfactor 50) take the new versions of all their rows at once (a batch of users in id
-- order rewrites whole pages): the update is HOT (no index entry) and the next visit prunes
-- the old versions in place, so the table stays at about twice its live rows without vacuum.
-- Filled (the default 100), each rewrite moved the row to a new page and left a dead version
-- and a new index entry behind: 1 KB per user after 18 rewrites each (docs/benchmarks.md,
-- "Store footprint").
CREATE TABLE user_presence (
    user_id         TEXT COLLATE "C" PRIMARY KEY,
    part            SMALLINT NOT NULL DEFAULT 0,
    last_active     BIGINT,
    last_signed_out BIGINT,
    active_id       BIGINT NOT NULL DEFAULT 0,
    signed_out_id   BIGINT NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

INSERT INTO user_presence (user_id, last_active, last_signed_out)
    SELECT user_id,
           MAX(CASE WHEN kind <> 'user.signed_out' THEN occurred_at END),
           MAX(CASE WHEN kind = 'user.signed_out' THEN occurred_at END)
    FROM applied_events GROUP BY user_id;

-- The digest as the store computes it (`store::order_digest`): SHA-256 of the id's UTF-8
-- bytes, its first and second 8 bytes as signed big-endian integers. Rows go to the hour they
-- were applied in.
INSERT INTO order_ids (bucket, hi, lo, occurred_at, signed_minor)
    SELECT applied_at - applied_at % 3600000,
           ('x' || encode(substring(digest FROM 1 FOR 8), 'hex'))::bit(64)::bigint,
           ('x' || encode(substring(digest FROM 9 FOR 8), 'hex'))::bit(64)::bigint,
           occurred_at,
           CASE kind WHEN 'order.placed' THEN amount_minor ELSE -amount_minor - 1 END
    FROM (SELECT sha256(convert_to(id, 'UTF8')) AS digest, applied_at, occurred_at, kind,
                 amount_minor
          FROM applied_events WHERE kind IN ('order.placed', 'order.refunded')) AS orders
    ON CONFLICT DO NOTHING;
INSERT INTO order_id_buckets (bucket, ends_at)
    SELECT DISTINCT bucket, bucket + 3600000 FROM order_ids;

-- applied_events stays, empty, so that an older instance still running beside this version
-- is refused with one line at its next batch instead of counting every order anew.
DELETE FROM applied_events;
CREATE FUNCTION applied_events_retired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'this database was migrated by a newer pulseboard (migration 20261228000010: order digests and user presence): stop this older instance and run the new version';
END
$$;
CREATE TRIGGER applied_events_retired BEFORE INSERT ON applied_events
    FOR EACH STATEMENT EXECUTE FUNCTION applied_events_retired();
