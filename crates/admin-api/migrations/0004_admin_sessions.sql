-- OpenID Connect sign-in for administrators.
--
-- A login in progress: the state (hashed), the PKCE challenge (public: the provider sees it too) and the nonce.
-- The PKCE verifier never reaches the database: it is the browser's HttpOnly login cookie, so a callback only
-- completes in the browser that started the login (no login CSRF) and on whichever replica it lands.
CREATE TABLE oidc_logins (
    state_hash TEXT PRIMARY KEY CHECK (length(state_hash) = 64),
    pkce_challenge TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- A signed-in administrator's session: only the SHA-256 of the session cookie is stored.
CREATE TABLE admin_sessions (
    session_hash TEXT PRIMARY KEY CHECK (length(session_hash) = 64),
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'auditor')),
    -- '*' for every bubble, else comma-separated bubble ids.
    bubbles TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX admin_sessions_expiry ON admin_sessions (expires_at);
