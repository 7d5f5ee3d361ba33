-- Late events (docs/events.md, "Late events") are stored with the batch that applies them, in
-- the same transaction, so that a new leader's snapshot says what its predecessor's did
-- (`trust.late_events_today`, `trust.revised_minutes`).
--
-- `late_events`: late events committed on that local day (PULSEBOARD_TIMEZONE); the day of the
-- commit, where `revenue_minor` is by the day of `occurred_at` (a day with late events and no
-- revenue has a row with revenue 0).
ALTER TABLE daily_revenue ADD COLUMN late_events BIGINT NOT NULL DEFAULT 0;

-- `revised`: 1 once a late event revised the minute's history point (its orders, revenue or
-- users active at its end).
ALTER TABLE minute_stats ADD COLUMN revised SMALLINT NOT NULL DEFAULT 0;
