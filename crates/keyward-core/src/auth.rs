//! The auth service: registration, login, session validation, logout, revocation and password
//! change, over any [`UserStore`](crate::UserStore) and [`SessionStore`](crate::SessionStore). No HTTP here.

use crate::clock::SharedClock;
use crate::device::{DeviceCookie, DeviceKey};
use crate::ids::{SessionId, UserId, Username, UsernameError, USERNAME_MAX};
use crate::mail::{DynPostOffice, Email, EmailError};
use crate::mfa::{DynMfaStore, Mfa, Sealer};
use crate::password::{self, HashError, PasswordHasher, PolicyError, PASSWORD_MAX};
use crate::recovery::{DynTicketStore, Mail};
use crate::secret::{Password, SessionToken, TokenHash};
use crate::store::{
    Amr, DynSessionStore, DynTokenStore, DynUserStore, SessionRecord, StoreError, UserRecord,
};
use crate::throttle::{DynFailureLog, MemoryFailureLog, Refused, Throttle, ThrottleConfig};
use std::net::IpAddr;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// Audit events go to this tracing target.
pub const AUDIT: &str = "keyward::audit";

/// Longest user agent kept with a session.
const USER_AGENT_MAX: usize = 256;

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// A session unused for this long is over.
    pub idle_timeout: Duration,
    /// A session older than this is over, however much it is used.
    pub absolute_timeout: Duration,
    /// Whether `register` is open to anyone.
    pub open_registration: bool,
    /// Login throttling.
    pub throttle: ThrottleConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::minutes(30),
            absolute_timeout: Duration::days(7),
            open_registration: true,
            throttle: ThrottleConfig::default(),
        }
    }
}

impl AuthConfig {
    /// `last_seen_at` is written at most this often per session, so that validation is a
    /// single read almost always: a quarter of the idle timeout, at most a minute. The idle
    /// timeout is therefore enforced to within this interval.
    pub fn touch_interval(&self) -> Duration {
        let quarter: Duration = self.idle_timeout / 4;
        quarter.min(Duration::minutes(1))
    }
}

/// What the service can fail with. Each variant maps to one HTTP answer at the edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Unknown user, wrong password or locked account: deliberately one error.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Too many failures for the account or the client address.
    #[error("too many failed attempts; retry later")]
    Throttled {
        /// How long until a new attempt may succeed.
        retry_after: Duration,
    },
    /// A field is longer than anything that could be valid.
    #[error("{0} is too long")]
    TooLong(&'static str),
    /// Registration: the username is taken.
    #[error("username is already taken")]
    UsernameTaken,
    /// Registration: the username is not valid.
    #[error(transparent)]
    InvalidUsername(#[from] UsernameError),
    /// The new password is weaker than the policy.
    #[error(transparent)]
    WeakPassword(#[from] PolicyError),
    /// Registration is closed.
    #[error("registration is closed")]
    RegistrationClosed,
    /// Password change: the current password is wrong.
    #[error("current password is incorrect")]
    WrongCurrentPassword,
    /// Admin: no such user.
    #[error("no such user")]
    NoSuchUser,
    /// The session was revoked while the request ran.
    #[error("session is no longer valid")]
    SessionGone,
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// The OS random source failed.
    #[error("random source failed")]
    Random(#[source] getrandom::Error),
    /// Mail cannot be sent: no SMTP server is configured.
    #[error("email is not configured on this server")]
    MailNotConfigured,
    /// A mailed link's token is unknown, expired or already used.
    #[error("the link is invalid, has expired or was already used")]
    InvalidLink,
    /// The address is already another account's verified address.
    #[error("this email address belongs to another account")]
    EmailTaken,
    /// Not an email address.
    #[error(transparent)]
    InvalidEmail(#[from] EmailError),
    /// The right password of an account with TOTP: the sign-in goes on at
    /// `POST /v1/sessions/mfa` with this token and a code. No session was made.
    #[error("a second factor is required")]
    MfaRequired(SessionToken),
    /// The second step's token is unknown, used or expired.
    #[error("the mfa_token is invalid or has expired; sign in again")]
    InvalidMfaToken,
    /// The second step's code is wrong, or was already used.
    #[error("invalid or already used code")]
    WrongSignInCode,
    /// Step-up or enrolment: the code is wrong, or was already used.
    #[error("the code is wrong or was already used")]
    WrongCode,
    /// Step-up of an account with TOTP: a current code is needed too.
    #[error("this account has a second factor: give a current code in \"code\"")]
    CodeRequired,
    /// Enrolment while TOTP is on.
    #[error("TOTP is already on; turn it off first")]
    TotpAlreadyOn,
    /// Confirmation without an enrolment started.
    #[error("no TOTP enrolment is pending; start one with POST /v1/users/me/totp")]
    TotpNotPending,
    /// Turning off what is off.
    #[error("TOTP is not on")]
    TotpNotOn,
    /// No second-factor store (an embedder that gave none), or a sealed secret cannot be
    /// opened (a wrong key-encryption key).
    #[error("the second factor is not available on this server")]
    MfaUnavailable,
}

/// Result of service calls.
pub type AuthResult<T> = Result<T, AuthError>;

impl From<Refused> for AuthError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Throttled(retry_after) => Self::Throttled { retry_after },
            Refused::Store(e) => Self::Store(e),
        }
    }
}

/// What [`AuthService::ready`] found.
#[derive(Debug)]
pub enum Readiness {
    /// Both stores answer.
    Ready,
    /// Sessions are validated from memory while the store cannot be reached.
    Degraded,
    /// A store does not answer.
    Unavailable(StoreError),
}

/// Who is calling from where, and what they presented.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Client address (after trusted-proxy resolution).
    pub ip: Option<IpAddr>,
    /// User-Agent header.
    pub user_agent: Option<String>,
    /// The device cookie presented, if any: a sign-in that carries a valid one for the account
    /// is throttled by that device's own failures.
    pub device: Option<DeviceCookie>,
    /// The hash of the session token presented, if any: a sign-in ends that session.
    pub session: Option<TokenHash>,
}

