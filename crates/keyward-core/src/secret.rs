//! Secrets: session tokens and passwords. Neither is `Serialize`, and `Debug` never prints them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Bytes of entropy in a session token: 256 bits from the OS CSPRNG.
pub const TOKEN_BYTES: usize = 32;
/// Length of an encoded token (base64url without padding of [`TOKEN_BYTES`]).
pub const TOKEN_CHARS: usize = 43;

/// The secret a client presents (the cookie value). Only its [`TokenHash`] is ever stored.
#[derive(Clone)]
pub struct SessionToken(String);

impl SessionToken {
    /// A fresh token of 256 bits from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accept a token presented by a client, if it has the shape of one.
    /// Anything else (wrong length, other alphabet) can never match and is refused early.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.len() == TOKEN_CHARS
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Self(raw.to_owned()))
    }

    /// A token derived from `input` under `key` (HMAC-SHA256): as unguessable as a random one
    /// to anyone without the key, and the same every time for the same input.
    pub fn derive(key: &[u8; 32], input: &str) -> Self {
        Self(URL_SAFE_NO_PAD.encode(hmac_sha256(key, input.as_bytes())))
    }

    /// The value to put in the cookie. Call only where the token leaves for the client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 of the token: the only form a store keeps and looks up by.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// HMAC-SHA256.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    // HMAC accepts keys of any length; the error case cannot happen.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0u8; 32],
    }
}

/// SHA-256 of a [`SessionToken`]. Equality is constant-time.
#[derive(Clone, Copy, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Rebuild from stored bytes; `None` when the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// The 32 bytes, for a store's key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, for stores that key by string.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not the secret, but there is no reason to print it whole.
        let hex = self.to_hex();
        write!(f, "TokenHash({}…)", hex.get(..8).unwrap_or(""))
    }
}

/// A password as received from a client. Redacted in `Debug`; never serialized.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Wrap a password received from a client.
    pub fn new(raw: String) -> Self {
        Self(raw)
    }

    /// The password's characters, for hashing and policy checks only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_256_bits_and_differ() {
        let a = SessionToken::generate().unwrap();
        let b = SessionToken::generate().unwrap();
        assert_eq!(a.expose().len(), TOKEN_CHARS);
        assert_eq!(URL_SAFE_NO_PAD.decode(a.expose()).unwrap().len(), 32);
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn hash_is_sha256_of_the_token() {
        let t = SessionToken::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let expected: [u8; 32] = Sha256::digest(t.expose().as_bytes()).into();
        assert_eq!(t.hash().as_bytes(), &expected);
    }

    #[test]
    fn parse_refuses_what_cannot_be_a_token() {
        assert!(SessionToken::parse("short").is_none());
        assert!(SessionToken::parse(&"a".repeat(44)).is_none());
        assert!(SessionToken::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_none());
    }

    #[test]
    fn debug_never_prints_secrets() {
        let t = SessionToken::generate().unwrap();
        assert!(!format!("{t:?}").contains(t.expose()));
        let p = Password::new("hunter2-hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
