//! `embed-axum`: the example app, served.
//!
//!     cargo run -p embed-axum -- --bind 127.0.0.1:3000 --database sqlite://notes.db

use clap::Parser;

/// A notes app that signs people in with keyward, embedded.
#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3000")]
    bind: std::net::SocketAddr,
    /// keyward's database (users and sessions).
    #[arg(long, default_value = "sqlite://notes.db")]
    database: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    let addr = listener.local_addr()?;
    let public_url = format!("http://{addr}").parse()?;
    let app = embed_axum::App::open(&args.database, public_url).await?;
    eprintln!("embed-axum listening on http://{addr}");
    app.serve(listener).await
}
