-- What the web console needs beside the directory: invites an administrator withdrew before they were used.
ALTER TABLE invites ADD COLUMN revoked_at BIGINT;
CREATE INDEX audit_events_bubble_at ON audit_events (bubble_id, at);
