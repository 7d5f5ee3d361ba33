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
) WITHOUT ROWID;

CREATE TABLE order_id_buckets (
    bucket  BIGINT PRIMARY KEY,
    ends_at BIGINT NOT NULL
);

-- One row per user: the latest activity and the latest sign-out by event time (NULL: none),
-- and a 64-bit hash of the id of the event that set each (so that a new leader still
-- recognises a redelivery of it as a duplicate; 0: unknown).
-- `part` is the ingest partition the user belongs to (always 0 until ingest is partitioned by
-- user_id; SQLite stores the 0 in no bytes).
CREATE TABLE user_presence (
    user_id         TEXT PRIMARY KEY,
    part            SMALLINT NOT NULL DEFAULT 0,
    last_active     BIGINT,
    last_signed_out BIGINT,
    active_id       BIGINT NOT NULL DEFAULT 0,
    signed_out_id   BIGINT NOT NULL DEFAULT 0
) WITHOUT ROWID;

INSERT INTO user_presence (user_id, last_active, last_signed_out)
    SELECT user_id,
           MAX(CASE WHEN kind <> 'user.signed_out' THEN occurred_at END),
           MAX(CASE WHEN kind = 'user.signed_out' THEN occurred_at END)
    FROM applied_events GROUP BY user_id;

-- SQLite has no SHA-256 in SQL: the orders are staged here with their ids, and the store
-- digests them into `order_ids` right after the migrations run (`Store::migrate`), before
-- anything reads or writes orders.
CREATE TABLE order_ids_undigested (
    id           TEXT NOT NULL,
    applied_at   BIGINT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    signed_minor BIGINT NOT NULL
);
INSERT INTO order_ids_undigested (id, applied_at, occurred_at, signed_minor)
    SELECT id, applied_at, occurred_at,
           CASE kind WHEN 'order.placed' THEN amount_minor ELSE -amount_minor - 1 END
    FROM applied_events WHERE kind IN ('order.placed', 'order.refunded')
    ORDER BY rowid;

-- applied_events stays, empty, so that an older instance still running beside this version
-- is refused with one line at its next batch instead of counting every order anew.
DELETE FROM applied_events;
CREATE TRIGGER applied_events_retired BEFORE INSERT ON applied_events
BEGIN
    SELECT RAISE(ABORT, 'this database was migrated by a newer pulseboard (migration 20261228000010: order digests and user presence): stop this older instance and run the new version');
END;
