-- A bubble's directory revision: a random value replaced in the same transaction as every change to what its
-- directory holds (members, their categories, categories, what they see, the policy). A bubble-server's poll
-- that finds the revision it already has reads nothing else (ETag end to end). Random rather than a counter: a
-- database restored from a backup brings back the revision that matches its content, never one that a
-- follower cached for other content.
ALTER TABLE bubbles ADD COLUMN directory_revision TEXT NOT NULL DEFAULT 'initial';
