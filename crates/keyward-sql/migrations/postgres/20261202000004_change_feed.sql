-- The change feed (--session-cache near|replicated on PostgreSQL). Every change to a session,
-- every family revocation and every denial is announced from inside the changing transaction:
-- a trigger appends the event to `kw_feed` under the next number of its bucket and sends it
-- with pg_notify, which PostgreSQL delivers at commit, in commit order. The number comes from a
-- counter row per bucket (not a sequence: sequences hand out numbers out of commit order), so
-- a node sees a gap when it missed a notification and reads exactly what it missed from
-- `kw_feed`. Buckets are the users' shards (the first byte of a token hash, of a session or
-- family id), so one user's changes keep their order and different users' writers do not wait
-- for each other. The events' text is keyward_core::feed::FeedEvent's.
CREATE TABLE kw_feed_heads (
    bucket INTEGER PRIMARY KEY,
    seq    BIGINT  NOT NULL
);
INSERT INTO kw_feed_heads (bucket, seq) SELECT b, 0 FROM generate_series(0, 255) AS b;

CREATE TABLE kw_feed (
    bucket INTEGER NOT NULL,
    seq    BIGINT  NOT NULL,
    event  TEXT    NOT NULL,
    at     BIGINT  NOT NULL,
    PRIMARY KEY (bucket, seq)
);
CREATE INDEX kw_feed_at ON kw_feed (at);

CREATE FUNCTION kw_announce(b INTEGER, ev TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    s BIGINT;
BEGIN
    UPDATE kw_feed_heads SET seq = seq + 1 WHERE bucket = b RETURNING seq INTO s;
    INSERT INTO kw_feed (bucket, seq, event, at)
        VALUES (b, s, ev, (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT);
    PERFORM pg_notify('kw_feed', b || ':' || s || ' ' || ev);
END $$;

CREATE FUNCTION kw_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM kw_announce(get_byte(NEW.token_hash, 0),
            'c ' || encode(NEW.token_hash, 'hex') || ' ' || json_build_object(
                'i', NEW.id, 'u', NEW.user_id, 'n', NEW.username,
                'c', NEW.created_at, 'l', NEW.last_seen_at, 'e', NEW.expires_at)::TEXT);
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.last_seen_at > OLD.last_seen_at THEN
            PERFORM kw_announce(get_byte(NEW.token_hash, 0),
                't ' || encode(NEW.token_hash, 'hex') || ' ' || NEW.last_seen_at);
        END IF;
    ELSE
        PERFORM kw_announce(get_byte(OLD.token_hash, 0), 'd ' || encode(OLD.token_hash, 'hex'));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER kw_sessions_feed AFTER INSERT OR UPDATE OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION kw_session_changed();

CREATE FUNCTION kw_family_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM kw_announce(('x' || substr(NEW.id, 1, 2))::bit(8)::INTEGER, 'f ' || NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER kw_families_feed AFTER UPDATE OF revoked_at ON refresh_families
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION kw_family_revoked();

CREATE FUNCTION kw_token_denied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM kw_announce(get_byte(sha256(convert_to(NEW.jti, 'UTF8')), 0),
        'x ' || NEW.expires_at || ' ' || NEW.jti);
    RETURN NULL;
END $$;
CREATE TRIGGER kw_denied_feed AFTER INSERT OR UPDATE ON denied_tokens
    FOR EACH ROW EXECUTE FUNCTION kw_token_denied();
