-- The second factor: the TOTP secret, sealed under the key-encryption key (it must be read
-- back to check codes), one being enrolled, the step of the last code accepted (moved forward
-- by compare-and-set: a code is accepted once), and recovery codes, stored only as hashes.
ALTER TABLE users ADD COLUMN totp_secret BLOB;
ALTER TABLE users ADD COLUMN totp_pending BLOB;
ALTER TABLE users ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT -1;

CREATE TABLE recovery_codes (
    user_id    TEXT    NOT NULL,
    code_hash  BLOB NOT NULL,
    used_at    INTEGER,
    PRIMARY KEY (user_id, code_hash)
);