impl ClientInfo {
    /// A client known only by its address.
    pub fn at(ip: Option<IpAddr>) -> Self {
        Self {
            ip,
            ..Self::default()
        }
    }
}

/// A fresh login: the token to hand to the client once, and the stored record.
#[derive(Debug)]
pub struct NewSession {
    /// The secret for the cookie.
    pub token: SessionToken,
    /// The session as stored.
    pub session: SessionRecord,
    /// A new device cookie for the client to keep (sign-ins only).
    pub device: Option<DeviceCookie>,
}

/// The auth service. Cheap to share behind an `Arc`.
pub struct AuthService {
    pub(crate) users: DynUserStore,
    pub(crate) sessions: DynSessionStore,
    tokens: Option<DynTokenStore>,
    pub(crate) hasher: PasswordHasher,
    pub(crate) throttle: Throttle,
    /// Signs device cookies; `None` only when the OS random source failed at start.
    pub(crate) device_key: Option<DeviceKey>,
    pub(crate) clock: SharedClock,
    config: AuthConfig,
    /// Mailed links: absent for an embedder who gave no ticket store.
    pub(crate) mail: Option<Mail>,
    /// Second factors: absent for an embedder who gave no store.
    pub(crate) mfa: Option<Mfa>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn failure(reason: &'static str) {
    metrics::counter!("keyward_logins_total", "result" => reason).increment(1);
}

impl AuthService {
    /// Assemble the service.
    pub fn new(
        users: DynUserStore,
        sessions: DynSessionStore,
        hasher: PasswordHasher,
        clock: SharedClock,
        config: AuthConfig,
    ) -> Self {
        let throttle = Throttle::new(
            clock.clone(),
            config.throttle,
            Arc::new(MemoryFailureLog::default()),
        );
        Self {
            users,
            sessions,
            tokens: None,
            hasher,
            throttle,
            device_key: DeviceKey::random().ok(),
            clock,
            config,
            mail: None,
            mfa: None,
        }
    }

