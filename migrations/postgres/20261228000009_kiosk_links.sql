-- Kiosk links (docs/security.md, Kiosk links): a revocable, dashboard-only credential for a wall
-- screen. Only the SHA-256 of a link's key is kept, never the key; `epoch` is made anew at each
-- issue, so a link revoked and issued again under the same name does not revive the old one's
-- sessions. `last_used_at` is 0 until first used. Revoking deletes the link and its sessions.
CREATE TABLE kiosk_links (
    name         TEXT PRIMARY KEY,
    key_hash     TEXT NOT NULL UNIQUE,
    epoch        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL DEFAULT 0
);

-- The session a screen gets for the key (its id stored as SHA-256, like `sessions`); it lives
-- as long as its link.
CREATE TABLE kiosk_sessions (
    id_hash    TEXT PRIMARY KEY,
    link       TEXT NOT NULL,
    epoch      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX kiosk_sessions_by_link ON kiosk_sessions (link);
