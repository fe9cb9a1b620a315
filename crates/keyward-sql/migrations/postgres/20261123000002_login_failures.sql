-- Failed logins, shared by every node of a fleet: the login throttle's sliding windows.
-- `key` is "a:<sha-256 of the lower-cased username>" or "i:<client address>"; `at` is ms.
CREATE TABLE login_failures (
    id BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX login_failures_key_at ON login_failures (key, at);
CREATE INDEX login_failures_at ON login_failures (at);
