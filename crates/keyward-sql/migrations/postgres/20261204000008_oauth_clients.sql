-- OAuth clients. Redirect URIs are JSON arrays of strings; a confidential client's secret is
-- kept only as its SHA-256.
CREATE TABLE oauth_clients (
    id                         TEXT    PRIMARY KEY NOT NULL,
    name                       TEXT    NOT NULL,
    redirect_uris              TEXT    NOT NULL,
    post_logout_redirect_uris  TEXT    NOT NULL,
    secret_hash                BYTEA,
    first_party                BOOLEAN NOT NULL DEFAULT FALSE,
    created_at                 BIGINT NOT NULL
);
