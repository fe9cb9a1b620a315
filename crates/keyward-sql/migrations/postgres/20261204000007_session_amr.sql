-- How a session's owner authenticated (RFC 8176 amr, as bits: 1 pwd, 2 otp), announced by
-- the change feed with the rest of a new session.
ALTER TABLE sessions ADD COLUMN amr INTEGER NOT NULL DEFAULT 1;

CREATE OR REPLACE FUNCTION kw_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM kw_announce(get_byte(NEW.token_hash, 0),
            'c ' || encode(NEW.token_hash, 'hex') || ' ' || json_build_object(
                'i', NEW.id, 'u', NEW.user_id, 'n', NEW.username,
                'c', NEW.created_at, 'l', NEW.last_seen_at, 'e', NEW.expires_at,
                'a', NEW.amr)::TEXT);
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
