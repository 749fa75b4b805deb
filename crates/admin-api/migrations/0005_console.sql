-- What the web console needs beside the directory: invites an administrator withdrew before they were used.
ALTER TABLE invites ADD COLUMN revoked_at BIGINT;
CREATE INDEX audit_events_bubble_at ON audit_events (bubble_id, at);
-- A bubble's policy (crates/proto/src/policy.rs), as set in the console; a bubble without a row requires nothing.
-- Flags are 0/1 integers: sqlx's Any driver reads the same type back from SQLite and PostgreSQL.
CREATE TABLE bubble_policies (
    bubble_id TEXT PRIMARY KEY REFERENCES bubbles (id) ON DELETE CASCADE,
    masked_by_default BIGINT NOT NULL CHECK (masked_by_default IN (0, 1)),
    disappear_within_secs BIGINT NOT NULL,
    files_allowed BIGINT NOT NULL CHECK (files_allowed IN (0, 1)),
    max_file_bytes BIGINT NOT NULL,
    calls_allowed BIGINT NOT NULL CHECK (calls_allowed IN (0, 1)),
    relay_only BIGINT NOT NULL CHECK (relay_only IN (0, 1))
);
-- Bytes the bubble's TURN relay carried, from the health reports (0 in samples older than this column).
ALTER TABLE health_samples ADD COLUMN turn_bytes_relayed BIGINT NOT NULL DEFAULT 0;
