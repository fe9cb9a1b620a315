//! Admin commands: users and sessions, on the same configuration as the server. They change the
//! stores directly, so a running server honours them on its next request.

use anyhow::{bail, Context};
use clap::Subcommand;
use keyward::config::Settings;
use keyward::stores;
use keyward_core::{
    AuthError, AuthService, Password, PasswordHasher, SessionId, SessionRecord, SystemClock,
    UserRecord,
};
use serde_json::json;
use std::io::BufRead;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; the password is read from standard input.
    Add {
        /// Username.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Lock a user out and revoke every session of theirs.
    Lock {
        /// Username.
        name: String,
    },
    /// Let a locked user sign in again.
    Unlock {
        /// Username.
        name: String,
    },
    /// Delete a user and every session of theirs.
    Delete {
        /// Username.
        name: String,
    },
    /// Turn off the second factor (TOTP and its recovery codes) of a user who lost the
    /// device; the next sign-in asks for the password alone.
    ResetMfa {
        /// Username.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List a user's live sessions.
    List {
        /// Username.
        #[arg(long)]
        user: String,
    },
    /// Revoke every session of a user, or one session by id.
    Revoke {
        /// Revoke every session of this user.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        user: Option<String>,
        /// Revoke the session with this id.
        #[arg(long)]
        id: Option<String>,
    },
}

async fn service(settings: &Settings) -> anyhow::Result<AuthService> {
    let stores = stores::open(&settings.stores).await?;
    let hasher = PasswordHasher::new(Some(1)).context("starting the password hasher")?;
    let auth = AuthService::new(
        stores.users,
        stores.sessions,
        hasher,
        Arc::new(SystemClock),
        settings.auth.clone(),
    )
    .with_token_store(stores.tokens);
    // Second factors need the KEK that seals them; without one (PostgreSQL and no
    // --key-encryption-key), the commands that do not touch them still work.
    Ok(match stores::key_encryption_key(&settings.stores) {
        Ok(kek) => auth.with_mfa(
            stores.mfa,
            Arc::new(kek),
            settings.http.public_url.host_str().unwrap_or("keyward"),
        ),
        Err(_) => auth,
    })
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the signing keys: the newest signs, older ones verify until their tokens expire.
    List,
    /// Add new signing keys (one of --token-algorithm, and an RS256 key for ID tokens when that
    /// is another); running servers use them within a minute.
    Rotate,
}

pub async fn keys(cmd: KeysCommand, settings: &Settings, json: bool) -> anyhow::Result<()> {
    let stores = stores::open(&settings.stores).await?;
    let now = keyward_core::Clock::now(&SystemClock);
    if let KeysCommand::Rotate = cmd {
        let kek = stores::key_encryption_key(&settings.stores)?;
        let alg = settings.tokens.algorithm;
        let set = keyward_token::keys::generate_set(alg, &kek, now)?;
        for key in &set {
            stores.keys.insert_key(key).await?;
        }
        let shown = |k: &keyward_core::StoredKey| json!({"kid": k.kid, "alg": k.alg, "created_at": ts(k.created_at)});
        if json {
            // The access-token key, and the ID-token key when the access algorithm is not RS256.
            let mut out = set.first().map(shown).unwrap_or_default();
            if let (Some(obj), Some(id_key)) = (out.as_object_mut(), set.get(1)) {
                obj.insert("id_token_key".into(), shown(id_key));
            }
            println!("{out}");
        } else {
            for key in &set {
                println!(
                    "new signing key {} ({}); servers sign with it within a minute",
                    key.kid, key.alg
                );
            }
        }
        return Ok(());
    }
    let list = stores.keys.list_keys().await?;
    let ttl = settings.tokens.access_ttl;
    let ages = keyward_token::keys::ages(&list);
    let status = |i: usize| {
        if keyward_token::keys::is_retired(&ages, i, now, ttl, settings.tokens.algorithm) {
            "retired"
        } else if keyward_token::keys::is_newest(&ages, i) {
            "signing"
        } else {
            "verifying"
        }
    };
    if json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .enumerate()
            .map(|(i, k)| json!({"kid": k.kid, "alg": k.alg, "created_at": ts(k.created_at), "status": status(i)}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .enumerate()
            .map(|(i, k)| {
                vec![
                    k.kid.clone(),
                    k.alg.clone(),
                    ts(k.created_at),
                    status(i).to_owned(),
                ]
            })
            .collect();
        print_table(&["KID", "ALG", "CREATED", "STATUS"], &rows);
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register an OAuth client; prints its client_id (and, when confidential, its secret,
    /// shown this once and stored only hashed).
    Add {
        /// A name people recognise (shown when they are asked to consent).
        name: String,
        /// Where codes may be sent: https, http to a loopback address (any port is then
        /// accepted), or a private-use scheme (com.example.app:/cb). Repeat for more.
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// A server that keeps a secret (else a public client: native or single-page app).
        #[arg(long)]
        confidential: bool,
        /// An application of this operator's own: no consent page.
        #[arg(long)]
        first_party: bool,
        /// Where RP-initiated logout may return to. Repeat for more.
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
    },
    /// List the clients.
    List,
    /// Remove a client.
    Delete {
        /// Its client_id.
        client_id: String,
    },
}

pub async fn clients(cmd: ClientsCommand, settings: &Settings, json: bool) -> anyhow::Result<()> {
    use keyward_core::clients::{check_redirect_uri, new_client_id};
    use keyward_core::{ClientRecord, SessionToken, TokenHash};
    let stores = stores::open(&settings.stores).await?;
    match cmd {
        ClientsCommand::Add {
            name,
            redirect_uris,
            confidential,
            first_party,
            post_logout_redirect_uris,
        } => {
            if name.trim().is_empty() || name.chars().count() > 100 {
                bail!("a client's name is 1 to 100 characters");
            }
            for uri in redirect_uris.iter().chain(&post_logout_redirect_uris) {
                check_redirect_uri(uri)?;
            }
            let secret = confidential
                .then(SessionToken::generate)
                .transpose()
                .context("the OS random source failed")?;
            let client = ClientRecord {
                id: new_client_id().context("the OS random source failed")?,
                name,
                redirect_uris,
                post_logout_redirect_uris,
                secret_hash: secret.as_ref().map(|s| TokenHash::of(s.expose())),
                first_party,
                created_at: keyward_core::Clock::now(&SystemClock),
            };
            stores.clients.create_client(&client).await?;
            let secret = secret.as_ref().map(|s| s.expose());
            if json {
                let mut v = client_json(&client);
                if let Some(map) = v.as_object_mut() {
                    map.insert("client_secret".into(), json!(secret));
                }
                println!("{v}");
            } else {
                println!("client_id: {}", client.id);
                if let Some(secret) = secret {
                    println!("client_secret: {secret}");
                    println!("(the secret is shown only now; keyward keeps only its hash)");
                }
            }
        }
        ClientsCommand::List => {
            let list = stores.clients.list_clients().await?;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(list.iter().map(client_json).collect())
                );
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        vec![
                            c.id.clone(),
                            c.name.clone(),
                            if c.is_confidential() {
                                "confidential"
                            } else {
                                "public"
                            }
                            .into(),
                            if c.first_party { "yes" } else { "no" }.into(),
                            c.redirect_uris.join(" "),
                        ]
                    })
                    .collect();
                print_table(
                    &["CLIENT_ID", "NAME", "TYPE", "FIRST_PARTY", "REDIRECT_URIS"],
                    &rows,
                );
            }
        }
        ClientsCommand::Delete { client_id } => {
            let now = keyward_core::Clock::now(&SystemClock);
            let deleted = keyward_core::oauth::delete_client(
                &stores.clients,
                &*stores.grants,
                &stores.tokens,
                &client_id,
                now,
            )
            .await?;
            if !deleted {
                bail!("no client with id '{client_id}'");
            }
            if json {
                println!("{}", json!({"deleted": client_id}));
            } else {
                println!("deleted client {client_id}");
            }
        }
    }
    Ok(())
}

