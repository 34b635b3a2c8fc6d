-- API tokens and browser sessions (Postgres twin of ../sqlite/0006_auth.sql).
-- Secrets are never stored: a token or session id is kept as its SHA-256 (hex); both are 256-bit
-- random values, so a plain hash is enough (no password stretching needed).

CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT    NOT NULL,
    scope        TEXT    NOT NULL,
    hash         TEXT    NOT NULL UNIQUE,
    created_at   DOUBLE PRECISION NOT NULL,
    last_used_at DOUBLE PRECISION,
    revoked_at   DOUBLE PRECISION
);

CREATE TABLE sessions (
    hash       TEXT    PRIMARY KEY,
    token_id   BIGINT  NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX sessions_token ON sessions(token_id);
