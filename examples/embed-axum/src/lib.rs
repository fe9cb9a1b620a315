//! An axum app with its own routes and data (notes, kept per user in memory) that embeds
//! keyward for everything about accounts:
//!
//! - `kw.layer()` around the app's own routes: the extractors work there, and the app's own
//!   unsafe routes are refused cross-site like keyward's;
//! - [`keyward_http::AuthSession`] in the app's sign-in and sign-out forms;
//! - [`keyward_http::CurrentSession`] (via `MaybeSession`) for a protected page and
//!   [`keyward_http::Principal`] for a protected JSON route;
//! - keyward's JSON API merged beside them (registration, session management), and its
//!   maintenance spawned once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use keyward_core::{AuthConfig, AuthService, PasswordHasher, SystemClock, UserId};
use keyward_http::{AuthSession, HttpConfig, Keyward, MaybeSession, Password, Principal};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The app's own data: notes by user.
#[derive(Clone, Default)]
struct Notes(Arc<Mutex<HashMap<UserId, Vec<String>>>>);

impl Notes {
    fn of(&self, user: UserId) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&user).cloned().unwrap_or_default()
    }

    fn add(&self, user: UserId, text: String) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(user).or_default().push(text);
    }
}

/// The app: its router and the keyward it embeds.
pub struct App {
    /// keyward, embedded.
    pub keyward: Keyward,
    router: Router,
}

impl App {
    /// keyward on the SQLite (or PostgreSQL) database at `database`, users reaching the app at
    /// `public_url`.
    pub async fn open(database: &str, public_url: keyward_http::Url) -> anyhow::Result<Self> {
        Ok(Self::new(open_keyward(database, public_url).await?))
    }

    /// The app around an already built keyward.
    pub fn new(keyward: Keyward) -> Self {
        let own = Router::new()
            .route("/", get(home))
            .route("/login", post(login))
            .route("/logout", post(logout))
            .route("/notes", get(notes_page))
            .route("/api/notes", get(list_notes).post(add_note))
            .with_state(Notes::default())
            .layer(keyward.layer());
        let router = own.merge(keyward.api_router());
        Self { keyward, router }
    }

    /// The router, to serve or to test.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serve on `listener` (with keyward's maintenance running beside) until the process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        tokio::spawn(self.keyward.maintenance());
        axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await?;
        Ok(())
    }
}

/// keyward over the database at `database` (migrated on open), for users who reach it at
/// `public_url`.
pub async fn open_keyward(
    database: &str,
    public_url: keyward_http::Url,
) -> anyhow::Result<Keyward> {
    let db = Arc::new(keyward_sql::SqlStore::open(&database.parse()?).await?);
    let auth = AuthService::new(
        db.clone(),
        db.clone(),
        PasswordHasher::new(None)?,
        Arc::new(SystemClock),
        AuthConfig::default(),
    )
    .with_token_store(db.clone())
    .with_failure_log(db);
    Ok(Keyward::new(
        Arc::new(auth),
        None,
        HttpConfig::new(public_url),
    ))
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } }
            body { h1 { (title) } (body) }
        }
    }
}

async fn home(MaybeSession(current): MaybeSession) -> Markup {
    match current {
        Some(cs) => page(
            "Notes",
            html! {
                p { "Signed in as " strong { (cs.session.username) } ". " a href="/notes" { "Your notes" } }
                form method="post" action="/logout" { button { "Sign out" } }
            },
        ),
        None => page("Notes", sign_in_form(None)),
    }
}

fn sign_in_form(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message { p role="alert" { (m) } }
        form method="post" action="/login" {
            label { "Username " input name="username" autocomplete="username"; }
            label { "Password " input name="password" type="password" autocomplete="current-password"; }
            button { "Sign in" }
        }
    }
}

#[derive(Deserialize)]
struct SignIn {
    username: String,
    password: String,
}

async fn login(auth: AuthSession, Form(form): Form<SignIn>) -> Response {
    match auth
        .login(&form.username, Password::new(form.password))
        .await
    {
        Ok(signed_in) => (signed_in, Redirect::to("/notes")).into_response(),
        Err(e) => {
            let status = e.status();
            let text = if status == StatusCode::TOO_MANY_REQUESTS {
                "Too many attempts: try again later."
            } else {
                "Wrong username or password."
            };
            (status, page("Notes", sign_in_form(Some(text)))).into_response()
        }
    }
}

async fn logout(auth: AuthSession) -> Response {
    match auth.logout().await {
        Ok(signed_out) => (signed_out, Redirect::to("/")).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn notes_page(State(notes): State<Notes>, MaybeSession(current): MaybeSession) -> Response {
    let Some(cs) = current else {
        return Redirect::to("/").into_response();
    };
    let mine = notes.of(cs.session.user_id);
    page(
        "Your notes",
        html! {
            p { "Signed in as " strong { (cs.session.username) } }
            ul { @for n in &mine { li { (n) } } }
        },
    )
    .into_response()
}

async fn list_notes(State(notes): State<Notes>, who: Principal) -> Response {
    let Some(user) = who.user() else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    Json(serde_json::json!({ "user": who.username(), "notes": notes.of(user) })).into_response()
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

async fn add_note(
    State(notes): State<Notes>,
    who: Principal,
    Json(note): Json<NewNote>,
) -> Response {
    let Some(user) = who.user() else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    notes.add(user, note.text);
    StatusCode::CREATED.into_response()
}
