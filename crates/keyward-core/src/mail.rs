//! Mail: the letters keyward sends, and the durable outbox they wait in until an SMTP server
//! accepts them.
//!
//! A request that sends mail only *posts* a [`Letter`]: the [`PostOffice`] renders it and
//! stores it in the [`Outbox`] (the database), and the request is answered. A worker on each
//! node claims due mails, delivers them, and retries with backoff; a claim is a lease, so two
//! nodes never deliver one mail twice. Once delivered (or given up on), a mail's message,
//! which holds the link's secret, is erased: only its summary stays, for `keyward mail list`.

use crate::ids::UserId;
use crate::secret::SessionToken;
use crate::store::StoreResult;
use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// What a letter is for. Its link's ticket is of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TicketKind {
    /// Confirm that an address belongs to the account (`/verify-email`).
    VerifyEmail,
    /// Set a new password (`/reset-password`).
    ResetPassword,
    /// The second step of a sign-in with TOTP (`mfa_token`; never mailed).
    MfaSignIn,
}

impl TicketKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
            Self::MfaSignIn => "mfa_sign_in",
        }
    }

    /// The kind a stored name stands for.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "verify_email" => Some(Self::VerifyEmail),
            "reset_password" => Some(Self::ResetPassword),
            "mfa_sign_in" => Some(Self::MfaSignIn),
            _ => None,
        }
    }

    /// [`TicketKind::valid_for`] for people: `24 hours`, `30 minutes`.
    pub fn lasting(self) -> String {
        let d = self.valid_for();
        let (n, unit) = if d.whole_minutes() % 60 == 0 {
            (d.whole_hours(), "hour")
        } else {
            (d.whole_minutes(), "minute")
        };
        format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
    }

    /// Whether a newer ticket of this kind ends the user's older ones: a mailed link does
    /// (the newest mail is the one that works); the second step of a sign-in does not (a user
    /// may be signing in on two devices).
    pub fn newest_only(self) -> bool {
        !matches!(self, Self::MfaSignIn)
    }

    /// How long it works: a verification link a day, a reset link 30 minutes, the second
    /// step of a sign-in 5 minutes.
    pub fn valid_for(self) -> Duration {
        match self {
            Self::VerifyEmail => Duration::hours(24),
            Self::ResetPassword => Duration::minutes(30),
            Self::MfaSignIn => Duration::minutes(5),
        }
    }
}

/// A letter to send: what it is about, to whom, and the secret its link carries.
pub struct Letter {
    /// What it is for.
    pub kind: TicketKind,
    /// The account it concerns.
    pub user_id: UserId,
    /// The account's username, to greet and to remind.
    pub username: String,
    /// The recipient's address.
    pub to: String,
    /// The secret the link carries (only its hash is kept as a ticket).
    pub token: SessionToken,
    /// When the link stops working.
    pub expires_at: OffsetDateTime,
}

impl fmt::Debug for Letter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Letter")
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .field("to", &self.to)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Takes letters and queues them for delivery (rendered, in the outbox).
#[async_trait]
pub trait PostOffice: Send + Sync + 'static {
    /// Queue `letter`; returns once it is stored, never waiting for SMTP.
    async fn post(&self, letter: Letter) -> StoreResult<()>;
}

/// Shared handle to a post office.
pub type DynPostOffice = Arc<dyn PostOffice>;

/// A mail in the outbox, as a delivery needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundMail {
    /// Id (a UUID).
    pub id: String,
    /// What it is for ([`TicketKind::as_str`]).
    pub kind: String,
    /// The envelope's recipient.
    pub recipient: String,
    /// The whole message (RFC 5322), as it goes over SMTP. Holds the link's secret.
    pub message: Vec<u8>,
    /// When it was queued.
    pub created_at: OffsetDateTime,
    /// Past this its link no longer works: it is given up on, not delivered.
    pub expires_at: OffsetDateTime,
    /// Deliveries tried so far.
    pub attempts: u32,
}

impl fmt::Debug for OutboundMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundMail")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("recipient", &self.recipient)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Where a mail is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailState {
    /// Waiting for its (next) delivery.
    Queued,
    /// Accepted by the SMTP server.
    Sent,
    /// Given up on: it kept failing, the server refused it for good, or its link expired first.
    Parked,
}

impl MailState {
    /// The name shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Parked => "parked",
        }
    }
}

