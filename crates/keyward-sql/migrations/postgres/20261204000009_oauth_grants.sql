-- The authorization code flow. A code is kept only as its SHA-256; its redemption marks it
-- used and names the refresh-token family its tokens belong to, so a replay can revoke them.
-- Used codes stay until a day after their expiry, which is how long a replay is recognised.
CREATE TABLE oauth_codes (
    code_hash       BYTEA    PRIMARY KEY NOT NULL,
    client_id       TEXT    NOT NULL,
    redirect_uri    TEXT    NOT NULL,
    code_challenge  TEXT    NOT NULL,
    nonce           TEXT,
    scope           TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    session_id      TEXT    NOT NULL,
    auth_time       BIGINT  NOT NULL,
    amr             INTEGER NOT NULL,
    created_at      BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL,
    used_at         BIGINT,
    family_id       TEXT    NOT NULL,
    replayed        BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX oauth_codes_client ON oauth_codes (client_id);

-- A refresh-token family issued to a client (families of the password grant have none).
CREATE TABLE oauth_grants (
    family_id   TEXT    PRIMARY KEY NOT NULL,
    client_id   TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL
);
CREATE INDEX oauth_grants_client_user ON oauth_grants (client_id, user_id);

-- What a user allowed a client that is not first-party.
CREATE TABLE oauth_consents (
    user_id     TEXT    NOT NULL,
    client_id   TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    granted_at  BIGINT  NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
CREATE INDEX oauth_consents_client ON oauth_consents (client_id);
