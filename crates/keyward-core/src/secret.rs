//! Secrets: session tokens and passwords. Neither is `Serialize`, and `Debug` never prints them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

use crate::ids::Shard;

/// Bytes of entropy in a session token: 256 bits from the OS CSPRNG.
pub const TOKEN_BYTES: usize = 32;
/// Bytes of a token: the random part and a 2-byte routing nonce.
const ENCODED_BYTES: usize = TOKEN_BYTES + 2;
/// Length of an encoded token (base64url without padding of 34 bytes).
pub const TOKEN_CHARS: usize = 46;
/// Length of tokens minted before routing nonces (32 bytes), still accepted.
const LEGACY_TOKEN_CHARS: usize = 43;

/// The secret a client presents (the cookie value). Only its [`TokenHash`] is ever stored.
#[derive(Clone)]
pub struct SessionToken(String);

impl SessionToken {
    /// A fresh token of 256 bits from the operating system's CSPRNG, in no particular shard.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; ENCODED_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// A fresh token of 256 bits from the operating system's CSPRNG whose hash lies in `shard`
    /// (see [`TokenHash::shard`]): the random part is followed by the first 2-byte nonce that
    /// puts the hash there (256 tries on average, about 40 µs). The nonce is chosen, not
    /// random, so the token holds exactly the 256 random bits.
    pub fn generate_in(shard: Shard) -> Result<Self, getrandom::Error> {
        let mut secret = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut secret)?;
        Ok(Self::routed(&secret, shard))
    }

    /// A token derived from `input` under `key` (HMAC-SHA256), in `shard`: as unguessable as a
    /// random one to anyone without the key, and the same every time for the same input.
    pub fn derive_in(key: &[u8; 32], input: &str, shard: Shard) -> Self {
        Self::routed(&hmac_sha256(key, input.as_bytes()), shard)
    }

    fn routed(secret: &[u8; TOKEN_BYTES], shard: Shard) -> Self {
        let mut bytes = [0u8; ENCODED_BYTES];
        bytes
            .iter_mut()
            .zip(secret)
            .for_each(|(to, from)| *to = *from);
        let mut encoded = String::with_capacity(TOKEN_CHARS);
        for nonce in 0..=u16::MAX {
            let [hi, lo] = nonce.to_be_bytes();
            bytes[TOKEN_BYTES] = hi;
            bytes[TOKEN_BYTES + 1] = lo;
            encoded.clear();
            URL_SAFE_NO_PAD.encode_string(bytes, &mut encoded);
            if Sha256::digest(encoded.as_bytes()).first() == Some(&shard) {
                break;
            }
        }
        // All 65,536 nonces missing the shard has probability (255/256)^65536, about 10^-112;
        // the last candidate would still be a valid token, only in another shard.
        Self(encoded)
    }

    /// Accept a token presented by a client, if it has the shape of one.
    /// Anything else (wrong length, other alphabet) can never match and is refused early.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = (raw.len() == TOKEN_CHARS || raw.len() == LEGACY_TOKEN_CHARS)
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Self(raw.to_owned()))
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
    /// The SHA-256 of a presented secret (a client secret), for comparison with a stored one.
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Rebuild from stored bytes; `None` when the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// The 32 bytes, for a store's key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The shard of the token this is the hash of: its first byte. Tokens minted for a user
    /// are drawn so that this equals [`UserId::shard`](crate::UserId::shard).
    pub fn shard(&self) -> Shard {
        self.0[0]
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
        assert_eq!(URL_SAFE_NO_PAD.decode(a.expose()).unwrap().len(), 34);
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
        assert!(SessionToken::parse(&"a".repeat(47)).is_none());
        assert!(SessionToken::parse(&"a".repeat(46)).is_some());
        assert!(SessionToken::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_none());
    }

    #[test]
    fn routed_tokens_land_in_their_shard_and_keep_256_random_bits() {
        for shard in [0u8, 7, 255] {
            let a = SessionToken::generate_in(shard).unwrap();
            let b = SessionToken::generate_in(shard).unwrap();
            assert_eq!(a.hash().shard(), shard);
            assert_eq!(a.expose().len(), TOKEN_CHARS);
            assert_ne!(a.expose(), b.expose());
            // The random part differs; only the 2-byte nonce is chosen.
            let (ra, rb) = (
                URL_SAFE_NO_PAD.decode(a.expose()).unwrap(),
                URL_SAFE_NO_PAD.decode(b.expose()).unwrap(),
            );
            assert_ne!(ra.get(..32), rb.get(..32));
        }
        let key = [9u8; 32];
        let d1 = SessionToken::derive_in(&key, "input", 42);
        let d2 = SessionToken::derive_in(&key, "input", 42);
        assert_eq!(d1.expose(), d2.expose());
        assert_eq!(d1.hash().shard(), 42);
        assert_ne!(
            SessionToken::derive_in(&key, "other", 42).expose(),
            d1.expose()
        );
    }

    #[test]
    fn debug_never_prints_secrets() {
        let t = SessionToken::generate().unwrap();
        assert!(!format!("{t:?}").contains(t.expose()));
        let p = Password::new("hunter2-hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
