//! OpenID Connect ID tokens (Core 1.0 §2): signed RS256 with the key ring's newest RS256
//! key, `typ: JWT`, so an ID token is never accepted as an access token (whose `typ` is
//! `at+jwt`), and the `id_token_hint` of RP-initiated logout, verified against our own keys.

use crate::keys::{Keyring, SigningKey, ID_TOKEN_ALG};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{decode, decode_header, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The claims of an ID token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdClaims {
    /// Issuer.
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// The client id.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// When the user authenticated (Unix seconds).
    pub auth_time: i64,
    /// The authorization request's `nonce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Left half of the access token's SHA-256, base64url (§3.1.3.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_hash: Option<String>,
    /// How the user authenticated (RFC 8176).
    #[serde(default)]
    pub amr: Vec<String>,
    /// The browser session at keyward.
    pub sid: String,
    /// The client the token is for (the single audience).
    pub azp: String,
    /// With `profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// With `email`, when the account has an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// With `email`, when the account has an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
}

/// `typ` of ID tokens.
pub const TYP: &str = "JWT";

/// `at_hash` of an access token: the left half of its SHA-256, base64url.
pub fn at_hash(access_token: &str) -> String {
    let digest = Sha256::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.get(..16).unwrap_or_default())
}

/// Sign an ID token with `key` (an RS256 key).
pub fn sign(key: &SigningKey, claims: &IdClaims) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(key.alg_jose());
    header.typ = Some(TYP.to_owned());
    header.kid = Some(key.kid.clone());
    key.sign_jws(&header, claims)
}

/// What an `id_token_hint` says: the client it was issued to and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdHint {
    /// `aud`: the client.
    pub client_id: String,
    /// `sub`: the user.
    pub sub: String,
    /// `sid`: the browser session.
    pub sid: String,
}

#[derive(Deserialize)]
struct HintClaims {
    sub: String,
    aud: String,
    sid: String,
}

/// Verify an ID token we issued, as an `id_token_hint`: our own RS256 key by `kid`, the
/// signature, `iss` and `typ`. An expired token is still a good hint (RP-initiated logout
/// 1.0 §2: the OP should accept it), so `exp` is not checked. `None` when it is not ours.
pub fn verify_hint(keys: &Keyring, token: &str, issuer: &str) -> Option<IdHint> {
    if token.len() > 16 * 1024 {
        return None;
    }
    let header = decode_header(token).ok()?;
    if header.crit.is_some() || header.typ.as_deref() != Some(TYP) {
        return None;
    }
    let key = keys.get(header.kid.as_deref()?)?;
    if key.alg != ID_TOKEN_ALG || header.alg != key.alg_jose() {
        return None;
    }
    let mut v = Validation::new(key.alg_jose());
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims = ["iss", "sub", "aud"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    v.set_issuer(&[issuer]);
    let claims = decode::<HintClaims>(token, &key.decoding, &v).ok()?.claims;
    Some(IdHint {
        client_id: claims.aud,
        sub: claims.sub,
        sid: claims.sid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_is_the_left_half_of_sha256() {
        // OpenID Connect Core 1.0, A.3 (RS256): the access token and at_hash of its example.
        assert_eq!(
            at_hash("jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
    }
}