    /// Keep second factors in `store`, TOTP secrets sealed by `sealer`, and name `issuer` in
    /// authenticator apps.
    pub fn with_mfa(mut self, store: DynMfaStore, sealer: Arc<dyn Sealer>, issuer: &str) -> Self {
        // An otpauth label may not hold ':' (an IPv6 host, `[::1]`).
        let issuer: String = issuer
            .chars()
            .filter(|c| !matches!(c, '[' | ']'))
            .map(|c| if c == ':' { '-' } else { c })
            .collect();
        self.mfa = Some(Mfa {
            store,
            sealer,
            issuer,
        });
        self
    }

    /// Keep mailed links' tickets in `tickets`, and post letters to `post` (absent without an
    /// SMTP server: the email flows then answer [`AuthError::MailNotConfigured`]).
    pub fn with_mail(mut self, tickets: DynTicketStore, post: Option<DynPostOffice>) -> Self {
        self.mail = Some(Mail { tickets, post });
        self
    }

    /// Count failures in `log` (shared by a fleet) instead of this process's memory.
    pub fn with_failure_log(mut self, log: DynFailureLog) -> Self {
        self.throttle = Throttle::new(self.clock.clone(), self.config.throttle, log);
        self
    }

    /// Sign device cookies with `key` (the same on every node, and across restarts) instead of
    /// a key of this process's own.
    pub fn with_device_key(mut self, key: DeviceKey) -> Self {
        self.device_key = Some(key);
        self
    }

    /// The throttles (the token side counts its failures here too).
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Also revoke the user's refresh-token families (and so their access tokens) wherever
    /// their sessions are revoked: on password change, lock and delete.
    pub fn with_token_store(mut self, tokens: DynTokenStore) -> Self {
        self.tokens = Some(tokens);
        self
    }

