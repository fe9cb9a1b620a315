//! Access tokens: JWS-signed JWTs shaped by RFC 9068 (`typ: at+jwt`, `kid` in the header).
//!
//! Verification follows RFC 8725: the header must name a `kid` of our own key set, the
//! algorithm must be that key's one algorithm (so `none`, HS256-with-a-public-key and any
//! other substitution fail), `typ` must be `at+jwt`, a `crit` header is refused,
//! `jku`/`jwk`/`x5u`/`x5c` are never used, and `exp`, `nbf`, `iss` and `aud` are checked, time
//! against the injected clock.

use crate::keys::{Keyring, SigningKey};
use jsonwebtoken::{decode, decode_header, encode, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims of a keyward access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: the user id.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Token id, for the deny list.
    pub jti: String,
    /// The refresh-token family it was issued from.
    pub sid: String,
    /// RFC 9068 requires it; keyward has one public client.
    pub client_id: String,
    /// The user's name, so resource servers need no look-up.
    /// Absent from tokens of a third-party client granted no `profile` scope.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preferred_username: String,
    /// RFC 9068 `scope`: the scopes granted to a registered client (tokens of the built-in
    /// client have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The media type in the `typ` header.
pub const TYP: &str = "at+jwt";

/// Longest token accepted for verification.
const MAX_LEN: usize = 8 * 1024;

/// Why a token was refused (kept internal: every case answers the same 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// Not a JWS, or too long.
    #[error("malformed")]
    Malformed,
    /// `typ` is not `at+jwt`.
    #[error("wrong typ")]
    WrongType,
    /// No `kid`, or not one of ours.
    #[error("unknown key")]
    UnknownKey,
    /// `alg` is not the key's algorithm.
    #[error("algorithm mismatch")]
    AlgorithmMismatch,
    /// The header names critical extensions (`crit`), none of which keyward understands.
    #[error("unsupported critical header")]
    Critical,
    /// Signature, issuer, audience or claim shape.
    #[error("invalid")]
    Invalid,
    /// Past `exp`.
    #[error("expired")]
    Expired,
    /// Before `nbf`.
    #[error("not yet valid")]
    NotYetValid,
}

/// Sign claims with a key.
pub fn sign(
    key: &SigningKey,
    claims: &AccessClaims,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(key.alg_jose());
    header.typ = Some(TYP.to_owned());
    header.kid = Some(key.kid.clone());
    key.sign_jws(&header, claims)
}

/// Sign with a `crit` header: for tests that check such tokens are refused.
#[doc(hidden)]
pub fn sign_with_crit(
    key: &SigningKey,
    claims: &AccessClaims,
    crit: Vec<String>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(key.alg_jose());
    header.typ = Some(TYP.to_owned());
    header.kid = Some(key.kid.clone());
    header.crit = Some(crit);
    encode(&header, claims, &key.encoding)
}

/// The `kid` in a token's header, if it has one.
pub fn kid_of(token: &str) -> Option<String> {
    decode_header(token).ok()?.kid
}

/// Verify a token against the keyring, the expected issuer and audience, at `now` (Unix s).
pub fn verify(
    keys: &Keyring,
    token: &str,
    issuer: &str,
    audience: &str,
    now: i64,
) -> Result<AccessClaims, Rejected> {
    if token.len() > MAX_LEN {
        return Err(Rejected::Malformed);
    }
    let header = decode_header(token).map_err(|_| Rejected::Malformed)?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case(TYP) || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(Rejected::WrongType);
    }
    // RFC 7515 §4.1.11: a recipient that does not understand a listed extension must refuse
    // the token, and keyward understands none.
    if header.crit.is_some() {
        return Err(Rejected::Critical);
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| keys.get(kid))
        .ok_or(Rejected::UnknownKey)?;
    if header.alg != key.alg_jose() {
        return Err(Rejected::AlgorithmMismatch);
    }
    let mut v = Validation::new(key.alg_jose());
    // Time is checked below against the injected clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    v.required_spec_claims = ["exp", "nbf", "iss", "aud", "sub"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    let claims = decode::<AccessClaims>(token, &key.decoding, &v)
        .map_err(|_| Rejected::Invalid)?
        .claims;
    if now >= claims.exp {
        return Err(Rejected::Expired);
    }
    // A little leeway for clocks of different nodes; never for expiry.
    if claims.nbf > now + 5 {
        return Err(Rejected::NotYetValid);
    }
    Ok(claims)
}

impl SigningKey {
    pub(crate) fn alg_jose(&self) -> jsonwebtoken::Algorithm {
        match self.alg {
            crate::keys::SigningAlg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            crate::keys::SigningAlg::ES256 => jsonwebtoken::Algorithm::ES256,
            crate::keys::SigningAlg::RS256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}
