//! The second factor: TOTP (RFC 6238) with recovery codes, the two-step sign-in, and the
//! current code that step-up asks for once TOTP is on.
//!
//! The TOTP secret is kept sealed (AES-GCM under the key-encryption key, through a
//! [`Sealer`]): unlike a token it must be read back to check codes. The step of the last code
//! accepted is stored and moved forward by compare-and-set, so a code is accepted once on
//! every node of a fleet. Recovery codes are stored only as hashes and used once. Wrong codes
//! count against the account's sign-in throttle, like wrong passwords.

use crate::auth::{show_ip, AuthError, AuthResult, AuthService, ClientInfo, NewSession, AUDIT};
use crate::ids::UserId;
use crate::mail::TicketKind;
use crate::recovery::Ticket;
use crate::secret::{SessionToken, TokenHash};
use crate::store::{StoreResult, UserRecord};
use crate::totp::{CodeRefused, TotpSecret};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;

/// Seals and opens secrets that must be read back (TOTP secrets), bound to a context.
pub trait Sealer: Send + Sync + 'static {
    /// Encrypt and authenticate `plain` for `context`.
    fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, SealError>;
    /// Open what [`Sealer::seal`] made for the same context.
    fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError>;
}

/// Sealing or opening failed (a wrong key, or data that was not sealed for this context).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a sealed secret could not be sealed or opened")]
pub struct SealError;

/// A user's second factor as stored.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct MfaRecord {
    /// The sealed TOTP secret, when TOTP is on.
    pub totp: Option<Vec<u8>>,
    /// A sealed secret being enrolled (shown, not yet confirmed).
    pub pending: Option<Vec<u8>>,
    /// The step of the last code accepted.
    pub last_step: Option<u64>,
    /// Recovery codes not used yet.
    pub recovery_codes_left: u32,
}

impl fmt::Debug for MfaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MfaRecord")
            .field("totp", &self.totp.is_some())
            .field("pending", &self.pending.is_some())
            .field("last_step", &self.last_step)
            .field("recovery_codes_left", &self.recovery_codes_left)
            .finish()
    }
}

/// Where second factors live (the database).
#[async_trait]
pub trait MfaStore: Send + Sync + 'static {
    /// The user's second factor (all empty for an unknown user).
    async fn mfa(&self, user: UserId) -> StoreResult<MfaRecord>;
    /// Keep `sealed` as the secret being enrolled; false when there is no such user.
    async fn set_pending_totp(&self, user: UserId, sealed: &[u8]) -> StoreResult<bool>;
    /// Turn TOTP on with the pending secret, if it is still `pending`: its first code was for
    /// `step`, and `codes` replace the recovery codes. One step; false when the pending
    /// secret changed meanwhile.
    async fn enable_totp(
        &self,
        user: UserId,
        pending: &[u8],
        step: u64,
        codes: &[TokenHash],
    ) -> StoreResult<bool>;
    /// Turn TOTP off and drop the recovery codes; false when it was off.
    async fn disable_totp(&self, user: UserId) -> StoreResult<bool>;
    /// Record a code of `step` as used, if no code of that step or a later one was: the
    /// compare-and-set that refuses replays on every node.
    async fn use_totp_step(&self, user: UserId, step: u64) -> StoreResult<bool>;
    /// Use a recovery code once; false when it is unknown or used.
    async fn use_recovery_code(
        &self,
        user: UserId,
        code: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
}

/// Shared handle to a second-factor store.
pub type DynMfaStore = Arc<dyn MfaStore>;

/// The second-factor side of the service.
#[derive(Clone)]
pub(crate) struct Mfa {
    pub(crate) store: DynMfaStore,
    pub(crate) sealer: Arc<dyn Sealer>,
    /// The issuer shown in authenticator apps.
    pub(crate) issuer: String,
}

/// Recovery codes issued when TOTP is turned on.
pub const RECOVERY_CODES: usize = 10;
/// Characters of a recovery code (5 random bits each, from the OS CSPRNG): 100 bits.
const RECOVERY_CHARS: usize = 20;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A new recovery code, `xxxxx-xxxxx-xxxxx-xxxxx`.
fn recovery_code() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; RECOVERY_CHARS];
    getrandom::fill(&mut bytes)?;
    let mut out = String::with_capacity(RECOVERY_CHARS + 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        // 256 is a multiple of 32: every character is equally likely.
        out.push(char::from(
            *ALPHABET.get(usize::from(*b) % 32).unwrap_or(&b'a'),
        ));
    }
    Ok(out)
}

/// The hash a recovery code is stored and looked up by, after normalising what was typed
/// (case, dashes, spaces); `None` when it cannot be a recovery code.
pub fn recovery_hash(typed: &str) -> Option<TokenHash> {
    let norm: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if norm.len() != RECOVERY_CHARS || !norm.bytes().all(|b| ALPHABET.contains(&b)) {
        return None;
    }
    let digest = Sha256::new()
        .chain_update(b"keyward recovery code v1:")
        .chain_update(norm.as_bytes())
        .finalize();
    TokenHash::from_slice(&digest)
}

