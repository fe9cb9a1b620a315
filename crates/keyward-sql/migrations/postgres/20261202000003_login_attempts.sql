-- Attempts in progress count against the limits too, on every node: a row with an `attempt`
-- is a reservation (an attempt not yet decided), otherwise a failure.
ALTER TABLE login_failures ADD COLUMN attempt TEXT;
CREATE INDEX login_failures_pending ON login_failures (key, attempt) WHERE attempt IS NOT NULL;
