//! The rows as the database returns them, and the records they become. Private: each table's
//! mapping is written once, for both engines (`sqlx::FromRow` is generic over the row type).

use keyward_core::clock::from_unix_ms;
use keyward_core::{
    Amr, MailState, MailSummary, OutboundMail, RefreshFamily, SessionId, SessionRecord, StoreError,
    StoredKey, Ticket, TicketKind, TokenHash, UserId, UserRecord,
};

/// The columns of `sessions`, in the order of [`SessionRow`].
macro_rules! session_cols {
    () => {
        "token_hash, id, user_id, username, created_at, last_seen_at, expires_at, ip, user_agent, amr"
    };
}
pub(crate) use session_cols;

/// The columns of `users`.
macro_rules! user_cols {
    () => {
        "id, username, password_hash, created_at, locked, email, email_verified, totp_secret IS NOT NULL AS totp"
    };
}
pub(crate) use user_cols;

/// The columns of `refresh_families`.
macro_rules! family_cols {
    () => {
        "id, user_id, username, created_at, expires_at, revoked_at"
    };
}
pub(crate) use family_cols;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    pub token_hash: Vec<u8>,
    pub id: String,
    pub user_id: String,
    pub username: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub amr: i32,
}

impl TryFrom<SessionRow> for SessionRecord {
    type Error = StoreError;
    fn try_from(r: SessionRow) -> Result<Self, StoreError> {
        Ok(SessionRecord {
            token_hash: TokenHash::from_slice(&r.token_hash)
                .ok_or_else(|| corrupt("token hash length"))?,
            id: SessionId::parse(&r.id).ok_or_else(|| corrupt("session id"))?,
            user_id: UserId::parse(&r.user_id).ok_or_else(|| corrupt("user id"))?,
            username: r.username,
            created_at: from_unix_ms(r.created_at),
            last_seen_at: from_unix_ms(r.last_seen_at),
            expires_at: from_unix_ms(r.expires_at),
            ip: r.ip,
            user_agent: r.user_agent,
            amr: Amr::from_bits(u8::try_from(r.amr).unwrap_or(1)),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: String,
    username: String,
    password_hash: String,
    created_at: i64,
    locked: bool,
    email: Option<String>,
    email_verified: bool,
    totp: bool,
}

impl TryFrom<UserRow> for UserRecord {
    type Error = StoreError;
    fn try_from(r: UserRow) -> Result<Self, StoreError> {
        Ok(UserRecord {
            id: UserId::parse(&r.id).ok_or_else(|| corrupt("user id"))?,
            username: r.username,
            password_hash: r.password_hash,
            created_at: from_unix_ms(r.created_at),
            locked: r.locked,
            email: r.email,
            email_verified: r.email_verified,
            totp: r.totp,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct FamilyRow {
    id: String,
    user_id: String,
    username: String,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
}

impl FamilyRow {
    /// The family, and whether it is revoked.
    pub fn into_family(self) -> Result<(RefreshFamily, bool), StoreError> {
        Ok((
            RefreshFamily {
                id: SessionId::parse(&self.id).ok_or_else(|| corrupt("family id"))?,
                user_id: UserId::parse(&self.user_id).ok_or_else(|| corrupt("user id"))?,
                username: self.username,
                created_at: from_unix_ms(self.created_at),
                expires_at: from_unix_ms(self.expires_at),
            },
            self.revoked_at.is_some(),
        ))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    kid: String,
    alg: String,
    sealed_private: Vec<u8>,
    created_at: i64,
}

impl From<KeyRow> for StoredKey {
    fn from(r: KeyRow) -> Self {
        StoredKey {
            kid: r.kid,
            alg: r.alg,
            sealed_private: r.sealed_private,
            created_at: from_unix_ms(r.created_at),
        }
    }
}

/// A refresh token's row, as rotation reads it.
#[derive(sqlx::FromRow)]
pub(crate) struct RefreshRow {
    pub family_id: String,
    pub used_at: Option<i64>,
    pub successor: Option<Vec<u8>>,
}

/// The columns of `tickets`.
macro_rules! ticket_cols {
    () => {
        "token_hash, kind, user_id, email, created_at, expires_at"
    };
}
pub(crate) use ticket_cols;

#[derive(sqlx::FromRow)]
pub(crate) struct TicketRow {
    token_hash: Vec<u8>,
    kind: String,
    user_id: String,
    email: Option<String>,
    created_at: i64,
    expires_at: i64,
}

impl TryFrom<TicketRow> for Ticket {
    type Error = StoreError;
    fn try_from(r: TicketRow) -> Result<Self, StoreError> {
        Ok(Ticket {
            hash: TokenHash::from_slice(&r.token_hash)
                .ok_or_else(|| corrupt("ticket hash length"))?,
            kind: TicketKind::parse(&r.kind).ok_or_else(|| corrupt("ticket kind"))?,
            user_id: UserId::parse(&r.user_id).ok_or_else(|| corrupt("user id"))?,
            email: r.email,
            created_at: from_unix_ms(r.created_at),
            expires_at: from_unix_ms(r.expires_at),
        })
    }
}

/// The columns of `mail_outbox` a delivery needs.
macro_rules! outbound_cols {
    () => {
        "id, kind, recipient, message, created_at, expires_at, attempts"
    };
}
pub(crate) use outbound_cols;

#[derive(sqlx::FromRow)]
pub(crate) struct OutboundRow {
    id: String,
    kind: String,
    recipient: String,
    message: Option<Vec<u8>>,
    created_at: i64,
    expires_at: i64,
    attempts: i32,
}

impl From<OutboundRow> for OutboundMail {
    fn from(r: OutboundRow) -> Self {
        OutboundMail {
            id: r.id,
            kind: r.kind,
            recipient: r.recipient,
            message: r.message.unwrap_or_default(),
            created_at: from_unix_ms(r.created_at),
            expires_at: from_unix_ms(r.expires_at),
            attempts: u32::try_from(r.attempts).unwrap_or(0),
        }
    }
}

/// The columns of `mail_outbox` a listing shows.
macro_rules! summary_cols {
    () => {
        "id, kind, recipient, state, attempts, created_at, next_attempt_at, done_at, last_error"
    };
}
pub(crate) use summary_cols;

#[derive(sqlx::FromRow)]
pub(crate) struct SummaryRow {
    id: String,
    kind: String,
    recipient: String,
    state: String,
    attempts: i32,
    created_at: i64,
    next_attempt_at: i64,
    done_at: Option<i64>,
    last_error: Option<String>,
}

impl TryFrom<SummaryRow> for MailSummary {
    type Error = StoreError;
    fn try_from(r: SummaryRow) -> Result<Self, StoreError> {
        Ok(MailSummary {
            id: r.id,
            kind: r.kind,
            recipient: r.recipient,
            state: match r.state.as_str() {
                "queued" => MailState::Queued,
                "sent" => MailState::Sent,
                "parked" => MailState::Parked,
                _ => return Err(corrupt("mail state")),
            },
            attempts: u32::try_from(r.attempts).unwrap_or(0),
            created_at: from_unix_ms(r.created_at),
            next_attempt_at: from_unix_ms(r.next_attempt_at),
            done_at: r.done_at.map(from_unix_ms),
            last_error: r.last_error,
        })
    }
}
