-- How a session's owner authenticated (RFC 8176 amr, as bits: 1 pwd, 2 otp).
ALTER TABLE sessions ADD COLUMN amr INTEGER NOT NULL DEFAULT 1;
