//! Email verification and password reset: the tickets their links stand for, and the flows of
//! the [`AuthService`] that issue and redeem them.
//!
//! A ticket is the hash of a mailed secret (256 bits from the OS CSPRNG), its kind, its owner
//! and when it ends. It is single use: redeeming deletes it atomically, so of two concurrent
//! uses one wins. A newer ticket of the same kind ends the older ones.

use crate::auth::{show_ip, AuthError, AuthResult, AuthService, ClientInfo, AUDIT};
use crate::ids::{UserId, Username};
use crate::mail::{DynPostOffice, Email, Letter, TicketKind};
use crate::password;
use crate::secret::{Password, SessionToken, TokenHash};
use crate::store::{DynUserStore, StoreError, StoreResult, UserRecord};
use crate::throttle::Refused;
use async_trait::async_trait;
use std::net::IpAddr;
use std::sync::Arc;
use time::OffsetDateTime;

/// A mailed link's secret, as stored: its hash and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// SHA-256 of the secret.
    pub hash: TokenHash,
    /// What it is for.
    pub kind: TicketKind,
    /// Whose it is.
    pub user_id: UserId,
    /// The address it verifies (verification tickets).
    pub email: Option<String>,
    /// When it was issued.
    pub created_at: OffsetDateTime,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
}

