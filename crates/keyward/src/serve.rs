//! `keyward serve`.

use crate::config::{LogFormat, Settings, TokenAlgorithm};
use crate::stores;
use anyhow::Context;
use keyward_core::{
    AuthConfig, AuthService, DeviceKey, PasswordHasher, SharedClock, SystemClock, ThrottleConfig,
};
use keyward_http::{HttpConfig, Keyward};
use keyward_token::{SigningAlg, TokenConfig, TokenService};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

fn init_logs(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Convert a std duration into a `time` one.
pub fn dur(d: std::time::Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// The service configuration the settings describe.
pub fn auth_config(settings: &Settings) -> AuthConfig {
    AuthConfig {
        idle_timeout: dur(settings.idle_timeout),
        absolute_timeout: dur(settings.absolute_timeout),
        open_registration: settings.open_registration,
        throttle: ThrottleConfig {
            per_account: settings.login_max_failures_per_account,
            per_address: settings.login_max_failures_per_address,
            window: dur(settings.login_failure_window),
            registrations_per_address: settings.registration_max_per_address,
            token_failures_per_address: settings.token_max_failures_per_address,
        },
    }
}

/// The token configuration the settings describe.
pub fn token_config(settings: &Settings) -> TokenConfig {
    TokenConfig {
        issuer: settings.issuer.clone(),
        audience: settings.audience.clone(),
        access_ttl: dur(settings.access_token_ttl),
        refresh_ttl: dur(settings.refresh_token_ttl),
        refresh_reuse_grace: dur(settings.refresh_reuse_grace),
        algorithm: match settings.token_algorithm {
            TokenAlgorithm::EdDSA => SigningAlg::EdDSA,
            TokenAlgorithm::ES256 => SigningAlg::ES256,
            TokenAlgorithm::RS256 => SigningAlg::RS256,
        },
        password_grant: settings.password_grant,
        key_rotation_interval: dur(settings.key_rotation_interval),
        introspection_token: settings.introspection_token.clone(),
    }
}

/// Run the server until SIGINT or SIGTERM.
pub async fn serve(mut settings: Settings) -> anyhow::Result<()> {
    init_logs(settings.log_format);
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("--bind {}: cannot listen", settings.bind))?;
    let addr = listener.local_addr()?;
    if settings.public_url_derived {
        // Port 0 or an unspecified address: the origin browsers will send is the bound one.
        settings.public_url = crate::config::default_public_url(addr, true)?;
    }
    if settings.issuer_derived {
        settings.issuer = settings
            .public_url
            .as_str()
            .trim_end_matches('/')
            .to_owned();
    }
    let stores = stores::open(&settings).await?;
    let kek = stores::key_encryption_key(&settings)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let hasher =
        PasswordHasher::new(settings.hash_concurrency).context("starting the password hasher")?;
    let mut auth = AuthService::new(
        stores.users,
        stores.sessions,
        hasher,
        clock,
        auth_config(&settings),
    )
    .with_token_store(stores.tokens.clone())
    // Device cookies verify on every node that shares the KEK, and across restarts.
    .with_device_key(DeviceKey::new(kek.derive(b"keyward device cookies v1")));
    if let Some(log) = stores.failure_log {
        // Beside shared sessions, failed logins are counted fleet-wide.
        auth = auth.with_failure_log(log);
    }
    let auth = Arc::new(auth);
    let tokens = Arc::new(
        TokenService::new(
            auth.clone(),
            stores.tokens,
            stores.keys,
            kek,
            token_config(&settings),
        )
        .await
        .context("loading the signing keys")?,
    );
    let http = HttpConfig {
        public_url: settings.public_url.clone(),
        allowed_origins: settings.allowed_origins.clone(),
        trusted_proxies: settings.trusted_proxies.clone(),
    };
    let kw = Keyward::new(auth, Some(tokens), http);
    tracing::info!(%addr, public_url = %settings.public_url, issuer = %settings.issuer, database = %crate::config::redacted(&settings.database), session_store = %crate::config::redacted(&settings.session_store), "keyward listening");

    // Every 30 s: drop what has expired (from a session cache's memory too; Redis, which
    // expires keys by itself, prunes its indexes at most hourly), make a signing key when one
    // is due, and pick up keys rotated elsewhere (the contract promises within a minute).
    let background = kw.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
        every.tick().await;
        loop {
            every.tick().await;
            match background.auth().purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "expired sessions removed"),
                Err(e) => tracing::warn!(error = %e, "purging expired sessions failed"),
            }
            if let Some(t) = background.tokens() {
                if let Err(e) = t.purge().await {
                    tracing::warn!(error = %e, "purging expired tokens failed");
                }
                // A new key on schedule (made by one node; the others pick it up here).
                match t.rotate_if_due().await {
                    Ok(Some(kid)) => tracing::info!(%kid, "signing key rotated on schedule"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "rotating the signing key failed"),
                }
                if let Err(e) = t.reload_keys().await {
                    tracing::warn!(error = %e, "reloading signing keys failed");
                }
            }
        }
    });

    axum::serve(
        listener,
        kw.router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .context("serving")?;
    tracing::info!("keyward stopped");
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
