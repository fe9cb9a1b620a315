//! The `keyward` binary: `keyward serve` and the admin commands. Configuration, start-up,
//! telemetry and the CLI live here; everything else is in the library crates.

mod admin;
mod serve;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use keyward::config::{ConfigError, Settings, SettingsArgs};
use keyward::{stores, StartError};
use std::process::ExitCode;

/// mimalloc instead of the system allocator: a request allocates and frees many small
/// buffers on both worker threads, where glibc's arenas contend (measured in
/// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// keyward: session and token authentication server.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Print machine-readable JSON instead of a table (admin commands).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (SQLite at ./keyward.db and 127.0.0.1:8080 unless told otherwise).
    Serve,
    /// Manage users.
    #[command(subcommand)]
    Users(admin::UsersCommand),
    /// Inspect and revoke sessions.
    #[command(subcommand)]
    Sessions(admin::SessionsCommand),
    /// Manage token signing keys.
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// Inspect the mail outbox.
    #[command(subcommand)]
    Mail(admin::MailCommand),
    /// Manage OAuth clients.
    #[command(subcommand)]
    Clients(admin::ClientsCommand),
    /// Create or update the database schema, then exit.
    Migrate,
}

/// Start-up failures and how the process exits on them.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A setting cannot be used: exit code 2.
    Config(ConfigError),
    /// A store cannot be reached: exit code 69 (`EX_UNAVAILABLE`).
    Unreachable(anyhow::Error),
    /// Anything else: exit code 1.
    Other(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<stores::OpenFailure> for Failure {
    fn from(e: stores::OpenFailure) -> Self {
        match e {
            stores::OpenFailure::Config(c) => Self::Config(c),
            stores::OpenFailure::Unreachable(u) => Self::Unreachable(u.into()),
            other => Self::Other(other.into()),
        }
    }
}

impl From<StartError> for Failure {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Config(c) => Self::Config(c),
            StartError::Open(open) => open.into(),
            other => Self::Other(other.into()),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        let e = match e.downcast::<ConfigError>() {
            Ok(c) => return Self::Config(c),
            Err(e) => e,
        };
        match e.downcast::<stores::OpenFailure>() {
            Ok(open) => open.into(),
            Err(e) => Self::Other(e),
        }
    }
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        // A value a setting's parser refused: said as every invalid setting is, in the
        // parser's words (a store URL's password redacted), not clap's (the raw value).
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            ) =>
        {
            eprintln!("error: {}", ConfigError::from(e));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = Settings::from_matches(&matches)
        .map_err(Failure::from)
        .and_then(|settings| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::Other(e.into()))?;
            runtime.block_on(run(cli.command, settings, cli.json))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Unreachable(e)) => {
            print_chain(&e);
            ExitCode::from(69)
        }
        Err(Failure::Other(e)) => {
            print_chain(&e);
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, one a line; a cause whose text the line before already holds
/// (an error that quotes its source) is not repeated.
fn print_chain(e: &anyhow::Error) {
    for line in chain_lines(e) {
        eprintln!("{line}");
    }
}

fn chain_lines(e: &anyhow::Error) -> Vec<String> {
    let mut shown = e.to_string();
    let mut lines = vec![format!("error: {shown}")];
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if shown.contains(&text) {
            continue;
        }
        lines.push(format!("  caused by: {text}"));
        shown = text;
    }
    lines
}

async fn run(command: Command, settings: Settings, json: bool) -> Result<(), Failure> {
    match command {
        Command::Serve => serve::serve(settings).await?,
        Command::Migrate => {
            stores::open(&settings.stores).await?;
            println!("database {} is up to date", settings.stores.database);
        }
        Command::Users(cmd) => admin::users(cmd, &settings, json).await?,
        Command::Sessions(cmd) => admin::sessions(cmd, &settings, json).await?,
        Command::Keys(cmd) => admin::keys(cmd, &settings, json).await?,
        Command::Mail(cmd) => admin::mail(cmd, &settings, json).await?,
        Command::Clients(cmd) => admin::clients(cmd, &settings, json).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let io = std::io::Error::other("connection refused");
        let quoted = anyhow::Error::new(keyward_token::KeyError::Generate(Box::new(io)))
            .context("loading the signing keys");
        assert_eq!(
            chain_lines(&quoted),
            [
                "error: loading the signing keys",
                "  caused by: key generation failed: connection refused",
            ]
        );
        let plain = anyhow::Error::new(std::io::Error::other("disk full")).context("serving");
        assert_eq!(
            chain_lines(&plain),
            ["error: serving", "  caused by: disk full"]
        );
    }

    #[test]
    fn secrets_that_begin_with_a_hyphen_are_values() {
        // "-" is one of base64url's 64 digits: one generated key in 64 begins with it, and
        // must not be read as a flag (CI once failed on such a key).
        let kek = "-LAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let cli = Cli::try_parse_from([
            "keyward",
            "serve",
            "--key-encryption-key",
            kek,
            "--introspection-token",
            "-introspection-secret",
        ])
        .unwrap();
        let key = cli.settings.layer.key_encryption_key.unwrap();
        assert_eq!(key.expose_secret(), kek);
        let token = cli.settings.layer.introspection_token.unwrap();
        assert_eq!(token.expose_secret(), "-introspection-secret");
    }
}
