//! The authorization code flow's token side (OAuth 2.1 §4.1, OpenID Connect Core §3.1):
//! client authentication, consents, issuing a code for a signed-in browser session, and
//! exchanging it, with PKCE, for an access token, an ID token and, with `offline_access`, a
//! refresh token bound to the client.

use crate::{id, keys, unix, TokenError, TokenPair, TokenService, CLIENT_ID};
use keyward_core::auth::show_ip;
use keyward_core::oauth::{pkce_matches, CODE_TTL};
use keyward_core::{
    AuthorizationCode, ClientRecord, Consent, Grant, Redeemed, RefreshFamily, Scopes, SessionId,
    SessionRecord, SessionToken, StoreError, UserRecord, AUDIT,
};
use secrecy::{ExposeSecret, SecretString};
use std::net::IpAddr;

/// Who calls the token endpoint.
#[derive(Debug)]
pub enum Caller {
    /// keyward's own first-party public client (`client_id` absent or `keyward`).
    BuiltIn,
    /// A registered client, authenticated as its kind requires.
    Registered(ClientRecord),
}

impl Caller {
    /// The registered client, `None` for the built-in one.
    pub fn registered(&self) -> Option<&ClientRecord> {
        match self {
            Self::BuiltIn => None,
            Self::Registered(c) => Some(c),
        }
    }
}

/// The client credentials a token request carries.
#[derive(Debug, Default)]
pub struct ClientCredentials {
    /// `client_id`, from the form or the Basic header.
    pub id: Option<String>,
    /// `client_secret`, from either.
    pub secret: Option<SecretString>,
}

/// What the authorization request asked for, once checked.
#[derive(Debug, Clone)]
pub struct CodeRequest {
    /// The `redirect_uri`, as sent (already matched against the client's).
    pub redirect_uri: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The OpenID `nonce`.
    pub nonce: Option<String>,
    /// The scopes.
    pub scope: Scopes,
}

/// The code grant's parameters.
#[derive(Debug)]
pub struct CodeExchange<'a> {
    /// `code`.
    pub code: &'a str,
    /// `redirect_uri`.
    pub redirect_uri: Option<&'a str>,
    /// `code_verifier`.
    pub code_verifier: Option<&'a str>,
}

const BAD_CODE: &str = "the authorization code is invalid, expired or was already used";
const UNKNOWN_CLIENT: &str = "unknown client";

impl TokenService {
    /// Authenticate the caller of the token endpoint (RFC 6749 §2.3): a confidential client
    /// by its secret (`client_secret_basic` or `client_secret_post`), a public client by its
    /// id alone. Failures count against the caller's address.
    ///
    /// `registered_only` is for the code grant. The password and refresh grants ignored a
    /// `client_id` before registered clients existed, so there an id that names no client,
    /// sent without a secret, still means the built-in client.
    pub async fn authenticate_client(
        &self,
        creds: ClientCredentials,
        registered_only: bool,
        ip: Option<IpAddr>,
    ) -> Result<Caller, TokenError> {
        self.admitted(ip)?;
        let lenient = !registered_only && creds.secret.is_none();
        let outcome = match self.check_client(creds).await {
            Err(TokenError::ClientAuthentication(UNKNOWN_CLIENT)) if lenient => Ok(Caller::BuiltIn),
            other => other,
        };
        if matches!(outcome, Err(TokenError::ClientAuthentication(_))) {
            self.auth.throttle().token_failed(ip).await;
        }
        outcome
    }

    async fn check_client(&self, creds: ClientCredentials) -> Result<Caller, TokenError> {
        let id = match creds.id.as_deref() {
            None | Some(CLIENT_ID) if creds.secret.is_none() => return Ok(Caller::BuiltIn),
            None => {
                return Err(TokenError::ClientAuthentication(
                    "a client_secret was sent without a client_id",
                ))
            }
            Some(id) => id,
        };
        if id.len() > 128 || id.chars().any(char::is_control) {
            return Err(TokenError::ClientAuthentication(UNKNOWN_CLIENT));
        }
        let Some(client) = self.clients.client(id).await? else {
            return Err(TokenError::ClientAuthentication(UNKNOWN_CLIENT));
        };
        match (&creds.secret, client.is_confidential()) {
            (Some(secret), true) if client.secret_is(secret.expose_secret()) => {}
            (Some(_), true) => {
                return Err(TokenError::ClientAuthentication(
                    "the client secret is wrong",
                ))
            }
            (None, true) => {
                return Err(TokenError::ClientAuthentication(
                    "this client is confidential: authenticate with client_secret_basic or client_secret_post",
                ))
            }
            (Some(_), false) => {
                return Err(TokenError::ClientAuthentication(
                    "this client is public and has no secret",
                ))
            }
            (None, false) => {}
        }
        Ok(Caller::Registered(client))
    }

