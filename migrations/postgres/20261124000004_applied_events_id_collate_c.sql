-- Event ids are opaque keys: compare them byte by byte. Under the database's default collation
-- every comparison in the unique index went through the C library's strcoll.
ALTER TABLE applied_events ALTER COLUMN id TYPE TEXT COLLATE "C";