/// What enrolment shows once: the secret, in base32 and as an `otpauth://` URI (the QR code).
#[derive(Clone)]
pub struct Enrolment {
    /// The secret in base32, for typing into an authenticator.
    pub secret: String,
    /// The `otpauth://totp/…` URI that authenticator apps scan.
    pub otpauth_uri: String,
}

impl fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Enrolment(<redacted>)")
    }
}

fn context(user: UserId) -> String {
    format!("totp:{user}")
}

fn unix_seconds(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

impl AuthService {
    fn mfa_side(&self) -> AuthResult<&Mfa> {
        self.mfa.as_ref().ok_or(AuthError::MfaUnavailable)
    }

    /// The user's second factor: whether TOTP is on and how many recovery codes are left.
    pub async fn mfa_state(&self, user: UserId) -> AuthResult<MfaRecord> {
        Ok(self.mfa_side()?.store.mfa(user).await?)
    }

    /// Start TOTP enrolment (step-up: the current password): a new secret, pending until a
    /// code of it is confirmed. Refused while TOTP is on (turn it off first).
    pub async fn begin_totp(
        &self,
        user_id: UserId,
        current: &crate::Password,
        client: &ClientInfo,
    ) -> AuthResult<Enrolment> {
        let mfa = self.mfa_side()?;
        let user = self.step_up(user_id, current, None, client).await?;
        if user.totp {
            return Err(AuthError::TotpAlreadyOn);
        }
        let secret = TotpSecret::generate().map_err(|_| AuthError::MfaUnavailable)?;
        // Everything that can fail before anything is stored.
        let otpauth_uri = secret
            .otpauth_uri(&mfa.issuer, &user.username)
            .map_err(|_| AuthError::MfaUnavailable)?;
        let sealed = mfa
            .sealer
            .seal(&context(user.id), secret.expose())
            .map_err(|_| AuthError::MfaUnavailable)?;
        if !mfa.store.set_pending_totp(user.id, &sealed).await? {
            return Err(AuthError::SessionGone);
        }
        tracing::info!(target: AUDIT, event = "totp_enrolment_started", user_id = %user.id, ip = %show_ip(client.ip));
        Ok(Enrolment {
            secret: secret.base32(),
            otpauth_uri,
        })
    }

    /// Confirm enrolment with a code of the pending secret: TOTP is on, and the ten recovery
    /// codes are returned, once (only their hashes are kept).
    pub async fn confirm_totp(
        &self,
        user_id: UserId,
        code: &str,
        client: &ClientInfo,
    ) -> AuthResult<Vec<String>> {
        let mfa = self.mfa_side()?;
        let user = self
            .users
            .user_by_id(user_id)
            .await?
            .ok_or(AuthError::SessionGone)?;
        let record = mfa.store.mfa(user.id).await?;
        let Some(pending) = record.pending.filter(|_| record.totp.is_none()) else {
            return Err(if record.totp.is_some() {
                AuthError::TotpAlreadyOn
            } else {
                AuthError::TotpNotPending
            });
        };
        let attempt = self.code_attempt(&user, client).await?;
        let secret = self.open_secret(mfa, user.id, &pending)?;
        let step = match secret.verify(code, unix_seconds(self.clock.now()), None) {
            Ok(step) => step,
            Err(_) => {
                attempt.failed().await;
                tracing::info!(target: AUDIT, event = "totp_confirm_failed", user_id = %user.id, ip = %show_ip(client.ip));
                return Err(AuthError::WrongCode);
            }
        };
        attempt.released().await;
        let codes: Vec<String> = (0..RECOVERY_CODES)
            .map(|_| recovery_code())
            .collect::<Result<_, _>>()
            .map_err(AuthError::Random)?;
        let hashes: Vec<TokenHash> = codes.iter().filter_map(|c| recovery_hash(c)).collect();
        if !mfa
            .store
            .enable_totp(user.id, &pending, step, &hashes)
            .await?
        {
            return Err(AuthError::TotpNotPending);
        }
        tracing::info!(target: AUDIT, event = "totp_enabled", user_id = %user.id, ip = %show_ip(client.ip));
        Ok(codes)
    }

    /// Turn TOTP off (step-up: the current password and a current code or a recovery code).
    pub async fn disable_totp(
        &self,
        user_id: UserId,
        current: &crate::Password,
        code: Option<&str>,
        client: &ClientInfo,
    ) -> AuthResult<()> {
        let mfa = self.mfa_side()?;
        let user = self.step_up(user_id, current, code, client).await?;
        if !user.totp || !mfa.store.disable_totp(user.id).await? {
            return Err(AuthError::TotpNotOn);
        }
        tracing::info!(target: AUDIT, event = "totp_disabled", user_id = %user.id, ip = %show_ip(client.ip));
        Ok(())
    }

    /// Admin: turn TOTP off for a user who lost the device (`keyward users reset-mfa`).
    pub async fn reset_mfa(&self, username: &str) -> AuthResult<UserRecord> {
        let mfa = self.mfa_side()?;
        let user = self.user_named(username).await?;
        mfa.store.disable_totp(user.id).await?;
        tracing::info!(target: AUDIT, event = "mfa_reset", user_id = %user.id, ip = "-");
        Ok(user)
    }

    fn open_secret(&self, mfa: &Mfa, user: UserId, sealed: &[u8]) -> AuthResult<TotpSecret> {
        let plain = mfa
            .sealer
            .open(&context(user), sealed)
            .map_err(|_| AuthError::MfaUnavailable)?;
        TotpSecret::from_bytes(plain).map_err(|_| AuthError::MfaUnavailable)
    }

    /// An attempt at a code, throttled with the account's sign-ins.
    pub(crate) async fn code_attempt(
        &self,
        user: &UserRecord,
        client: &ClientInfo,
    ) -> AuthResult<crate::throttle::Attempt> {
        let device = match (&self.device_key, &client.device) {
            (Some(key), Some(cookie)) => key.verify(&user.username, cookie, self.clock.now()),
            _ => None,
        };
        Ok(self
            .throttle
            .begin(&user.username, client.ip, device.as_ref())
            .await?)
    }

    /// Check a second-factor code of a user with TOTP on: a TOTP code of the current step or a
    /// neighbour, later than the last one used (moved forward by compare-and-set), or an
    /// unused recovery code (used up). Whether it was accepted, and by which factor.
    pub(crate) async fn check_code(
        &self,
        user: &UserRecord,
        code: &str,
    ) -> AuthResult<Option<&'static str>> {
        let mfa = self.mfa_side()?;
        if let Some(hash) = recovery_hash(code) {
            let ok = mfa
                .store
                .use_recovery_code(user.id, &hash, self.clock.now())
                .await?;
            if ok {
                tracing::info!(target: AUDIT, event = "recovery_code_used", user_id = %user.id);
            }
            return Ok(ok.then_some("recovery"));
        }
        let record = mfa.store.mfa(user.id).await?;
        let Some(sealed) = record.totp else {
            return Ok(None);
        };
        let secret = self.open_secret(mfa, user.id, &sealed)?;
        match secret.verify(code, unix_seconds(self.clock.now()), record.last_step) {
            Ok(step) => Ok(mfa
                .store
                .use_totp_step(user.id, step)
                .await?
                .then_some("otp")),
            Err(CodeRefused::Replayed) => {
                tracing::info!(target: AUDIT, event = "totp_code_replayed", user_id = %user.id);
                Ok(None)
            }
            Err(_) => Ok(None),
        }
    }

    /// The first step of a TOTP account's sign-in passed: a single-use token for the second
    /// step, valid 5 minutes, which nothing else accepts.
    pub(crate) async fn mfa_ticket(&self, user: &UserRecord) -> AuthResult<SessionToken> {
        let tickets = self.tickets_store()?;
        let token = SessionToken::generate().map_err(AuthError::Random)?;
        let now = self.clock.now();
        tickets
            .issue_ticket(&Ticket {
                hash: token.hash(),
                kind: TicketKind::MfaSignIn,
                user_id: user.id,
                email: None,
                created_at: now,
                expires_at: now + TicketKind::MfaSignIn.valid_for(),
            })
            .await?;
        Ok(token)
    }

    /// The second step of a TOTP account's sign-in: the token of the first step and a TOTP or
    /// recovery code. Opens the session as [`AuthService::login`] does. A wrong code counts
    /// against the account's throttle and leaves the token usable until it expires.
    pub async fn complete_mfa(
        &self,
        mfa_token: &str,
        code: &str,
        client: &ClientInfo,
    ) -> AuthResult<NewSession> {
        let tickets = self.tickets_store()?;
        let hash = SessionToken::parse(mfa_token).map(|t| t.hash());
        let now = self.clock.now();
        let found = match &hash {
            Some(h) => tickets.find_ticket(h, TicketKind::MfaSignIn, now).await?,
            None => None,
        };
        let user = match found {
            Some(t) => self.users.user_by_id(t.user_id).await?,
            None => None,
        };
        let (Some(hash), Some(user)) = (hash, user.filter(|u| !u.locked && u.totp)) else {
            self.throttle.token_failed(client.ip).await;
            return Err(AuthError::InvalidMfaToken);
        };
        if code.chars().count() > 64 {
            return Err(AuthError::TooLong("code"));
        }
        // Codes are judged by the account's failures alone: device cookies, which anyone who
        // once had the password may have collected, give no codes of their own.
        let attempt = self.throttle.begin(&user.username, client.ip, None).await?;
        let Some(factor) = self.check_code(&user, code).await? else {
            attempt.failed().await;
            tracing::info!(target: AUDIT, event = "mfa_failed", user_id = %user.id, ip = %show_ip(client.ip));
            return Err(AuthError::WrongSignInCode);
        };
        if tickets
            .redeem_ticket(&hash, TicketKind::MfaSignIn, self.clock.now())
            .await?
            .is_none()
        {
            attempt.released().await;
            return Err(AuthError::InvalidMfaToken);
        }
        attempt.succeeded().await;
        tracing::info!(target: AUDIT, event = "mfa_ok", user_id = %user.id, factor, ip = %show_ip(client.ip));
        self.signed_in(&user, client, crate::store::Amr::PWD_OTP)
            .await
    }
}