    pub(crate) async fn revoke_token_families(&self, user: UserId) -> Result<(), StoreError> {
        if let Some(t) = &self.tokens {
            let n = t.revoke_user_families(user, self.clock.now()).await?;
            if n > 0 {
                tracing::info!(target: AUDIT, event = "token_families_revoked", user_id = %user, count = n);
            }
        }
        Ok(())
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The user store.
    pub fn users(&self) -> &DynUserStore {
        &self.users
    }

    /// The session store.
    pub fn sessions(&self) -> &DynSessionStore {
        &self.sessions
    }

    /// Register a user through the public API: refused when registration is closed, and
    /// throttled per client address. A taken name costs the same work as a free one (the
    /// password is hashed either way), so the answer's timing tells nothing.
    pub async fn register(
        &self,
        username: &str,
        password: &Password,
        ip: Option<IpAddr>,
    ) -> AuthResult<UserRecord> {
        self.register_with_email(username, password, None, ip).await
    }

    /// [`AuthService::register`] with an email address, which gets a verification mail when
    /// mail is configured. The address counts as verified only once that mail's link is used.
    pub async fn register_with_email(
        &self,
        username: &str,
        password: &Password,
        email: Option<&str>,
        ip: Option<IpAddr>,
    ) -> AuthResult<UserRecord> {
        if !self.config.open_registration {
            return Err(AuthError::RegistrationClosed);
        }
        let name = Username::parse(username)?;
        let email = email.map(Email::parse).transpose()?;
        password::check_policy(password, &[name.as_str()])?;
        match self.throttle.register(ip).await {
            Ok(()) => {}
            Err(Refused::Throttled(retry_after)) => {
                tracing::warn!(target: AUDIT, event = "registration_throttled", username, ip = %show_ip(ip));
                return Err(AuthError::Throttled { retry_after });
            }
            Err(Refused::Store(e)) => return Err(e.into()),
        }
        let user = self.insert_user(name, password, email.as_ref(), ip).await?;
        if let Some(email) = &email {
            match self.send_verification(&user, email).await {
                Ok(()) => {}
                Err(AuthError::MailNotConfigured) => {
                    tracing::info!(user_id = %user.id, "no verification mail sent: email is not configured")
                }
                Err(e) => {
                    tracing::warn!(user_id = %user.id, error = %e, "the verification mail could not be queued")
                }
            }
        }
        Ok(user)
    }

    /// Create a user (the admin path: works with registration closed, never throttled).
    pub async fn create_user(&self, username: &str, password: &Password) -> AuthResult<UserRecord> {
        let name = Username::parse(username)?;
        password::check_policy(password, &[name.as_str()])?;
        self.insert_user(name, password, None, None).await
    }

    async fn insert_user(
        &self,
        name: Username,
        password: &Password,
        email: Option<&Email>,
        ip: Option<IpAddr>,
    ) -> AuthResult<UserRecord> {
        let user = UserRecord {
            id: UserId::new(),
            username: name.as_str().to_owned(),
            password_hash: self.hasher.hash(password).await?,
            created_at: self.clock.now(),
            locked: false,
            email: email.map(|e| e.as_str().to_owned()),
            email_verified: false,
            totp: false,
        };
        match self.users.create_user(&user).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(AuthError::UsernameTaken),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(target: AUDIT, event = "user_created", user_id = %user.id, username = %user.username, ip = %show_ip(ip));
        Ok(user)
    }

    /// Check credentials and open a new session with a brand-new token.
    ///
    /// Unknown user, wrong password and locked account fail alike, after the same Argon2 work.
    ///
    /// A session the client presented ends (a sign-in replaces it, never keeps it alive beside
    /// the new one), and the client gets a new device cookie for the account.
    pub async fn login(
        &self,
        username: &str,
        password: &Password,
        client: &ClientInfo,
    ) -> AuthResult<NewSession> {
        let user = self.check_credentials(username, password, client).await?;
        if user.totp {
            let token = self.mfa_ticket(&user).await?;
            tracing::info!(target: AUDIT, event = "mfa_required", user_id = %user.id, ip = %show_ip(client.ip));
            return Err(AuthError::MfaRequired(token));
        }
        self.signed_in(&user, client, Amr::PWD).await
    }

    /// Every factor passed: a new session, the presented one ended, a new device cookie.
    pub(crate) async fn signed_in(
        &self,
        user: &UserRecord,
        client: &ClientInfo,
        amr: Amr,
    ) -> AuthResult<NewSession> {
        let mut new = self.open_session(user, client, amr).await?;
        if let Some(presented) = client.session.filter(|h| *h != new.session.token_hash) {
            if let Some(old) = self.sessions.delete(&presented).await? {
                metrics::counter!("keyward_sessions_revoked_total", "reason" => "replaced")
                    .increment(1);
                tracing::info!(target: AUDIT, event = "session_replaced", user_id = %old.user_id, session_id = %old.id, ip = %show_ip(client.ip));
            }
        }
        if let Some(key) = &self.device_key {
            new.device = key.issue(&user.username, self.clock.now()).ok();
        }
        Ok(new)
    }

    /// Verify a username and password, with throttling, equal failures, and the upgrade of a
    /// hash stored with weaker parameters. Returns the user as it now is.
    pub async fn check_credentials(
        &self,
        username: &str,
        password: &Password,
        client: &ClientInfo,
    ) -> AuthResult<UserRecord> {
        let ip = client.ip;
        if username.chars().count() > USERNAME_MAX {
            return Err(AuthError::TooLong("username"));
        }
        if password.expose().chars().count() > PASSWORD_MAX {
            return Err(AuthError::TooLong("password"));
        }
        let device = match (&self.device_key, &client.device) {
            (Some(key), Some(cookie)) => key.verify(username, cookie, self.clock.now()),
            _ => None,
        };
        let attempt = match self.throttle.begin(username, ip, device.as_ref()).await {
            Ok(a) => a,
            Err(Refused::Throttled(retry_after)) => {
                failure("throttled");
                tracing::warn!(target: AUDIT, event = "login_throttled", username, ip = %show_ip(ip));
                return Err(AuthError::Throttled { retry_after });
            }
            Err(Refused::Store(e)) => return Err(e.into()),
        };
        let user = match Username::parse(username) {
            Ok(name) => self.users.user_by_name(name.as_str()).await?,
            Err(_) => None,
        };
        let verified = self
            .hasher
            .verify(password, user.as_ref().map(|u| u.password_hash.as_str()))
            .await?;
        let by_device = attempt.by_device();
        let Some(mut user) = user.filter(|u| verified.ok && !u.locked) else {
            attempt.failed().await;
            failure("failed");
            tracing::info!(target: AUDIT, event = "login_failed", username, ip = %show_ip(ip), known_device = by_device);
            return Err(AuthError::InvalidCredentials);
        };
        if verified.needs_rehash {
            match self.hasher.hash(password).await {
                Ok(phc) => match self.users.set_password_hash(user.id, &phc).await {
                    Ok(()) => {
                        tracing::info!(target: AUDIT, event = "password_hash_upgraded", user_id = %user.id, ip = %show_ip(ip));
                        user.password_hash = phc;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not store the upgraded password hash")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "could not upgrade the password hash"),
            }
        }
        if user.totp {
            // The first factor only: failures of the second stay counted.
            attempt.released().await;
        } else {
            attempt.succeeded().await;
        }
        Ok(user)
    }

    async fn open_session(
        &self,
        user: &UserRecord,
        client: &ClientInfo,
        amr: Amr,
    ) -> AuthResult<NewSession> {
        let token = SessionToken::generate_in(user.id.shard()).map_err(AuthError::Random)?;
        let now = self.clock.now();
        let session = SessionRecord {
            id: SessionId::new_in(user.id.shard()),
            token_hash: token.hash(),
            user_id: user.id,
            username: user.username.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.config.absolute_timeout,
            ip: client.ip.map(|ip| ip.to_string()),
            user_agent: client.user_agent.as_deref().map(truncate_user_agent),
            amr,
        };
        self.sessions.create(&session).await?;
        // A password change, lock or delete that ran while this login was being checked must
        // not leave a session behind: look again now that the session exists, and undo it.
        let current = self.users.user_by_id(user.id).await?;
        if !current.is_some_and(|c| !c.locked && c.password_hash == user.password_hash) {
            self.sessions.delete(&session.token_hash).await?;
            failure("failed");
            return Err(AuthError::InvalidCredentials);
        }
        metrics::counter!("keyward_logins_total", "result" => "ok").increment(1);
        metrics::counter!("keyward_sessions_created_total").increment(1);
        tracing::info!(target: AUDIT, event = "login_ok", user_id = %user.id, session_id = %session.id, ip = %show_ip(client.ip));
        Ok(NewSession {
            token,
            session,
            device: None,
        })
    }

    /// The live session for a presented token, if any: one store read, plus a write at most
    /// once per touch interval to keep the idle timeout moving.
    pub async fn authenticate(
        &self,
        token: &SessionToken,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let hash = token.hash();
        let Some(mut session) = self.sessions.get(&hash).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        if !session.is_live(now, self.config.idle_timeout) {
            // Cleaning up is the purge's job too: an expired session is refused whether or not
            // it can be deleted now.
            match self.sessions.delete(&hash).await {
                Ok(_) => {
                    metrics::counter!("keyward_sessions_revoked_total", "reason" => "expired")
                        .increment(1);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "an expired session could not be deleted yet")
                }
            }
            return Ok(None);
        }
        if now - session.last_seen_at >= self.config.touch_interval() {
            self.sessions.touch(&hash, now).await?;
            session.last_seen_at = now;
        }
        Ok(Some(session))
    }

    /// End the session behind this token hash (logout).
    pub async fn logout(&self, token_hash: &TokenHash, ip: Option<IpAddr>) -> AuthResult<()> {
        if let Some(s) = self.sessions.delete(token_hash).await? {
            metrics::counter!("keyward_sessions_revoked_total", "reason" => "logout").increment(1);
            tracing::info!(target: AUDIT, event = "logout", user_id = %s.user_id, session_id = %s.id, ip = %show_ip(ip));
        }
        Ok(())
    }

    /// The live sessions of a user, newest first.
    pub async fn list_sessions(&self, user: UserId) -> AuthResult<Vec<SessionRecord>> {
        let now = self.clock.now();
        let mut list: Vec<SessionRecord> = self
            .sessions
            .list_for_user(user)
            .await?
            .into_iter()
            .filter(|s| s.is_live(now, self.config.idle_timeout))
            .collect();
        list.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(list)
    }

    /// Revoke one session by public id: only the owner's when `owner` is given.
    pub async fn revoke_session(
        &self,
        id: SessionId,
        owner: Option<UserId>,
        ip: Option<IpAddr>,
    ) -> AuthResult<bool> {
        let Some(s) = self.sessions.delete_by_id(id, owner).await? else {
            // The admin path also takes a token family's id (the `sid` of its tokens).
            if let (None, Some(t)) = (owner, &self.tokens) {
                let revoked = t.revoke_family(id, self.clock.now()).await?;
                if revoked {
                    tracing::info!(target: AUDIT, event = "token_family_revoked", sid = %id, ip = %show_ip(ip));
                }
                return Ok(revoked);
            }
            return Ok(false);
        };
        metrics::counter!("keyward_sessions_revoked_total", "reason" => "revoked").increment(1);
        tracing::info!(target: AUDIT, event = "session_revoked", user_id = %s.user_id, session_id = %s.id, ip = %show_ip(ip));
        Ok(true)
    }

    /// Revoke every session of a user but `keep`.
    pub async fn revoke_user_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        ip: Option<IpAddr>,
    ) -> AuthResult<u64> {
        let n = self.sessions.delete_for_user(user, keep).await?;
        // "Everywhere else" includes the apps signed in with tokens.
        self.revoke_token_families(user).await?;
        metrics::counter!("keyward_sessions_revoked_total", "reason" => "revoked").increment(n);
        tracing::info!(target: AUDIT, event = "sessions_revoked", user_id = %user, count = n, kept = ?keep, ip = %show_ip(ip));
        Ok(n)
    }

    /// Change a user's password: verify the current one, store the new hash, and revoke every
    /// session and refresh-token family of the user except `keep`, the session the change
    /// was made from, which gets a new token and id. A change made with a bearer token keeps
    /// nothing: the caller signs in again with the new password.
    pub async fn change_password(
        &self,
        user_id: UserId,
        keep: Option<&SessionRecord>,
        current: &Password,
        new: &Password,
        code: Option<&str>,
        client: &ClientInfo,
    ) -> AuthResult<Option<NewSession>> {
        password::check_length(new)?;
        let user = self
            .users
            .user_by_id(user_id)
            .await?
            .ok_or(AuthError::SessionGone)?;
        password::check_policy(new, &[user.username.as_str()])?;
        self.step_up_user(&user, current, code, client).await?;
        let phc = self.hasher.hash(new).await?;
        self.users.set_password_hash(user.id, &phc).await?;
        self.end_password_tickets(user.id).await?;
        self.sessions
            .delete_for_user(user.id, keep.map(|s| s.id))
            .await?;
        self.revoke_token_families(user.id).await?;
        let Some(session) = keep else {
            tracing::info!(target: AUDIT, event = "password_changed", user_id = %user.id, ip = %show_ip(client.ip));
            return Ok(None);
        };
        let token = SessionToken::generate_in(user.id.shard()).map_err(AuthError::Random)?;
        let now = self.clock.now();
        let renewed = SessionRecord {
            id: SessionId::new_in(user.id.shard()),
            token_hash: token.hash(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.config.absolute_timeout,
            ..session.clone()
        };
        if !self.sessions.replace(&session.token_hash, &renewed).await? {
            return Err(AuthError::SessionGone);
        }
        tracing::info!(target: AUDIT, event = "password_changed", user_id = %user.id, session_id = %renewed.id, ip = %show_ip(client.ip));
        Ok(Some(NewSession {
            token,
            session: renewed,
            device: None,
        }))
    }

    /// Step-up for a change to the account: the current password again, throttled with the
    /// account's sign-ins. Returns the user as stored.
    pub async fn step_up(
        &self,
        user_id: UserId,
        current: &Password,
        code: Option<&str>,
        client: &ClientInfo,
    ) -> AuthResult<UserRecord> {
        let user = self
            .users
            .user_by_id(user_id)
            .await?
            .ok_or(AuthError::SessionGone)?;
        self.step_up_user(&user, current, code, client).await?;
        Ok(user)
    }

    async fn step_up_user(
        &self,
        user: &UserRecord,
        current: &Password,
        code: Option<&str>,
        client: &ClientInfo,
    ) -> AuthResult<()> {
        if current.expose().chars().count() > PASSWORD_MAX {
            return Err(AuthError::TooLong("current_password"));
        }
        // Judged like a sign-in: a known device by its own failures.
        let attempt = self.code_attempt(user, client).await?;
        let verified = self
            .hasher
            .verify(current, Some(&user.password_hash))
            .await?;
        if !verified.ok {
            attempt.failed().await;
            tracing::info!(target: AUDIT, event = "step_up_failed", user_id = %user.id, ip = %show_ip(client.ip));
            return Err(AuthError::WrongCurrentPassword);
        }
        if user.totp {
            let Some(code) = code.filter(|c| !c.trim().is_empty()) else {
                attempt.released().await;
                return Err(AuthError::CodeRequired);
            };
            if self.check_code(user, code).await?.is_none() {
                attempt.failed().await;
                tracing::info!(target: AUDIT, event = "step_up_failed", user_id = %user.id, factor = "code", ip = %show_ip(client.ip));
                return Err(AuthError::WrongCode);
            }
        }
        attempt.succeeded().await;
        Ok(())
    }

    /// Find a user by name or fail with [`AuthError::NoSuchUser`].
    pub async fn user_named(&self, username: &str) -> AuthResult<UserRecord> {
        self.users
            .user_by_name(username)
            .await?
            .ok_or(AuthError::NoSuchUser)
    }

    /// Lock or unlock a user. Locking revokes every session of the user.
    pub async fn set_locked(&self, username: &str, locked: bool) -> AuthResult<UserRecord> {
        let user = self.user_named(username).await?;
        self.users.set_locked(user.id, locked).await?;
        if locked {
            self.sessions.delete_for_user(user.id, None).await?;
            self.revoke_token_families(user.id).await?;
            self.end_password_tickets(user.id).await?;
        }
        tracing::info!(target: AUDIT, event = if locked { "user_locked" } else { "user_unlocked" }, user_id = %user.id, ip = "-");
        Ok(UserRecord { locked, ..user })
    }

    /// Delete a user and every session of theirs.
    pub async fn delete_user(&self, username: &str) -> AuthResult<UserRecord> {
        let user = self.user_named(username).await?;
        self.sessions.delete_for_user(user.id, None).await?;
        self.revoke_token_families(user.id).await?;
        self.users.delete_user(user.id).await?;
        // A login racing the delete re-checks the user after creating its session; clear again
        // in case one slipped in between the two calls above.
        self.sessions.delete_for_user(user.id, None).await?;
        tracing::info!(target: AUDIT, event = "user_deleted", user_id = %user.id, ip = "-");
        Ok(user)
    }

    /// Remove expired sessions from the store.
    pub async fn purge_expired(&self) -> AuthResult<u64> {
        let now = self.clock.now();
        Ok(self
            .sessions
            .purge_expired(now, now - self.config.idle_timeout)
            .await?)
    }

    /// Whether both stores answer: ready, degraded (the session store answers from what it
    /// holds while the store behind it cannot be reached), or not.
    pub async fn ready(&self) -> Readiness {
        if self.sessions.degraded() {
            return Readiness::Degraded;
        }
        match async {
            self.users.ping().await?;
            self.sessions.ping().await
        }
        .await
        {
            Ok(()) => Readiness::Ready,
            Err(e) => Readiness::Unavailable(e),
        }
    }

    /// When a session stops being valid.
    pub fn valid_until(&self, session: &SessionRecord) -> OffsetDateTime {
        session.valid_until(self.config.idle_timeout)
    }
}

fn truncate_user_agent(ua: &str) -> String {
    ua.chars().take(USER_AGENT_MAX).collect()
}

/// A client address for an audit event: `-` when there is none (the admin CLI).
pub fn show_ip(ip: Option<IpAddr>) -> String {
    ip.map_or_else(|| "-".to_owned(), |i| i.to_string())
}
