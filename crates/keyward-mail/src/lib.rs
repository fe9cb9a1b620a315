//! keyward's mail: SMTP through lettre ([`SmtpUrl`], [`Mailer`]), the letters keyward writes
//! ([`letters`]), the [`PostOffice`] that renders them into the
//! durable outbox ([`Post`]), and the worker that empties it ([`Courier`]).
//!
//! A request that sends mail never waits for SMTP: the letter is rendered and stored, and the
//! courier on some node delivers it. A claim is a lease in the database, so two nodes never
//! deliver one mail twice; a failed delivery is retried with backoff, and a mail that keeps
//! failing, is refused for good, or whose link expires first is parked, visible in
//! `keyward mail list`, never retried in front of the others.
#![deny(missing_docs)]

pub mod letters;

use async_trait::async_trait;
use keyward_core::mail::{retry_after, MAX_ATTEMPTS};
use keyward_core::{DynOutbox, Letter, OutboundMail, PostOffice, SharedClock, StoreResult};
use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How a connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://`: plain TCP upgraded with STARTTLS, which is required (no fallback).
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// `smtp://…?tls=none`: plain text, for a relay on the same machine or network.
    None,
}

/// An `--smtp-url`: `smtp://user:pass@host:port` (STARTTLS required; `?tls=none` for a
/// plain local relay) or `smtps://user:pass@host:port` (implicit TLS); login and port optional. The password is
/// never shown by `Debug` or `Display`.
#[derive(Clone)]
pub struct SmtpUrl {
    /// How the connection is secured.
    pub security: Security,
    /// Server host.
    pub host: String,
    /// Server port (default 587 for STARTTLS, 465 for implicit TLS, 25 for plain).
    pub port: u16,
    user: Option<String>,
    password: Option<SecretString>,
}

/// Why an `--smtp-url` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmtpUrlError {
    /// Not a URL.
    #[error("not a URL: smtp://[user:pass@]host[:port] or smtps://…")]
    Url,
    /// A scheme other than smtp/smtps.
    #[error("the scheme must be smtp:// (STARTTLS) or smtps:// (implicit TLS)")]
    Scheme,
    /// No host.
    #[error("the URL names no host")]
    Host,
    /// An unknown or misplaced `tls=` value.
    #[error("tls= takes only none, and only with smtp:// (smtps:// is always TLS)")]
    Tls,
    /// A login without a password, or not UTF-8.
    #[error("a login is user:password@, percent-encoded UTF-8")]
    Login,
    /// A query parameter keyward does not know.
    #[error("unknown parameter {0:?}: the only one is tls=none")]
    Parameter(String),
}

impl FromStr for SmtpUrl {
    type Err = SmtpUrlError;
    fn from_str(s: &str) -> Result<Self, SmtpUrlError> {
        let url = url::Url::parse(s).map_err(|_| SmtpUrlError::Url)?;
        let mut security = match url.scheme() {
            "smtp" => Security::StartTls,
            "smtps" => Security::Implicit,
            _ => return Err(SmtpUrlError::Scheme),
        };
        for (k, v) in url.query_pairs() {
            match (k.as_ref(), v.as_ref(), security) {
                ("tls", "none", Security::StartTls) => security = Security::None,
                ("tls", "required" | "starttls", Security::StartTls) => {}
                ("tls", _, _) => return Err(SmtpUrlError::Tls),
                (other, _, _) => return Err(SmtpUrlError::Parameter(other.to_owned())),
            }
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(SmtpUrlError::Host)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(match security {
            Security::StartTls => 587,
            Security::Implicit => 465,
            Security::None => 25,
        });
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| SmtpUrlError::Login)
        };
        let user = (!url.username().is_empty())
            .then(|| decode(url.username()))
            .transpose()?;
        let password = url
            .password()
            .map(|p| decode(p).map(SecretString::from))
            .transpose()?;
        if user.is_some() != password.is_some() {
            return Err(SmtpUrlError::Login);
        }
        Ok(Self {
            security,
            host,
            port,
            user,
            password,
        })
    }
}

impl fmt::Display for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.security == Security::Implicit {
            "smtps"
        } else {
            "smtp"
        };
        write!(f, "{scheme}://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}:***@")?;
        }
        write!(f, "{}:{}", self.host, self.port)?;
        if self.security == Security::None {
            write!(f, "?tls=none")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmtpUrl({self})")
    }
}

/// What can go wrong setting up SMTP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    /// The TLS settings could not be made.
    #[error("cannot set up TLS for {host}")]
    Tls {
        /// Server host.
        host: String,
        /// Why.
        #[source]
        source: lettre::transport::smtp::Error,
    },
}

/// The SMTP side: a transport to one server, and the sender address.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    url: SmtpUrl,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("url", &self.url)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

/// How long connecting may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one whole SMTP conversation may take (well within a claim's lease).
const CONVERSATION: Duration = Duration::from_secs(45);

