-- Failed sign-ins and attempts in progress, shared by every process on this file: the
-- throttle's sliding windows. `key` is "a:<sha-256 of the lower-cased username>",
-- "i:<client address>", "d:<device>", "r:<address>" or "t:<address>"; `at` is ms. A row with
-- an `attempt` is a reservation (an attempt not yet decided), otherwise a failure.
CREATE TABLE login_failures (
    id      INTEGER PRIMARY KEY,
    key     TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    attempt TEXT
);
CREATE INDEX login_failures_key_at ON login_failures (key, at);
CREATE INDEX login_failures_at ON login_failures (at);
