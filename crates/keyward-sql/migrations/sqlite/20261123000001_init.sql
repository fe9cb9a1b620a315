-- Users and sessions. Times are Unix milliseconds. Sessions keep only the SHA-256 of their
-- token, and a copy of the username so a validated request is one indexed read.
CREATE TABLE users (
    id            TEXT    PRIMARY KEY NOT NULL,
    username      TEXT    NOT NULL,
    username_key  TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    locked        INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE sessions (
    token_hash   BLOB    PRIMARY KEY NOT NULL,
    id           TEXT    NOT NULL UNIQUE,
    user_id      TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    ip           TEXT,
    user_agent   TEXT
) WITHOUT ROWID;

CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX sessions_by_last_seen ON sessions (last_seen_at);
