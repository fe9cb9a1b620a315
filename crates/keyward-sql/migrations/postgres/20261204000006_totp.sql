-- The second factor: the TOTP secret, sealed under the key-encryption key (it must be read
-- back to check codes), one being enrolled, the step of the last code accepted (moved forward
-- by compare-and-set: a code is accepted once), and recovery codes, stored only as hashes.
ALTER TABLE users ADD COLUMN totp_secret BYTEA;
ALTER TABLE users ADD COLUMN totp_pending BYTEA;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT -1;

CREATE TABLE recovery_codes (
    user_id    TEXT    NOT NULL,
    code_hash  BYTEA NOT NULL,
    used_at    BIGINT,
    PRIMARY KEY (user_id, code_hash)
);