    /// Whether `user` must be asked before `client` gets `scope`: never for a first-party
    /// client; else unless an earlier consent covers it.
    pub async fn needs_consent(
        &self,
        client: &ClientRecord,
        user: keyward_core::UserId,
        scope: &Scopes,
    ) -> Result<bool, StoreError> {
        if client.first_party {
            return Ok(false);
        }
        Ok(!self
            .grants
            .consent(user, &client.id)
            .await?
            .is_some_and(|c| c.scope.covers(scope)))
    }

    /// Remember that `user` allowed `client` `scope` (widening an earlier consent).
    pub async fn remember_consent(
        &self,
        client: &ClientRecord,
        user: keyward_core::UserId,
        scope: &Scopes,
    ) -> Result<(), StoreError> {
        let earlier = self.grants.consent(user, &client.id).await?;
        let scope = earlier.map_or_else(|| scope.clone(), |c| c.scope.union(scope));
        self.grants
            .put_consent(&Consent {
                user_id: user,
                client_id: client.id.clone(),
                scope,
                granted_at: self.now(),
            })
            .await?;
        tracing::info!(target: AUDIT, event = "consent_granted", user_id = %user, client_id = %client.id);
        Ok(())
    }

    /// A user's consents with their clients' names (a deleted client's consent is gone).
    pub async fn consents(
        &self,
        user: keyward_core::UserId,
    ) -> Result<Vec<(Consent, String)>, StoreError> {
        let mut out = Vec::new();
        for c in self.grants.consents(user).await? {
            if let Some(client) = self.clients.client(&c.client_id).await? {
                out.push((c, client.name));
            }
        }
        Ok(out)
    }

    /// Withdraw a consent and revoke the client's refresh tokens (and so its access tokens)
    /// for the user. False when there was none.
    pub async fn revoke_consent(
        &self,
        user: keyward_core::UserId,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        let had = keyward_core::oauth::revoke_consent(
            &*self.grants,
            &self.tokens,
            user,
            client_id,
            self.now(),
        )
        .await?;
        if had {
            tracing::info!(target: AUDIT, event = "consent_revoked", user_id = %user, client_id = %client_id);
        }
        Ok(had)
    }

    /// Issue a code for the user of `session` to `client` (the request already checked and,
    /// where needed, consented to). Returns the code; only its hash is stored.
    pub async fn issue_code(
        &self,
        client: &ClientRecord,
        req: &CodeRequest,
        session: &SessionRecord,
    ) -> Result<SessionToken, TokenError> {
        let code = SessionToken::generate().map_err(|_| TokenError::Key(keys::KeyError::Random))?;
        let now = self.now();
        self.grants
            .insert_code(&AuthorizationCode {
                hash: code.hash(),
                family_id: keyward_core::oauth::family_id(session.user_id.shard(), true),
                client_id: client.id.clone(),
                redirect_uri: req.redirect_uri.clone(),
                code_challenge: req.code_challenge.clone(),
                nonce: req.nonce.clone(),
                scope: req.scope.clone(),
                user_id: session.user_id,
                session_id: session.id,
                auth_time: session.created_at,
                amr: session.amr,
                created_at: now,
                expires_at: now + CODE_TTL,
            })
            .await?;
        tracing::info!(target: AUDIT, event = "authorization_code_issued", user_id = %session.user_id, client_id = %client.id, scope = %req.scope);
        Ok(code)
    }