fn client_json(c: &keyward_core::ClientRecord) -> serde_json::Value {
    json!({
        "client_id": c.id, "name": c.name,
        "confidential": c.is_confidential(), "first_party": c.first_party,
        "redirect_uris": c.redirect_uris,
        "post_logout_redirect_uris": c.post_logout_redirect_uris,
        "created_at": ts(c.created_at),
    })
}

#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// List the outbox, newest first: queued, sent and parked mails (never their content).
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

pub async fn mail(cmd: MailCommand, settings: &Settings, json: bool) -> anyhow::Result<()> {
    let MailCommand::List { limit } = cmd;
    let stores = stores::open(&settings.stores).await?;
    let list = stores.outbox.list_mail(limit).await?;
    if json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .map(|m| {
                json!({
                    "id": m.id, "kind": m.kind, "recipient": m.recipient,
                    "state": m.state.as_str(), "attempts": m.attempts,
                    "created_at": ts(m.created_at),
                    "next_attempt_at": ts(m.next_attempt_at),
                    "done_at": m.done_at.map(ts), "last_error": m.last_error,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.kind.clone(),
                m.recipient.clone(),
                m.state.as_str().to_owned(),
                m.attempts.to_string(),
                ts(m.created_at),
                m.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "KIND",
            "TO",
            "STATE",
            "ATTEMPTS",
            "QUEUED",
            "LAST ERROR",
        ],
        &rows,
    );
    Ok(())
}

fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn user_json(u: &UserRecord) -> serde_json::Value {
    json!({"id": u.id.to_string(), "username": u.username, "created_at": ts(u.created_at), "locked": u.locked, "email": u.email, "email_verified": u.email_verified, "totp": u.totp})
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn print_users(users: &[UserRecord], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::Value::Array(users.iter().map(user_json).collect())
        );
        return;
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.username.clone(),
                u.id.to_string(),
                ts(u.created_at),
                if u.locked { "locked" } else { "active" }.into(),
            ]
        })
        .collect();
    print_table(&["USERNAME", "ID", "CREATED", "STATUS"], &rows);
}

