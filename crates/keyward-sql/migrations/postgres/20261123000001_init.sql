-- Users, sessions and tokens. Times are Unix milliseconds (BIGINT), as in the SQLite schema.
-- Sessions and refresh tokens are keyed by the SHA-256 of their token; no token is stored.
CREATE TABLE users (
    id            TEXT    PRIMARY KEY,
    username      TEXT    NOT NULL,
    username_key  TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    locked        BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE sessions (
    token_hash   BYTEA  PRIMARY KEY,
    id           TEXT   NOT NULL UNIQUE,
    user_id      TEXT   NOT NULL,
    username     TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    ip           TEXT,
    user_agent   TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX sessions_by_last_seen ON sessions (last_seen_at);

CREATE TABLE refresh_families (
    id          TEXT   PRIMARY KEY,
    user_id     TEXT   NOT NULL,
    username    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX refresh_families_by_user ON refresh_families (user_id);
CREATE INDEX refresh_families_by_expiry ON refresh_families (expires_at);

CREATE TABLE refresh_tokens (
    token_hash  BYTEA  PRIMARY KEY,
    family_id   TEXT   NOT NULL,
    used_at     BIGINT,
    successor   BYTEA
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);

CREATE TABLE denied_tokens (
    jti         TEXT   PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid             TEXT   PRIMARY KEY,
    alg             TEXT   NOT NULL,
    sealed_private  BYTEA  NOT NULL,
    created_at      BIGINT NOT NULL
);
