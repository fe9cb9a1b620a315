-- Email on accounts, the tickets mailed links stand for, and the durable outbox.
-- An address is some account's only once verified: verified addresses are unique.
ALTER TABLE users ADD COLUMN email TEXT;
ALTER TABLE users ADD COLUMN email_key TEXT;
ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX users_by_email ON users (email_key);
CREATE UNIQUE INDEX users_verified_email ON users (email_key) WHERE email_verified;

-- A mailed link's secret is kept only as its SHA-256.
CREATE TABLE tickets (
    token_hash  BYTEA   PRIMARY KEY NOT NULL,
    kind        TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    email       TEXT,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL
);
CREATE INDEX tickets_by_user ON tickets (user_id, kind);
CREATE INDEX tickets_by_expiry ON tickets (expires_at);

-- `message` (which holds a link's secret) is erased once the mail is sent or parked.
-- A claim is a lease: `lease_until` in the future means a worker is delivering it.
CREATE TABLE mail_outbox (
    id               TEXT    PRIMARY KEY NOT NULL,
    kind             TEXT    NOT NULL,
    recipient        TEXT    NOT NULL,
    message          BYTEA,
    created_at       BIGINT  NOT NULL,
    expires_at       BIGINT  NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'queued',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    lease_until      BIGINT  NOT NULL DEFAULT 0,
    done_at          BIGINT,
    last_error       TEXT
);
CREATE INDEX mail_outbox_due ON mail_outbox (state, next_attempt_at);
CREATE INDEX mail_outbox_by_created ON mail_outbox (created_at);
