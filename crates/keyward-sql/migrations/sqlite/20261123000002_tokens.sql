-- Token authentication: refresh-token families (the `sid` of access tokens), the allow list
-- of refresh-token hashes, the deny list of access-token ids, and the signing keys (private
-- keys sealed with AES-256-GCM under the key-encryption key, never stored in the clear).
CREATE TABLE refresh_families (
    id          TEXT    PRIMARY KEY NOT NULL,
    user_id     TEXT    NOT NULL,
    username    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX refresh_families_by_user ON refresh_families (user_id);
CREATE INDEX refresh_families_by_expiry ON refresh_families (expires_at);

CREATE TABLE refresh_tokens (
    token_hash  BLOB    PRIMARY KEY NOT NULL,
    family_id   TEXT    NOT NULL,
    used_at     INTEGER,
    -- Set when used: the hash of the token that replaced it (for the reuse grace).
    successor   BLOB
) WITHOUT ROWID;
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);

CREATE TABLE denied_tokens (
    jti         TEXT    PRIMARY KEY NOT NULL,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE signing_keys (
    kid             TEXT    PRIMARY KEY NOT NULL,
    alg             TEXT    NOT NULL,
    sealed_private  BLOB    NOT NULL,
    created_at      INTEGER NOT NULL
);
