-- Announcements (SPEC §5-6), replayable for 24 h after their creation (kept 7 days).
-- Ids come from counters/announcement_id inside the inserting transaction, so they are
-- committed in id order: a reader that saw id N has seen every id below it.
CREATE TABLE announcements (
    id         BIGINT PRIMARY KEY,
    level      TEXT NOT NULL,
    message    TEXT NOT NULL,
    author     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('announcement_id', 0);
