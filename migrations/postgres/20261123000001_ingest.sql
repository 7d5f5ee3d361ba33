-- Ingest state: deduplication, history, what a new leader rebuilds from, snapshot sequence.
-- Times are Unix milliseconds (BIGINT) so both backends store and compare them alike.

-- Every applied event for 24 h: the dedupe window, and the source for rebuilding the
-- trailing windows after a restart or failover.
CREATE TABLE applied_events (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    amount_minor BIGINT NOT NULL,
    applied_at   BIGINT NOT NULL
);
CREATE INDEX applied_events_by_applied_at ON applied_events (applied_at);

-- One history point per minute (kept 8 days); active_users is written when the minute closes.
CREATE TABLE minute_stats (
    minute        BIGINT PRIMARY KEY,
    orders        BIGINT NOT NULL DEFAULT 0,
    revenue_minor BIGINT NOT NULL DEFAULT 0,
    active_users  BIGINT NOT NULL DEFAULT 0
);

-- Net revenue per calendar day in PULSEBOARD_TIMEZONE ('YYYY-MM-DD').
CREATE TABLE daily_revenue (
    day           TEXT PRIMARY KEY,
    revenue_minor BIGINT NOT NULL
);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('snapshot_seq', 0);

-- Values generated once and shared by every instance (the signing secret).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Who aggregates. `epoch` grows with every change of holder and fences stale leaders.
CREATE TABLE leader_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
INSERT INTO leader_lease (name, holder, epoch, expires_at) VALUES ('ingest', '', 0, 0);