impl Mailer {
    /// A mailer for `url`, sending as `from`. Connects to nothing yet.
    pub fn new(url: &SmtpUrl, from: Mailbox) -> Result<Self, MailError> {
        let tls = |host: &str| {
            TlsParameters::new(host.to_owned()).map_err(|source| MailError::Tls {
                host: host.to_owned(),
                source,
            })
        };
        let security = match url.security {
            Security::StartTls => Tls::Required(tls(&url.host)?),
            Security::Implicit => Tls::Wrapper(tls(&url.host)?),
            Security::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&url.host)
            .port(url.port)
            .tls(security)
            .timeout(Some(SMTP_TIMEOUT));
        if let (Some(user), Some(password)) = (&url.user, &url.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            url: url.clone(),
        })
    }

    /// The sender.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// Connect, greet, secure and log in as a delivery would, and report what was found
    /// (logged at start; never fatal: the outbox waits for the server).
    pub async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(CONVERSATION, self.transport.test_connection()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CONVERSATION:?}")),
        }
    }

    /// The server, password redacted.
    pub fn url(&self) -> &SmtpUrl {
        &self.url
    }

    async fn deliver(&self, mail: &OutboundMail) -> Result<(), Failure> {
        let to = Address::from_str(&mail.recipient)
            .map_err(|e| Failure::Permanent(format!("invalid recipient: {e}")))?;
        let envelope = Envelope::new(Some(self.from.email.clone()), vec![to])
            .map_err(|e| Failure::Permanent(format!("invalid envelope: {e}")))?;
        let sent = tokio::time::timeout(
            CONVERSATION,
            self.transport.send_raw(&envelope, &mail.message),
        )
        .await;
        match sent {
            Ok(Ok(_)) => Ok(()),
            // Refused for this mail (no such mailbox, policy, size): retrying will not help.
            // A refused login, a server that is full or misconfigured, any 4xx: it may.
            Ok(Err(e)) if refused_for_good(&e) => Err(Failure::Permanent(e.to_string())),
            Ok(Err(e)) => Err(Failure::Transient(e.to_string())),
            Err(_) => Err(Failure::Transient(format!(
                "the SMTP server did not finish within {CONVERSATION:?}"
            ))),
        }
    }
}

/// Whether the server refused this mail itself (RFC 5321's 550–553, 554 at the
/// transaction), as opposed to refusing the login or being unwell.
fn refused_for_good(e: &lettre::transport::smtp::Error) -> bool {
    e.is_permanent()
        && e.status().is_some_and(|c| {
            let code = c.to_string();
            matches!(code.as_str(), "550" | "551" | "552" | "553" | "554")
        })
}

enum Failure {
    /// The server refused it for good (5xx), or it cannot be sent at all.
    Permanent(String),
    /// Try again later (no connection, 4xx, a timeout).
    Transient(String),
}

/// The post office: renders letters (text and HTML, links under the public URL) into the
/// outbox and wakes this node's courier.
pub struct Post {
    outbox: DynOutbox,
    from: Mailbox,
    links: url::Url,
    clock: SharedClock,
    wake: Arc<Notify>,
}

impl Post {
    /// A post office writing to `outbox`, as `from`, with links under `public_url`.
    pub fn new(
        outbox: DynOutbox,
        from: Mailbox,
        public_url: url::Url,
        clock: SharedClock,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            outbox,
            from,
            links: public_url,
            clock,
            wake,
        }
    }
}

#[async_trait]
impl PostOffice for Post {
    async fn post(&self, letter: Letter) -> StoreResult<()> {
        let now = self.clock.now();
        let message = letters::render(&letter, &self.from, &self.links, now).map_err(|e| {
            keyward_core::StoreError::Corrupt(format!("cannot write the mail: {e}"))
        })?;
        self.outbox
            .enqueue(&OutboundMail {
                id: uuid::Uuid::new_v4().to_string(),
                kind: letter.kind.as_str().to_owned(),
                recipient: letter.to.clone(),
                message,
                created_at: now,
                expires_at: letter.expires_at,
                attempts: 0,
            })
            .await?;
        metrics::counter!("keyward_mail_total", "result" => "queued").increment(1);
        self.wake.notify_one();
        Ok(())
    }
}

/// The worker that empties the outbox: claims due mails (a lease), delivers them, and
/// records the outcome. One runs on every node; the outbox's claim keeps them apart.
pub struct Courier {
    outbox: DynOutbox,
    mailer: Mailer,
    clock: SharedClock,
    wake: Arc<Notify>,
    /// How often the outbox is looked at when nothing wakes the courier.
    pub poll: Duration,
}

/// How long a claim holds a mail: longer than any SMTP conversation.
const LEASE: time::Duration = time::Duration::minutes(2);
/// Mails claimed at once: one, so that each mail's lease covers its own delivery alone.
const BATCH: u32 = 1;
/// How long sent and parked mails stay listed.
const KEEP_DONE: time::Duration = time::Duration::days(30);
/// How often they are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

impl Courier {
    /// A courier delivering `outbox`'s mails through `mailer`, woken by `wake`.
    pub fn new(outbox: DynOutbox, mailer: Mailer, clock: SharedClock, wake: Arc<Notify>) -> Self {
        Self {
            outbox,
            mailer,
            clock,
            wake,
            poll: Duration::from_secs(1),
        }
    }

