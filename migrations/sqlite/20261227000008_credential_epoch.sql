-- Revocation (docs/security.md, Revocation): every user has a credential epoch, made anew on a
-- password change; access tokens and sessions name the epoch they were made under, and are good
-- only while it is still the user's. Existing users get a random one; existing sessions get
-- their user's, so browsers stay signed in across the upgrade (tokens without the claim are
-- refused: they live at most their lifetime).
ALTER TABLE users ADD COLUMN credential_epoch TEXT NOT NULL DEFAULT '';
UPDATE users SET credential_epoch = lower(hex(randomblob(16)));
ALTER TABLE sessions ADD COLUMN epoch TEXT NOT NULL DEFAULT '';
UPDATE sessions SET epoch = COALESCE(
    (SELECT credential_epoch FROM users WHERE users.username = sessions.username), '');
