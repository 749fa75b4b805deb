-- Scoped API tokens for administrators and auditors (until, and beside, OpenID Connect sign-in).
-- Only the SHA-256 of a token is stored.
CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'auditor')),
    -- '*' for every bubble, else comma-separated bubble ids.
    bubbles TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