    /// The mailer it delivers through.
    pub fn mailer(&self) -> &Mailer {
        &self.mailer
    }

    /// Deliver what is due now; returns how many mails were tried.
    pub async fn run_once(&self) -> StoreResult<usize> {
        let now = self.clock.now();
        let due = self.outbox.claim(now, now + LEASE, BATCH).await?;
        for mail in &due {
            self.attempt(mail).await?;
        }
        Ok(due.len())
    }

    async fn attempt(&self, mail: &OutboundMail) -> StoreResult<()> {
        if self.clock.now() >= mail.expires_at {
            tracing::warn!(mail_id = %mail.id, kind = %mail.kind, "mail parked: its link expired before it could be delivered");
            metrics::counter!("keyward_mail_total", "result" => "parked").increment(1);
            return self
                .outbox
                .failed(
                    &mail.id,
                    self.clock.now(),
                    None,
                    "the link expired before delivery",
                )
                .await;
        }
        let outcome = self.mailer.deliver(mail).await;
        let now = self.clock.now();
        match outcome {
            Ok(()) => {
                tracing::info!(mail_id = %mail.id, kind = %mail.kind, attempts = mail.attempts + 1, "mail delivered");
                metrics::counter!("keyward_mail_total", "result" => "sent").increment(1);
                self.outbox.delivered(&mail.id, now).await
            }
            Err(Failure::Permanent(error)) => {
                tracing::warn!(mail_id = %mail.id, kind = %mail.kind, %error, "mail parked: refused for good");
                metrics::counter!("keyward_mail_total", "result" => "parked").increment(1);
                self.outbox.failed(&mail.id, now, None, &error).await
            }
            Err(Failure::Transient(error)) => {
                let attempts = mail.attempts + 1;
                let retry = retry_after(attempts)
                    .map(|d| now + d)
                    .filter(|at| *at < mail.expires_at);
                match retry {
                    Some(at) => {
                        tracing::warn!(mail_id = %mail.id, kind = %mail.kind, attempts, %error, retry_at = %at, "mail delivery failed; will retry");
                        metrics::counter!("keyward_mail_total", "result" => "retry").increment(1);
                    }
                    None => {
                        tracing::warn!(mail_id = %mail.id, kind = %mail.kind, attempts, max = MAX_ATTEMPTS, %error, "mail parked: it kept failing");
                        metrics::counter!("keyward_mail_total", "result" => "parked").increment(1);
                    }
                }
                self.outbox.failed(&mail.id, now, retry, &error).await
            }
        }
    }

    /// Deliver until the task is dropped: whenever a mail is posted on this node, and every
    /// `poll` for mails posted elsewhere or due for a retry.
    pub async fn run(self) {
        let mut purged = tokio::time::Instant::now();
        loop {
            if purged.elapsed() >= PURGE_EVERY {
                purged = tokio::time::Instant::now();
                match self.outbox.purge_mail(self.clock.now() - KEEP_DONE).await {
                    Ok(n) if n > 0 => tracing::debug!(purged = n, "old mail summaries removed"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purging the outbox failed"),
                }
            }
            match self.run_once().await {
                // A full batch: there may be more right away.
                Ok(n) if n >= BATCH as usize => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "the outbox cannot be read"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_say_how_they_are_secured() {
        let u: SmtpUrl = "smtp://mail.example.com".parse().unwrap();
        assert_eq!((u.security, u.port), (Security::StartTls, 587));
        let u: SmtpUrl = "smtps://app:p%40ss+w@mail.example.com".parse().unwrap();
        assert_eq!((u.security, u.port), (Security::Implicit, 465));
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(
            u.password.as_ref().map(|p| p.expose_secret()),
            Some("p@ss+w")
        );
        let u: SmtpUrl = "smtp://127.0.0.1:2525?tls=none".parse().unwrap();
        assert_eq!((u.security, u.port), (Security::None, 2525));
        assert_eq!(u.to_string(), "smtp://127.0.0.1:2525?tls=none");
    }

    #[test]
    fn bad_smtp_urls_are_refused() {
        for (bad, err) in [
            ("mail.example.com", SmtpUrlError::Url),
            ("http://mail.example.com", SmtpUrlError::Scheme),
            ("smtps://mail.example.com?tls=none", SmtpUrlError::Tls),
            ("smtp://mail.example.com?tls=maybe", SmtpUrlError::Tls),
            ("smtp://app@mail.example.com", SmtpUrlError::Login),
            (
                "smtp://mail.example.com?auth=plain",
                SmtpUrlError::Parameter("auth".into()),
            ),
        ] {
            assert_eq!(bad.parse::<SmtpUrl>().err(), Some(err), "{bad}");
        }
    }

    #[test]
    fn the_password_is_never_shown() {
        let u: SmtpUrl = "smtp://app:s3cret@mail.example.com:2525".parse().unwrap();
        assert_eq!(u.to_string(), "smtp://app:***@mail.example.com:2525");
        assert!(!format!("{u:?}").contains("s3cret"));
    }
}
