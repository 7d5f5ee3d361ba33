-- The operations console (docs/api.md, Console): its audit log, kept 90 days, and the
-- cluster-wide ingest pause, kept as the settings row `ingest_paused` ('true' / 'false') so
-- that it survives restarts and failover (a new leader reads it at the start of its term).
-- Audit ids come from counters/audit_id inside the inserting transaction: committed in order.
CREATE TABLE audit_log (
    id       BIGINT PRIMARY KEY,
    at       BIGINT NOT NULL,
    username TEXT NOT NULL,
    node     TEXT NOT NULL,
    command  TEXT NOT NULL,
    payload  TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
INSERT INTO counters (name, value) VALUES ('audit_id', 0);
INSERT INTO settings (name, value) VALUES ('ingest_paused', 'false') ON CONFLICT (name) DO NOTHING;
