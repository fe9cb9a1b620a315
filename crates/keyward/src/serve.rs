//! `keyward serve`.

use crate::Failure;
use keyward::config::{LogFormat, Settings};
use keyward::Application;
use keyward_core::SystemClock;
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

/// Run the server until SIGINT or SIGTERM.
pub async fn serve(settings: Settings) -> Result<(), Failure> {
    init_logs(settings.log_format);
    // The process's metrics recorder, rendered at /metrics (a library installs none).
    keyward_http::metrics::install();
    let app = Application::build(settings, Arc::new(SystemClock)).await?;
    let s = app.settings();
    tracing::info!(addr = %app.addr(), public_url = %s.http.public_url, issuer = %s.tokens.issuer, database = %s.stores.database, session_store = %s.stores.session_store, "keyward listening");
    app.run_until(shutdown())
        .await
        .map_err(|e| Failure::Other(anyhow::Error::new(e).context("serving")))?;
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
