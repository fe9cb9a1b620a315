//! The composition root: settings in, a bound server out.

use crate::config::{ConfigError, Settings};
use crate::stores::{self, OpenFailure, Stores};
use keyward_core::{AuthService, DeviceKey, PasswordHasher, SharedClock};
use keyward_http::Keyward;
use keyward_mail::{Courier, Mailer, Post};
use keyward_token::TokenService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why a server could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The bind address cannot be listened on.
    #[error("--bind {addr}: cannot listen")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A setting cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A store cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenFailure),
    /// The password hasher cannot start.
    #[error("starting the password hasher")]
    Hasher(#[source] keyward_core::password::HashError),
    /// The signing keys cannot be loaded or made.
    #[error("loading the signing keys")]
    Keys(#[source] keyward_token::TokenError),
    /// The SMTP settings cannot be used.
    #[error("--smtp-url: cannot set up the SMTP client")]
    Mail(#[source] keyward_mail::MailError),
}

/// keyward built from its settings, bound and ready to serve: the stores the URLs name (and
/// the caches in front of them), the services, and the listener.
pub struct Application {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    settings: Settings,
    stores: Stores,
    keyward: Keyward,
    /// Delivers the outbox's mail, when an SMTP server is configured.
    courier: Option<Courier>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.addr)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Bind, open the stores, start the services. `clock` is the time every expiry and
    /// throttle is judged by (`SystemClock` in production; a manual one in tests).
    pub async fn build(settings: Settings, clock: SharedClock) -> Result<Self, StartError> {
        Self::build_with(settings, clock, |stores| stores).await
    }

    /// [`Application::build`], with the opened stores passed through `wrap` before the
    /// services take them (a test puts a store it can switch off in front of the sessions).
    pub async fn build_with(
        mut settings: Settings,
        clock: SharedClock,
        wrap: impl FnOnce(Stores) -> Stores,
    ) -> Result<Self, StartError> {
        let listener = tokio::net::TcpListener::bind(settings.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: settings.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: settings.bind,
            source,
        })?;
        settings.bound_to(addr)?;
        let stores = wrap(stores::open(&settings.stores).await?);
        let kek = stores::key_encryption_key(&settings.stores)?;
        let hasher = PasswordHasher::new(settings.hash_concurrency).map_err(StartError::Hasher)?;
        let mut auth = AuthService::new(
            stores.users.clone(),
            stores.sessions.clone(),
            hasher,
            clock.clone(),
            settings.auth.clone(),
        )
        .with_token_store(stores.tokens.clone())
        // Device cookies verify on every node that shares the KEK, and across restarts.
        .with_device_key(DeviceKey::new(kek.derive(b"keyward device cookies v1")))
        // TOTP secrets are sealed under the KEK too; apps show the public URL's host.
        .with_mfa(
            stores.mfa.clone(),
            Arc::new(kek.clone()),
            settings.http.public_url.host_str().unwrap_or("keyward"),
        );
        if let Some(log) = stores.failure_log.clone() {
            // Beside shared sessions, failed logins are counted fleet-wide.
            auth = auth.with_failure_log(log);
        }
        // Mail: letters go to the outbox; this node's courier delivers what any node posted.
        let courier = match &settings.mail {
            Some(mail) => {
                let mailer =
                    Mailer::new(&mail.smtp, mail.from.clone()).map_err(StartError::Mail)?;
                let wake = Arc::new(tokio::sync::Notify::new());
                let post = Post::new(
                    stores.outbox.clone(),
                    mail.from.clone(),
                    settings.http.public_url.clone(),
                    clock.clone(),
                    wake.clone(),
                );
                auth = auth.with_mail(stores.tickets.clone(), Some(Arc::new(post)));
                Some(Courier::new(
                    stores.outbox.clone(),
                    mailer,
                    clock.clone(),
                    wake,
                ))
            }
            None => {
                auth = auth.with_mail(stores.tickets.clone(), None);
                None
            }
        };
        let auth = Arc::new(auth);
        let tokens = TokenService::new(
            auth.clone(),
            stores.tokens.clone(),
            stores.keys.clone(),
            kek,
            keyward_token::OAuthStores {
                clients: stores.clients.clone(),
                grants: stores.grants.clone(),
            },
            settings.tokens.clone(),
        )
        .await
        .map_err(StartError::Keys)?;
        let issuer = settings.tokens.issuer.trim_end_matches('/');
        if issuer != settings.http.public_url.as_str().trim_end_matches('/') {
            // OpenID Connect Discovery fetches `{issuer}/.well-known/openid-configuration`
            // and insists the document names that issuer.
            tracing::warn!(
                issuer,
                public_url = %settings.http.public_url,
                "--issuer differs from --public-url: OpenID clients find the discovery document only if the issuer URL also reaches this server"
            );
        }
        let keyward = Keyward::new(auth, Some(Arc::new(tokens)), settings.http.clone());
        Ok(Self {
            listener,
            addr,
            settings,
            stores,
            keyward,
            courier,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port (the kernel's choice for port 0).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The settings, with the public URL and issuer as derived from the bound address.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The stores the services use.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The HTTP face, to embed or inspect.
    pub fn keyward(&self) -> &Keyward {
        &self.keyward
    }

    /// Serve, with the maintenance task beside, until `shutdown` completes; then finish the
    /// requests in flight.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let maintenance = tokio::spawn(self.keyward.maintenance());
        let courier = self.courier.map(|courier| {
            tokio::spawn(async move {
                // What the server says, logged once; a server that is down is waited for.
                match courier.mailer().check().await {
                    Ok(()) => tracing::info!(smtp = %courier.mailer().url(), "the SMTP server answers"),
                    Err(error) => tracing::warn!(smtp = %courier.mailer().url(), %error, "the SMTP server cannot be used yet; mail waits in the outbox"),
                }
                courier.run().await
            })
        });
        let served = axum::serve(
            self.listener,
            self.keyward
                .router()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        maintenance.abort();
        if let Some(c) = courier {
            c.abort();
        }
        served
    }
}