/// What the outbox shows of a mail (never its message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailSummary {
    /// Id.
    pub id: String,
    /// What it is for.
    pub kind: String,
    /// Recipient.
    pub recipient: String,
    /// Where it is.
    pub state: MailState,
    /// Deliveries tried.
    pub attempts: u32,
    /// When it was queued.
    pub created_at: OffsetDateTime,
    /// When it is next tried (queued mails).
    pub next_attempt_at: OffsetDateTime,
    /// When it was delivered or given up on.
    pub done_at: Option<OffsetDateTime>,
    /// Why the last delivery failed.
    pub last_error: Option<String>,
}

/// The durable outbox (in the database, shared by every node).
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Add a mail, due at once.
    async fn enqueue(&self, mail: &OutboundMail) -> StoreResult<()>;

    /// Claim up to `limit` due mails (queued, next attempt at or before `now`, no other claim
    /// running) until `lease_until`. Of concurrent callers, on any node, each mail goes to one;
    /// a claim whose holder died runs out at `lease_until` and the mail is due again.
    async fn claim(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<Vec<OutboundMail>>;

    /// The SMTP server accepted the mail: mark it sent and erase its message.
    async fn delivered(&self, id: &str, now: OffsetDateTime) -> StoreResult<()>;

    /// A delivery failed: count it and try again at `retry_at`, or, with `None`, give up on
    /// the mail (parked, its message erased).
    async fn failed(
        &self,
        id: &str,
        now: OffsetDateTime,
        retry_at: Option<OffsetDateTime>,
        error: &str,
    ) -> StoreResult<()>;

    /// The newest `limit` mails, newest first.
    async fn list_mail(&self, limit: u32) -> StoreResult<Vec<MailSummary>>;

    /// Forget sent and parked mails that ended before `before`; returns how many.
    async fn purge_mail(&self, before: OffsetDateTime) -> StoreResult<u64>;
}

/// Shared handle to an outbox.
pub type DynOutbox = Arc<dyn Outbox>;

/// Deliveries tried before a mail is parked.
pub const MAX_ATTEMPTS: u32 = 10;

/// When to try again after the `attempts`-th failure: 5 s, doubling, at most 10 minutes; `None`
/// once [`MAX_ATTEMPTS`] have failed.
pub fn retry_after(attempts: u32) -> Option<Duration> {
    if attempts >= MAX_ATTEMPTS {
        return None;
    }
    let shift = attempts.saturating_sub(1).min(16);
    Some((Duration::seconds(5) * (1i32 << shift)).min(Duration::minutes(10)))
}

/// Longest email address accepted (RFC 5321's path limit).
pub const EMAIL_MAX: usize = 254;

/// A syntactically valid email address, as given (trimmed), checked by the `email_address`
/// crate (RFC 5322's addr-spec, no display name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("email must be an address such as name@example.com, at most 254 characters")]
pub struct EmailError;

impl Email {
    /// Check an address.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let raw = raw.trim();
        if raw.len() > EMAIL_MAX || raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(EmailError);
        }
        let parsed = email_address::EmailAddress::parse_with_options(
            raw,
            email_address::Options::default()
                .without_display_text()
                .without_domain_literal(),
        )
        .map_err(|_| EmailError)?;
        // A mail domain has a dot; `alice@localhost` is not an address anyone mails.
        if !parsed.domain().contains('.') {
            return Err(EmailError);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The address, as given (stores compare addresses ignoring case).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_then_stop() {
        assert_eq!(retry_after(1), Some(Duration::seconds(5)));
        assert_eq!(retry_after(2), Some(Duration::seconds(10)));
        assert_eq!(retry_after(5), Some(Duration::seconds(80)));
        assert_eq!(retry_after(9), Some(Duration::minutes(10)));
        assert_eq!(retry_after(MAX_ATTEMPTS), None);
    }

    #[test]
    fn addresses_are_checked() {
        assert_eq!(
            Email::parse(" Alice@Example.com ").map(|e| e.as_str().to_owned()),
            Ok("Alice@Example.com".to_owned())
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "alice@localhost",
            "Alice <alice@example.com>",
            "al ice@example.com",
            "alice@example.com\r\nBcc: x@y.z",
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            TicketKind::VerifyEmail,
            TicketKind::ResetPassword,
            TicketKind::MfaSignIn,
        ] {
            assert_eq!(TicketKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(TicketKind::ResetPassword.valid_for(), Duration::minutes(30));
        assert_eq!(TicketKind::ResetPassword.lasting(), "30 minutes");
        assert_eq!(TicketKind::VerifyEmail.lasting(), "24 hours");
    }
}