/// Where tickets live (the database).
#[async_trait]
pub trait TicketStore: Send + Sync + 'static {
    /// Store `ticket`, ending the user's other tickets of its kind when the kind keeps only
    /// the newest ([`TicketKind::newest_only`]), in one step.
    async fn issue_ticket(&self, ticket: &Ticket) -> StoreResult<()>;
    /// The live ticket of this kind with this hash, leaving it in place.
    async fn find_ticket(
        &self,
        hash: &TokenHash,
        kind: TicketKind,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Ticket>>;
    /// Use a ticket: remove it and return it if it was live. Of concurrent calls, one gets it.
    async fn redeem_ticket(
        &self,
        hash: &TokenHash,
        kind: TicketKind,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Ticket>>;
    /// End every ticket of this kind of a user; returns how many.
    async fn end_tickets(&self, user: UserId, kind: TicketKind) -> StoreResult<u64>;
    /// Remove tickets that ended before `now`; returns how many.
    async fn purge_tickets(&self, now: OffsetDateTime) -> StoreResult<u64>;
}

/// Shared handle to a ticket store.
pub type DynTicketStore = Arc<dyn TicketStore>;

/// Who asks for a password reset.
#[derive(Debug, Clone)]
pub enum ResetFor {
    /// By username.
    Username(String),
    /// By (verified) email address.
    Email(String),
}

/// The mail side of the service: the tickets, and where letters go (absent without SMTP).
#[derive(Clone)]
pub(crate) struct Mail {
    pub(crate) tickets: DynTicketStore,
    pub(crate) post: Option<DynPostOffice>,
}

impl AuthService {
    pub(crate) fn tickets_store(&self) -> AuthResult<&DynTicketStore> {
        self.mail
            .as_ref()
            .map(|m| &m.tickets)
            .ok_or(AuthError::MailNotConfigured)
    }

    fn post_office(&self) -> AuthResult<(&DynTicketStore, &DynPostOffice)> {
        match &self.mail {
            Some(Mail {
                tickets,
                post: Some(post),
            }) => Ok((tickets, post)),
            _ => Err(AuthError::MailNotConfigured),
        }
    }

    /// Whether mail can be sent (an SMTP server is configured).
    pub fn mail_enabled(&self) -> bool {
        self.post_office().is_ok()
    }

    /// Issue a verification ticket for `email` and post its letter.
    pub(crate) async fn send_verification(
        &self,
        user: &UserRecord,
        email: &Email,
    ) -> AuthResult<()> {
        let (tickets, post) = self.post_office()?;
        send(
            tickets,
            post,
            TicketKind::VerifyEmail,
            user,
            email.as_str(),
            self.clock.now(),
        )
        .await?;
        tracing::info!(target: AUDIT, event = "email_verification_sent", user_id = %user.id);
        Ok(())
    }

    /// Ask to change the account's address to `email` (step-up: the current password). The
    /// address is the account's only once the link mailed to it is used; until then the old
    /// one stays.
    pub async fn change_email(
        &self,
        user_id: UserId,
        email: &str,
        current: &Password,
        code: Option<&str>,
        client: &ClientInfo,
    ) -> AuthResult<()> {
        let email = Email::parse(email)?;
        self.post_office()?;
        let user = self.step_up(user_id, current, code, client).await?;
        self.send_verification(&user, &email).await?;
        tracing::info!(target: AUDIT, event = "email_change_requested", user_id = %user.id, ip = %show_ip(client.ip));
        Ok(())
    }

    /// Use a verification link: the address it was sent to becomes the account's, verified.
    pub async fn verify_email(&self, token: &str, ip: Option<IpAddr>) -> AuthResult<UserRecord> {
        let (tickets, _) = self.post_office()?;
        self.admit_link(ip)?;
        let now = self.clock.now();
        let redeemed = match SessionToken::parse(token) {
            Some(t) => {
                tickets
                    .redeem_ticket(&t.hash(), TicketKind::VerifyEmail, now)
                    .await?
            }
            None => None,
        };
        let Some(Ticket {
            user_id,
            email: Some(email),
            ..
        }) = redeemed
        else {
            self.throttle.token_failed(ip).await;
            tracing::info!(target: AUDIT, event = "email_verification_failed", ip = %show_ip(ip));
            return Err(AuthError::InvalidLink);
        };
        match self.users.set_email(user_id, Some(&email), true).await {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::InvalidLink),
            Err(StoreError::Conflict(_)) => return Err(AuthError::EmailTaken),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(target: AUDIT, event = "email_verified", user_id = %user_id, ip = %show_ip(ip));
        self.users
            .user_by_id(user_id)
            .await?
            .ok_or(AuthError::InvalidLink)
    }

    /// Ask for a password reset. The answer is the same, and as fast, whether or not the
    /// account exists: after the throttles (per address, and per name or address asked for)
    /// the look-up and the mail happen after the answer. An account with a verified address
    /// gets a link valid 30 minutes; a newer request ends the older link.
    pub async fn request_password_reset(
        &self,
        who: ResetFor,
        ip: Option<IpAddr>,
    ) -> AuthResult<()> {
        let (tickets, post) = self.post_office()?;
        let asked = match &who {
            ResetFor::Username(name) if name.chars().count() <= crate::ids::USERNAME_MAX => {
                format!("u:{}", name.to_lowercase())
            }
            ResetFor::Email(email) if email.len() <= crate::mail::EMAIL_MAX => {
                format!("e:{}", email.trim().to_lowercase())
            }
            ResetFor::Username(_) => return Err(AuthError::TooLong("username")),
            ResetFor::Email(_) => return Err(AuthError::TooLong("email")),
        };
        match self.throttle.reset_request(&asked, ip).await {
            Ok(()) => {}
            Err(Refused::Throttled(retry_after)) => {
                tracing::warn!(target: AUDIT, event = "password_reset_throttled", ip = %show_ip(ip));
                return Err(AuthError::Throttled { retry_after });
            }
            Err(Refused::Store(e)) => return Err(e.into()),
        }
        let users = self.users.clone();
        let (tickets, post) = (tickets.clone(), post.clone());
        let now = self.clock.now();
        tokio::spawn(async move {
            if let Err(e) = reset_mail(&users, &tickets, &post, who, now, ip).await {
                tracing::warn!(error = %e, "a password-reset mail could not be queued");
            }
        });
        Ok(())
    }

    /// Use a reset link: set `new` as the password (the policy applies, and a refused password
    /// leaves the link usable), end every session, refresh token and reset link of the user.
    /// A second factor is still asked at the next sign-in.
    pub async fn confirm_password_reset(
        &self,
        token: &str,
        new: &Password,
        ip: Option<IpAddr>,
    ) -> AuthResult<UserRecord> {
        password::check_length(new)?;
        let (tickets, _) = self.post_office()?;
        self.admit_link(ip)?;
        let hash = SessionToken::parse(token).map(|t| t.hash());
        let now = self.clock.now();
        let found = match &hash {
            Some(h) => {
                tickets
                    .find_ticket(h, TicketKind::ResetPassword, now)
                    .await?
            }
            None => None,
        };
        let user = match found {
            Some(t) => self.users.user_by_id(t.user_id).await?,
            None => None,
        };
        let (Some(hash), Some(user)) = (hash, user.filter(|u| !u.locked)) else {
            self.throttle.token_failed(ip).await;
            tracing::info!(target: AUDIT, event = "password_reset_failed", ip = %show_ip(ip));
            return Err(AuthError::InvalidLink);
        };
        password::check_policy(new, &[user.username.as_str()])?;
        let phc = self.hasher.hash(new).await?;
        if tickets
            .redeem_ticket(&hash, TicketKind::ResetPassword, self.clock.now())
            .await?
            .is_none()
        {
            // Used by a concurrent request meanwhile.
            return Err(AuthError::InvalidLink);
        }
        self.users.set_password_hash(user.id, &phc).await?;
        self.end_password_tickets(user.id).await?;
        let ended = self.sessions.delete_for_user(user.id, None).await?;
        self.revoke_token_families(user.id).await?;
        metrics::counter!("keyward_sessions_revoked_total", "reason" => "password_reset")
            .increment(ended);
        tracing::info!(target: AUDIT, event = "password_reset", user_id = %user.id, sessions_ended = ended, ip = %show_ip(ip));
        Ok(UserRecord {
            password_hash: phc,
            ..user
        })
    }

    /// Links are refused outright while the address is over its limit of failed ones.
    fn admit_link(&self, ip: Option<IpAddr>) -> AuthResult<()> {
        Ok(self.throttle.token_request(ip)?)
    }

    /// A password change or reset (or a lock) ends the user's reset links and the second
    /// steps of sign-ins begun with the old password.
    pub(crate) async fn end_password_tickets(&self, user: UserId) -> StoreResult<()> {
        if let Some(m) = &self.mail {
            for kind in [TicketKind::ResetPassword, TicketKind::MfaSignIn] {
                m.tickets.end_tickets(user, kind).await?;
            }
        }
        Ok(())
    }

    /// Remove ended tickets.
    pub async fn purge_tickets(&self) -> StoreResult<u64> {
        match &self.mail {
            Some(m) => m.tickets.purge_tickets(self.clock.now()).await,
            None => Ok(0),
        }
    }
}

/// Issue a ticket of `kind` for `user` and post its letter to `to`.
async fn send(
    tickets: &DynTicketStore,
    post: &DynPostOffice,
    kind: TicketKind,
    user: &UserRecord,
    to: &str,
    now: OffsetDateTime,
) -> StoreResult<()> {
    let token = SessionToken::generate()
        .map_err(|e| StoreError::Unavailable(format!("random source failed: {e}").into()))?;
    let expires_at = now + kind.valid_for();
    tickets
        .issue_ticket(&Ticket {
            hash: token.hash(),
            kind,
            user_id: user.id,
            email: (kind == TicketKind::VerifyEmail).then(|| to.to_owned()),
            created_at: now,
            expires_at,
        })
        .await?;
    post.post(Letter {
        kind,
        user_id: user.id,
        username: user.username.clone(),
        to: to.to_owned(),
        token,
        expires_at,
    })
    .await
}

/// The part of a reset request that runs after the answer.
async fn reset_mail(
    users: &DynUserStore,
    tickets: &DynTicketStore,
    post: &DynPostOffice,
    who: ResetFor,
    now: OffsetDateTime,
    ip: Option<IpAddr>,
) -> StoreResult<()> {
    let user = match &who {
        ResetFor::Username(name) => match Username::parse(name) {
            Ok(n) => users.user_by_name(n.as_str()).await?,
            Err(_) => None,
        },
        ResetFor::Email(email) => match Email::parse(email) {
            Ok(e) => users.user_by_email(e.as_str()).await?,
            Err(_) => None,
        },
    };
    let Some(user) = user.filter(|u| !u.locked) else {
        tracing::info!(target: AUDIT, event = "password_reset_requested", known = false, ip = %show_ip(ip));
        return Ok(());
    };
    let Some(email) = user.email.clone().filter(|_| user.email_verified) else {
        tracing::info!(target: AUDIT, event = "password_reset_requested", user_id = %user.id, sent = false, reason = "no verified email", ip = %show_ip(ip));
        return Ok(());
    };
    send(tickets, post, TicketKind::ResetPassword, &user, &email, now).await?;
    tracing::info!(target: AUDIT, event = "password_reset_requested", user_id = %user.id, sent = true, ip = %show_ip(ip));
    Ok(())
}