    /// `grant_type=authorization_code`: exchange a code, once, for the client it was issued
    /// to, with the `redirect_uri` of its request and the PKCE verifier of its challenge. A
    /// second presentation revokes what the first issued. Failures count against the
    /// caller's address.
    pub async fn code_grant(
        &self,
        caller: &Caller,
        exchange: CodeExchange<'_>,
        ip: Option<IpAddr>,
    ) -> Result<TokenPair, TokenError> {
        self.admitted(ip)?;
        let outcome = match caller {
            Caller::Registered(client) => self.exchange(client, exchange, ip).await,
            Caller::BuiltIn => Err(TokenError::ClientAuthentication(
                "the authorization code grant needs a registered client's client_id",
            )),
        };
        if matches!(
            outcome,
            Err(TokenError::InvalidCode(_)
                | TokenError::InvalidGrant
                | TokenError::ClientAuthentication(_))
        ) {
            self.auth.throttle().token_failed(ip).await;
        }
        outcome
    }

    async fn exchange(
        &self,
        client: &ClientRecord,
        ex: CodeExchange<'_>,
        ip: Option<IpAddr>,
    ) -> Result<TokenPair, TokenError> {
        // What the request itself lacks is refused before the code is looked at, so a
        // malformed request does not use the code up.
        let Some(redirect_uri) = ex.redirect_uri else {
            return Err(TokenError::InvalidRequest(
                "missing parameter redirect_uri (the one of the authorization request)",
            ));
        };
        let Some(verifier) = ex.code_verifier else {
            return Err(TokenError::InvalidRequest(
                "missing parameter code_verifier (PKCE)",
            ));
        };
        let Some(presented) = SessionToken::parse(ex.code) else {
            return Err(TokenError::InvalidCode(BAD_CODE));
        };
        let hash = presented.hash();
        let now = self.now();
        let code = match self.grants.redeem_code(&hash, now).await? {
            Redeemed::Fresh(code) => code,
            Redeemed::Replayed(family) => {
                self.tokens.revoke_family(family, now).await?;
                metrics::counter!("keyward_code_replays_total").increment(1);
                tracing::warn!(target: AUDIT, event = "authorization_code_replayed", client_id = %client.id, sid = %family, ip = %show_ip(ip));
                return Err(TokenError::InvalidCode(BAD_CODE));
            }
            Redeemed::Invalid => return Err(TokenError::InvalidCode(BAD_CODE)),
        };
        // The code is used up now, whatever follows: a code presented with the wrong binding
        // has leaked, and its rightful client will see its own exchange fail.
        if code.client_id != client.id {
            return Err(TokenError::InvalidCode(
                "the authorization code was issued to another client",
            ));
        }
        if redirect_uri != code.redirect_uri {
            return Err(TokenError::InvalidCode(
                "redirect_uri is not the one of the authorization request",
            ));
        }
        if !pkce_matches(verifier, &code.code_challenge) {
            return Err(TokenError::InvalidCode(
                "code_verifier does not match the code_challenge",
            ));
        }
        let Some(user) = self.auth.users().user_by_id(code.user_id).await? else {
            return Err(TokenError::InvalidCode(BAD_CODE));
        };
        if user.locked {
            return Err(TokenError::InvalidCode(BAD_CODE));
        }
        // A consent withdrawn since the code was issued withdraws the code too.
        if self.needs_consent(client, user.id, &code.scope).await? {
            return Err(TokenError::InvalidCode(
                "the user withdrew the consent this code was issued under",
            ));
        }
        let offline = code.scope.has("offline_access");
        let family = RefreshFamily {
            id: code.family_id,
            user_id: user.id,
            username: user.username.clone(),
            created_at: now,
            // Without offline_access no refresh token is given out; the family only names
            // the access token, so that a replay or a revocation can deny it.
            expires_at: now
                + if offline {
                    self.config.refresh_ttl
                } else {
                    self.config.access_ttl
                },
        };
        let refresh = SessionToken::generate_in(user.id.shard())
            .map_err(|_| TokenError::Key(keys::KeyError::Random))?;
        self.tokens.create_family(&family, &refresh.hash()).await?;
        let grant = Grant {
            family_id: family.id,
            client_id: client.id.clone(),
            user_id: user.id,
            scope: code.scope.clone(),
            created_at: now,
            expires_at: family.expires_at,
        };
        // A replay that raced this exchange marked the code before or after the grant's
        // insert, which looks at the mark in the same statement: before, this exchange
        // withdraws its own family; after, the replay found the family in place and revoked it.
        if !self.grants.insert_grant(&grant, &hash).await? {
            self.tokens.revoke_family(family.id, now).await?;
            return Err(TokenError::InvalidCode(BAD_CODE));
        }
        let scope = code.scope.to_string();
        let (access_token, expires_in) =
            self.issue_for(&family, Some(client), Some(&code.scope))?;
        let id_token = if code.scope.has("openid") {
            Some(self.id_token(&code, &user, &access_token)?)
        } else {
            None
        };
        metrics::counter!("keyward_tokens_issued_total", "grant" => "authorization_code")
            .increment(1);
        tracing::info!(target: AUDIT, event = "token_granted", grant = "authorization_code", user_id = %user.id, sid = %family.id, client_id = %client.id, ip = %show_ip(ip));
        Ok(TokenPair {
            access_token,
            expires_in,
            refresh_token: offline.then_some(refresh),
            scope: Some(scope),
            id_token,
        })
    }

