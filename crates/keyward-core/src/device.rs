//! Device cookies (OWASP "Slow down online guessing attacks with device cookies"): a
//! successful sign-in gives the browser a long-lived cookie bound to the account, and a later
//! sign-in that presents it is throttled by that device's own failures, so failures sent from
//! elsewhere cannot lock the owner out of a device they have used before.
//!
//! The cookie is `<nonce>.<expiry>.<mac>`: 256 random bits from the OS, its expiry (Unix
//! seconds), and an HMAC-SHA256 under the device key of both and of the account. Nothing is
//! stored: any node with the same key verifies it. It authenticates nothing by itself.

use crate::secret::hmac_sha256;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

/// How long a device cookie is honoured.
pub const DEVICE_COOKIE_TTL: Duration = Duration::days(365);

/// Longest cookie value looked at.
const MAX_LEN: usize = 128;

/// The key that signs device cookies (every node of a fleet needs the same one).
#[derive(Clone)]
pub struct DeviceKey([u8; 32]);

impl DeviceKey {
    /// A key from 32 secret bytes (the server derives them from its key-encryption key).
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A random key: device cookies then last as long as the process.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k)?;
        Ok(Self(k))
    }

    fn mac(&self, account: &str, nonce: &[u8], expires: i64) -> [u8; 32] {
        let mut message = b"keyward device cookie v1\0".to_vec();
        message.extend_from_slice(account.to_lowercase().as_bytes());
        message.push(0);
        message.extend_from_slice(nonce);
        message.extend_from_slice(&expires.to_be_bytes());
        hmac_sha256(&self.0, &message)
    }

    /// A new cookie for `account`, valid until `now` + [`DEVICE_COOKIE_TTL`].
    pub fn issue(
        &self,
        account: &str,
        now: OffsetDateTime,
    ) -> Result<DeviceCookie, getrandom::Error> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce)?;
        let expires = (now + DEVICE_COOKIE_TTL).unix_timestamp();
        let tag = self.mac(account, &nonce, expires);
        Ok(DeviceCookie(format!(
            "{}.{expires}.{}",
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(tag)
        )))
    }

    /// The device behind `cookie` when it is a valid, unexpired cookie of `account`
    /// (compared in constant time).
    pub fn verify(
        &self,
        account: &str,
        cookie: &DeviceCookie,
        now: OffsetDateTime,
    ) -> Option<DeviceId> {
        let mut parts = cookie.0.split('.');
        let (nonce, expires, tag) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let nonce = URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()
            .filter(|n| n.len() == 32)?;
        let expires: i64 = expires.parse().ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let expected = self.mac(account, &nonce, expires);
        if !bool::from(expected.as_slice().ct_eq(tag.as_slice())) {
            return None;
        }
        if now.unix_timestamp() >= expires {
            return None;
        }
        Some(DeviceId(Sha256::digest(&nonce).into()))
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKey(<redacted>)")
    }
}

/// A device cookie's value as sent by or to a client. Redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCookie(String);

impl DeviceCookie {
    /// A presented value, if it could be one (length and alphabet only; [`DeviceKey::verify`]
    /// decides).
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.len() <= MAX_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        ok.then(|| Self(raw.to_owned()))
    }

    /// The value for the `Set-Cookie` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceCookie(<redacted>)")
    }
}

/// A known device: the SHA-256 of its cookie's nonce, which names its throttle bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceId(pub(crate) [u8; 32]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_bound_to_its_account_key_and_expiry() {
        let key = DeviceKey::new([7; 32]);
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let c = key.issue("Alice", now).unwrap();
        let id = key.verify("alice", &c, now).unwrap();
        assert_eq!(key.verify("ALICE", &c, now + Duration::days(364)), Some(id));
        assert_eq!(key.verify("bob", &c, now), None, "another account");
        assert_eq!(
            key.verify("alice", &c, now + DEVICE_COOKIE_TTL),
            None,
            "expired"
        );
        assert_eq!(
            DeviceKey::new([8; 32]).verify("alice", &c, now),
            None,
            "another key"
        );
        let other = key.issue("alice", now).unwrap();
        assert_ne!(
            key.verify("alice", &other, now),
            Some(id),
            "each cookie is its own device"
        );
        // Tampering with the expiry breaks the MAC.
        let parts: Vec<&str> = c.expose().split('.').collect();
        let forged =
            DeviceCookie::parse(&format!("{}.{}.{}", parts[0], i64::MAX, parts[2])).unwrap();
        assert_eq!(key.verify("alice", &forged, now), None);
        assert!(DeviceCookie::parse("bad value!").is_none());
        assert!(DeviceCookie::parse(&"a".repeat(200)).is_none());
        assert!(!format!("{c:?}").contains(c.expose()));
        assert!(!format!("{key:?}").contains('7'));
    }
}
