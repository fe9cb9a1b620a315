//! Sign-in and sign-out for an embedding app's own handlers.

use crate::error::ApiError;
use crate::extract::{keyward_from, ClientAddr, CurrentSession};
use crate::routes::{client_info, logged_out_headers, signed_in_cookies};
use crate::Keyward;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{AppendHeaders, IntoResponseParts, ResponseParts};
use keyward_core::{ClientInfo, Password, SessionRecord};
use std::convert::Infallible;

/// The request's sign-in state, with [`AuthSession::login`] and [`AuthSession::logout`] for an
/// app's own forms (the shape of axum-login's `AuthSession`). The methods return the
/// `Set-Cookie` headers as response parts: return them with the handler's answer.
///
/// ```no_run
/// use axum::response::{IntoResponse, Redirect};
/// use keyward_http::{AuthSession, Password};
///
/// async fn sign_in(auth: AuthSession) -> axum::response::Response {
///     let password = Password::new("correct horse battery staple".to_owned());
///     match auth.login("ada", password).await {
///         Ok(signed_in) => (signed_in, Redirect::to("/notes")).into_response(),
///         Err(e) => e.into_response(),
///     }
/// }
/// ```
///
/// Rejects with 400 when the session cookie was sent twice and 503 when the session store is
/// down; a missing or dead cookie is simply no current session.
#[derive(Debug)]
pub struct AuthSession {
    kw: Keyward,
    client: ClientInfo,
    current: Option<CurrentSession>,
}

impl<S: Send + Sync> FromRequestParts<S> for AuthSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let kw = keyward_from(parts)?;
        let addr = ClientAddr::from_request_parts(parts, state).await?;
        let client = client_info(&kw, addr, &parts.headers);
        let current = CurrentSession::resolve(parts).await?;
        Ok(Self {
            kw,
            client,
            current,
        })
    }
}

impl AuthSession {
    /// The signed-in session, if the request carries a live one.
    pub fn current(&self) -> Option<&CurrentSession> {
        self.current.as_ref()
    }

    /// Check the credentials (throttled and audited as keyward's own sign-in is) and open a
    /// session with a fresh token; a session the request was made from ends. The error is
    /// the one keyward's API answers (401 for wrong credentials, 429 when throttled…).
    pub async fn login(&self, username: &str, password: Password) -> Result<SignedIn, ApiError> {
        let new = self
            .kw
            .auth()
            .login(username, &password, &self.client)
            .await?;
        let AppendHeaders(cookies) = signed_in_cookies(&self.kw, &new);
        Ok(SignedIn {
            session: new.session,
            cookies,
        })
    }

    /// End the current session, if there is one, and clear the cookie in the browser.
    pub async fn logout(&self) -> Result<SignedOut, ApiError> {
        if let Some(cs) = &self.current {
            self.kw
                .auth()
                .logout(&cs.session.token_hash, self.client.ip)
                .await?;
        }
        Ok(SignedOut {
            headers: logged_out_headers(&self.kw),
        })
    }
}

/// A new session: its record, and the cookies that carry it to the browser (as response parts).
#[derive(Debug)]
pub struct SignedIn {
    session: SessionRecord,
    cookies: Vec<(HeaderName, HeaderValue)>,
}

impl SignedIn {
    /// The session that was opened.
    pub fn session(&self) -> &SessionRecord {
        &self.session
    }
}

impl IntoResponseParts for SignedIn {
    type Error = Infallible;

    fn into_response_parts(self, res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        Ok(append(res, self.cookies))
    }
}

/// The headers that clear the session cookie (as response parts).
#[derive(Debug)]
pub struct SignedOut {
    headers: [(HeaderName, HeaderValue); 2],
}

impl IntoResponseParts for SignedOut {
    type Error = Infallible;

    fn into_response_parts(self, res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        Ok(append(res, self.headers))
    }
}

/// Add headers to a response, beside those of the same name (two `Set-Cookie`s stay two).
fn append(
    mut res: ResponseParts,
    headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
) -> ResponseParts {
    for (name, value) in headers {
        res.headers_mut().append(name, value);
    }
    res
}
