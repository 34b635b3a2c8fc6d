-- API tokens and browser sessions (SQLite twin of ../postgres/0006_auth.sql).
-- Secrets are never stored: a token or session id is kept as its SHA-256 (hex); both are 256-bit
-- random values, so a plain hash is enough (no password stretching needed).

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL,
    scope        TEXT    NOT NULL,
    hash         TEXT    NOT NULL UNIQUE,
    created_at   REAL    NOT NULL,
    last_used_at REAL,
    revoked_at   REAL
);

CREATE TABLE sessions (
    hash       TEXT    PRIMARY KEY,
    token_id   INTEGER NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    created_at REAL    NOT NULL,
    expires_at REAL    NOT NULL
);
CREATE INDEX sessions_token ON sessions(token_id);