    fn id_token(
        &self,
        code: &AuthorizationCode,
        user: &UserRecord,
        access_token: &str,
    ) -> Result<String, TokenError> {
        let ring = self.keyring();
        let key = ring
            .current(keys::ID_TOKEN_ALG)
            .ok_or(TokenError::NoSigningKey)?;
        let now = self.now();
        let email = code
            .scope
            .has("email")
            .then_some(())
            .and(user.email.clone());
        let claims = id::IdClaims {
            iss: self.config.issuer.clone(),
            sub: user.id.to_string(),
            aud: code.client_id.clone(),
            exp: unix(now + self.config.access_ttl),
            iat: unix(now),
            auth_time: unix(code.auth_time),
            nonce: code.nonce.clone(),
            at_hash: Some(id::at_hash(access_token)),
            amr: code.amr.methods().iter().map(|m| (*m).to_owned()).collect(),
            sid: code.session_id.to_string(),
            azp: code.client_id.clone(),
            preferred_username: code.scope.has("profile").then(|| user.username.clone()),
            email_verified: email.as_ref().map(|_| user.email_verified),
            email,
        };
        id::sign(key, &claims).map_err(TokenError::Sign)
    }

    /// Whether a bearer token may act on the user's account (`/v1/me`, sessions, forward
    /// auth): tokens of the built-in client and of first-party clients may; a third-party
    /// client's token is for `/oauth/userinfo`, within its scopes.
    pub async fn grants_account_access(
        &self,
        claims: &crate::AccessClaims,
    ) -> Result<bool, StoreError> {
        if claims.client_id == CLIENT_ID {
            return Ok(true);
        }
        if let Some(known) = self.first_party.get(&claims.client_id) {
            return Ok(known);
        }
        let first_party = self
            .clients
            .client(&claims.client_id)
            .await?
            .is_some_and(|c| c.first_party);
        self.first_party
            .insert(claims.client_id.clone(), first_party);
        Ok(first_party)
    }

    /// The consent form's token: binds an answer to the browser session that was shown the
    /// page and to the request it was shown for (client, redirect URI, scopes), so that no
    /// other page, not even one of an allowed origin, can post an answer for the user.
    pub fn consent_token(
        &self,
        session: SessionId,
        client_id: &str,
        redirect_uri: &str,
        scope: &Scopes,
    ) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let message = format!("{session}\n{client_id}\n{redirect_uri}\n{scope}");
        URL_SAFE_NO_PAD.encode(keyward_core::secret::hmac_sha256(
            &self.consent_key,
            message.as_bytes(),
        ))
    }

    /// Whether `presented` is [`TokenService::consent_token`] of this request (constant-time).
    pub fn consent_token_ok(
        &self,
        presented: &str,
        session: SessionId,
        client_id: &str,
        redirect_uri: &str,
        scope: &Scopes,
    ) -> bool {
        use subtle::ConstantTimeEq;
        let expected = self.consent_token(session, client_id, redirect_uri, scope);
        expected.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    /// What an `id_token_hint` of ours says; `None` when it is not one.
    pub fn id_token_hint(&self, token: &str) -> Option<id::IdHint> {
        id::verify_hint(&self.keyring(), token, &self.config.issuer)
    }
}
