-- The organisation's directory. Public keys and metadata only: no column can hold a private key, a message key
-- or content (tests/key_custody.rs checks the schema). Portable SQL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE bubbles (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    -- SHA-256 (hex) of the credential a bubble-server presents to fetch its directory.
    credential_hash TEXT NOT NULL CHECK (length(credential_hash) = 64),
    created_at BIGINT NOT NULL
);

CREATE TABLE categories (
    bubble_id TEXT NOT NULL REFERENCES bubbles (id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    PRIMARY KEY (bubble_id, id)
);

CREATE TABLE category_sees (
    bubble_id TEXT NOT NULL,
    category_id TEXT NOT NULL,
    sees_id TEXT NOT NULL,
    PRIMARY KEY (bubble_id, category_id, sees_id),
    FOREIGN KEY (bubble_id, category_id) REFERENCES categories (bubble_id, id) ON DELETE CASCADE,
    FOREIGN KEY (bubble_id, sees_id) REFERENCES categories (bubble_id, id) ON DELETE CASCADE
);

CREATE TABLE members (
    bubble_id TEXT NOT NULL REFERENCES bubbles (id) ON DELETE CASCADE,
    member_id TEXT NOT NULL CHECK (length(member_id) = 32),
    -- Ed25519 public key, unpadded base64url; registered only with a signature proving possession.
    public_key TEXT NOT NULL CHECK (length(public_key) = 43),
    display_name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    enrolled_at BIGINT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (bubble_id, member_id),
    UNIQUE (bubble_id, public_key)
);

CREATE TABLE member_categories (
    bubble_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    category_id TEXT NOT NULL,
    PRIMARY KEY (bubble_id, member_id, category_id),
    FOREIGN KEY (bubble_id, member_id) REFERENCES members (bubble_id, member_id) ON DELETE CASCADE,
    FOREIGN KEY (bubble_id, category_id) REFERENCES categories (bubble_id, id) ON DELETE CASCADE
);

CREATE TABLE invites (
    -- SHA-256 (hex) of the invite token; the token itself is never stored.
    token_hash TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
    bubble_id TEXT NOT NULL REFERENCES bubbles (id) ON DELETE CASCADE,
    display_name TEXT NOT NULL,
    -- Comma-separated category ids granted on enrollment.
    categories TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    used_by TEXT
);

CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    bubble_id TEXT,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);

CREATE INDEX audit_events_at ON audit_events (at);