fn explain(e: AuthError, name: &str) -> anyhow::Error {
    match e {
        AuthError::NoSuchUser => anyhow::anyhow!("no user named '{name}'"),
        other => other.into(),
    }
}

pub async fn users(cmd: UsersCommand, settings: &Settings, json: bool) -> anyhow::Result<()> {
    let auth = service(settings).await?;
    match cmd {
        UsersCommand::Add {
            name,
            password_stdin,
        } => {
            if !password_stdin {
                bail!("give the password on standard input with --password-stdin");
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password")?;
            let password = Password::new(line.trim_end_matches(['\r', '\n']).to_owned());
            let user = auth
                .create_user(&name, &password)
                .await
                .map_err(|e| explain(e, &name))?;
            print_users(&[user], json);
        }
        UsersCommand::List => print_users(&auth.users().list_users().await?, json),
        UsersCommand::Lock { name } => {
            let user = auth
                .set_locked(&name, true)
                .await
                .map_err(|e| explain(e, &name))?;
            print_users(&[user], json);
        }
        UsersCommand::Unlock { name } => {
            let user = auth
                .set_locked(&name, false)
                .await
                .map_err(|e| explain(e, &name))?;
            print_users(&[user], json);
        }
        UsersCommand::Delete { name } => {
            let user = auth
                .delete_user(&name)
                .await
                .map_err(|e| explain(e, &name))?;
            if json {
                println!("{}", json!({"deleted": user_json(&user)}));
            } else {
                println!("deleted user {} ({})", user.username, user.id);
            }
        }
        UsersCommand::ResetMfa { name } => {
            let user = auth.reset_mfa(&name).await.map_err(|e| explain(e, &name))?;
            if json {
                println!("{}", json!({"mfa_reset": user_json(&user)}));
            } else {
                println!(
                    "second factor of {} turned off; the next sign-in asks for the password alone",
                    user.username
                );
            }
        }
    }
    Ok(())
}

fn print_sessions(sessions: &[SessionRecord], auth: &AuthService, json: bool) {
    if json {
        let list: Vec<serde_json::Value> = sessions
            .iter()
            .map(|s| {
                json!({"id": s.id.to_string(), "user_id": s.user_id.to_string(), "username": s.username,
                       "created_at": ts(s.created_at), "last_seen_at": ts(s.last_seen_at),
                       "expires_at": ts(auth.valid_until(s)), "ip": s.ip, "user_agent": s.user_agent})
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return;
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.username.clone(),
                ts(s.created_at),
                ts(s.last_seen_at),
                ts(auth.valid_until(s)),
                s.ip.clone().unwrap_or_default(),
                s.user_agent
                    .clone()
                    .unwrap_or_default()
                    .chars()
                    .take(40)
                    .collect(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "USER",
            "CREATED",
            "LAST SEEN",
            "EXPIRES",
            "IP",
            "USER AGENT",
        ],
        &rows,
    );
}

pub async fn sessions(cmd: SessionsCommand, settings: &Settings, json: bool) -> anyhow::Result<()> {
    let auth = service(settings).await?;
    match cmd {
        SessionsCommand::List { user } => {
            let u = auth
                .user_named(&user)
                .await
                .map_err(|e| explain(e, &user))?;
            print_sessions(&auth.list_sessions(u.id).await?, &auth, json);
        }
        SessionsCommand::Revoke {
            user: Some(user), ..
        } => {
            let u = auth
                .user_named(&user)
                .await
                .map_err(|e| explain(e, &user))?;
            let n = auth.revoke_user_sessions(u.id, None, None).await?;
            if json {
                println!("{}", json!({"revoked": n}));
            } else {
                println!("revoked {n} session(s) of {}", u.username);
            }
        }
        SessionsCommand::Revoke { user: None, id } => {
            let raw = id.unwrap_or_default();
            let Some(sid) = SessionId::parse(&raw) else {
                bail!("'{raw}' is not a session id")
            };
            if !auth.revoke_session(sid, None, None).await? {
                bail!("no session with id {sid}");
            }
            if json {
                println!("{}", json!({"revoked": 1}));
            } else {
                println!("revoked session {sid}");
            }
        }
    }
    Ok(())
}
