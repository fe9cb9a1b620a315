//! Signing keys: generation, sealing at rest, the keyring that signs and verifies, and JWKS.
//!
//! Private keys are PKCS#8 documents sealed with AES-256-GCM under a key-encryption key
//! (KEK) that never enters the database, so a copy of the database alone yields no key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use keyward_core::StoredKey;
use std::fmt;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// Errors of key handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The OS random source failed.
    #[error("random source failed")]
    Random,
    /// Key generation or encoding failed.
    #[error("key generation failed: {0}")]
    Generate(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A sealed key could not be opened: wrong key-encryption key, or tampered data.
    #[error("a signing key could not be decrypted (is the key-encryption key the one it was sealed with?)")]
    Unseal,
    /// A stored key is not usable.
    #[error("stored key {kid} is invalid: {why}")]
    Invalid {
        /// The key id.
        kid: String,
        /// What is wrong.
        why: String,
    },
}

/// The signing algorithms keyward offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// Ed25519 (the default).
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    RS256,
}

impl SigningAlg {
    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
        }
    }

    /// Parse a JOSE name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(Self::EdDSA),
            "ES256" => Some(Self::ES256),
            "RS256" => Some(Self::RS256),
            _ => None,
        }
    }

    fn jose(self) -> Algorithm {
        match self {
            Self::EdDSA => Algorithm::EdDSA,
            Self::ES256 => Algorithm::ES256,
            Self::RS256 => Algorithm::RS256,
        }
    }
}

/// The key-encryption key: 32 bytes that seal private keys at rest.
#[derive(Clone)]
pub struct Kek([u8; 32]);

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// A new random KEK.
    pub fn generate() -> Result<Self, KeyError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|_| KeyError::Random)?;
        Ok(Self(k))
    }

    /// From its base64url text form (43 characters).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok().map(Self)
    }

    /// The base64url text form.
    pub fn to_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    fn cipher(&self) -> Result<Aes256Gcm, KeyError> {
        Aes256Gcm::new_from_slice(&self.0).map_err(|_| KeyError::Unseal)
    }

    /// A 32-byte key for another purpose, derived with HMAC-SHA256 under a fixed label, so the
    /// KEK itself is used only for sealing.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        keyward_core::secret::hmac_sha256(&self.0, label)
    }

    /// Seal `plain` (bound to `kid`): nonce ‖ ciphertext.
    pub fn seal(&self, kid: &str, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| KeyError::Random)?;
        let sealed = self
            .cipher()?
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Unseal)?;
        Ok([nonce.as_slice(), sealed.as_slice()].concat())
    }

    /// Open what [`Kek::seal`] sealed for `kid`.
    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let (nonce, body) = sealed.split_at_checked(12).ok_or(KeyError::Unseal)?;
        self.cipher()?
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Unseal)
    }
}

/// The KEK seals TOTP secrets too, bound to their own context (`totp:<user>`; a `kid` is
/// base64url and never looks like one).
impl keyward_core::Sealer for Kek {
    fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, keyward_core::mfa::SealError> {
        Kek::seal(self, context, plain).map_err(|_| keyward_core::mfa::SealError)
    }
    fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, keyward_core::mfa::SealError> {
        Kek::open(self, context, sealed).map_err(|_| keyward_core::mfa::SealError)
    }
}

/// A fresh key id: 128 random bits, base64url.
fn new_kid() -> Result<String, KeyError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|_| KeyError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// Generate a key for `alg` and seal it: what `keyward keys rotate` stores.
pub fn generate(alg: SigningAlg, kek: &Kek, now: OffsetDateTime) -> Result<StoredKey, KeyError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    fn gen(e: impl std::error::Error + Send + Sync + 'static) -> KeyError {
        KeyError::Generate(Box::new(e))
    }
    let pem: String = match alg {
        SigningAlg::EdDSA => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|_| KeyError::Random)?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            key.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                .map_err(gen)?
                .to_string()
        }
        SigningAlg::ES256 => {
            use p256::pkcs8::EncodePrivateKey as _;
            let key = p256::SecretKey::random(&mut rand_core::OsRng);
            key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                .map_err(gen)?
                .to_string()
        }
        SigningAlg::RS256 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).map_err(gen)?;
            key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(gen)?
                .to_string()
        }
    };
    let kid = new_kid()?;
    let sealed_private = kek.seal(&kid, pem.as_bytes())?;
    Ok(StoredKey {
        kid,
        alg: alg.name().to_owned(),
        sealed_private,
        created_at: now,
    })
}

/// A usable key: it signs (if current) and verifies.
pub struct SigningKey {
    /// Key id.
    pub kid: String,
    /// Its one algorithm: tokens claiming another are refused.
    pub alg: SigningAlg,
    /// When it was made.
    pub created_at: OffsetDateTime,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
    /// An RS256 key parsed once for `ring`, which signs it (jsonwebtoken's RustCrypto backend
    /// parses the key and signs in pure Rust on every token: 1.4 ms, docs/benchmarks.md).
    rsa: Option<Arc<ring::signature::RsaKeyPair>>,
    /// The public JWK.
    pub jwk: Jwk,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Unseal and load a stored key.
    pub fn load(stored: &StoredKey, kek: &Kek) -> Result<Self, KeyError> {
        let invalid = |why: String| KeyError::Invalid {
            kid: stored.kid.clone(),
            why,
        };
        let alg = SigningAlg::parse(&stored.alg)
            .ok_or_else(|| invalid(format!("unknown algorithm {}", stored.alg)))?;
        let pem = kek.open(&stored.kid, &stored.sealed_private)?;
        let (encoding, params) = match alg {
            SigningAlg::EdDSA => {
                use ed25519_dalek::pkcs8::DecodePrivateKey as _;
                let text = std::str::from_utf8(&pem).map_err(|e| invalid(e.to_string()))?;
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(text)
                    .map_err(|e| invalid(e.to_string()))?;
                let enc = EncodingKey::from_ed_pem(&pem).map_err(|e| invalid(e.to_string()))?;
                let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
                let params = AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                    key_type: OctetKeyPairType::OctetKeyPair,
                    curve: EllipticCurve::Ed25519,
                    x,
                });
                (enc, Some(params))
            }
            SigningAlg::ES256 => (
                EncodingKey::from_ec_pem(&pem).map_err(|e| invalid(e.to_string()))?,
                None,
            ),
            SigningAlg::RS256 => (
                EncodingKey::from_rsa_pem(&pem).map_err(|e| invalid(e.to_string()))?,
                None,
            ),
        };
        let rsa = match alg {
            SigningAlg::RS256 => {
                use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
                let text = std::str::from_utf8(&pem).map_err(|e| invalid(e.to_string()))?;
                let der = rsa::RsaPrivateKey::from_pkcs8_pem(text)
                    .and_then(|k| k.to_pkcs8_der())
                    .map_err(|e| invalid(e.to_string()))?;
                let pair = ring::signature::RsaKeyPair::from_pkcs8(der.as_bytes())
                    .map_err(|e| invalid(e.to_string()))?;
                Some(Arc::new(pair))
            }
            _ => None,
        };
        let mut jwk = match params {
            Some(algorithm) => Jwk {
                common: CommonParameters::default(),
                algorithm,
            },
            None => {
                Jwk::from_encoding_key(&encoding, alg.jose()).map_err(|e| invalid(e.to_string()))?
            }
        };
        jwk.common.key_id = Some(stored.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(match alg {
            SigningAlg::EdDSA => KeyAlgorithm::EdDSA,
            SigningAlg::ES256 => KeyAlgorithm::ES256,
            SigningAlg::RS256 => KeyAlgorithm::RS256,
        });
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            kid: stored.kid.clone(),
            alg,
            created_at: stored.created_at,
            encoding,
            decoding,
            rsa,
            jwk,
        })
    }

    /// A compact JWS of `claims` under `header` (whose `alg` is this key's): RS256 through
    /// `ring` with the key parsed at load, the other algorithms through `jsonwebtoken`.
    pub(crate) fn sign_jws<T: serde::Serialize>(
        &self,
        header: &jsonwebtoken::Header,
        claims: &T,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        use jsonwebtoken::errors::{new_error, ErrorKind};
        let Some(pair) = &self.rsa else {
            return jsonwebtoken::encode(header, claims, &self.encoding);
        };
        let part = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let head =
            serde_json::to_vec(header).map_err(|e| new_error(ErrorKind::Json(Arc::new(e))))?;
        let body =
            serde_json::to_vec(claims).map_err(|e| new_error(ErrorKind::Json(Arc::new(e))))?;
        let message = format!("{}.{}", part(&head), part(&body));
        let mut signature = vec![0u8; pair.public().modulus_len()];
        pair.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            message.as_bytes(),
            &mut signature,
        )
        .map_err(|_| new_error(ErrorKind::RsaFailedSigning))?;
        Ok(format!("{message}.{}", part(&signature)))
    }
}

/// The keys in use: the newest signs; older ones verify until every token they signed has
/// expired (the newer key's age exceeds the access-token lifetime), then they retire.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    keys: Vec<Arc<SigningKey>>,
}

impl Keyring {
    /// A keyring of these keys (any order), dropping those retired at `now` for access
    /// tokens of `access_alg` ([`is_retired`]).
    pub fn new(
        mut keys: Vec<SigningKey>,
        now: OffsetDateTime,
        access_ttl: Duration,
        access_alg: SigningAlg,
    ) -> Self {
        keys.sort_by_key(|k| k.created_at);
        let ages: Vec<(SigningAlg, OffsetDateTime)> =
            keys.iter().map(|k| (k.alg, k.created_at)).collect();
        let keys = keys
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !is_retired(&ages, *i, now, access_ttl, access_alg))
            .map(|(_, k)| Arc::new(k))
            .collect();
        Self { keys }
    }

    /// The key that signs new tokens of this algorithm: the newest of it.
    pub fn current(&self, alg: SigningAlg) -> Option<&Arc<SigningKey>> {
        self.keys.iter().rev().find(|k| k.alg == alg)
    }

    /// A key by id, among those still valid.
    pub fn get(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// Every valid key, oldest first.
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// The public JWK set.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|k| k.jwk.clone()).collect(),
        }
    }
}

/// ID tokens are signed RS256 (every OpenID client supports it), so an RS256 key is always
/// kept beside the access-token keys of another algorithm. Keys form two chains that rotate
/// together: RS256 keys (which sign ID tokens, and access tokens when the access algorithm is
/// RS256) and the others. A key retires when a newer key of its chain has been signing for
/// longer than any token lives.
pub const ID_TOKEN_ALG: SigningAlg = SigningAlg::RS256;

fn chain(alg: SigningAlg) -> bool {
    alg == ID_TOKEN_ALG
}

/// The keys a rotation makes for access-token algorithm `alg`: a key of it and, unless it is
/// RS256, an RS256 key for ID tokens.
pub fn generate_set(
    alg: SigningAlg,
    kek: &Kek,
    now: OffsetDateTime,
) -> Result<Vec<StoredKey>, KeyError> {
    let mut set = vec![generate(alg, kek, now)?];
    if alg != ID_TOKEN_ALG {
        set.push(generate(ID_TOKEN_ALG, kek, now)?);
    }
    Ok(set)
}

/// The algorithm and creation of stored keys (sorted by creation), as [`is_retired`] reads
/// them; a key of an unknown algorithm counts as an access-token key.
pub fn ages(stored: &[StoredKey]) -> Vec<(SigningAlg, OffsetDateTime)> {
    stored
        .iter()
        .map(|k| {
            (
                SigningAlg::parse(&k.alg).unwrap_or(SigningAlg::EdDSA),
                k.created_at,
            )
        })
        .collect()
}

/// Whether key `i` of `keys` (algorithm and creation, sorted by creation) is retired at
/// `now`: a newer key of its chain has been signing for longer than any token lives. When
/// the access-token algorithm `access_alg` is RS256, the other chain is no longer made, and
/// its keys retire the same way once a newer key of `access_alg` has signed that long.
pub fn is_retired(
    keys: &[(SigningAlg, OffsetDateTime)],
    i: usize,
    now: OffsetDateTime,
    access_ttl: Duration,
    access_alg: SigningAlg,
) -> bool {
    let Some((alg, created)) = keys.get(i) else {
        return false;
    };
    keys.iter().skip(i + 1).any(|(a, c)| {
        let supersedes = chain(*a) == chain(*alg) || (*a == access_alg && !chain(*alg));
        supersedes && c >= created && *c + access_ttl <= now
    })
}

/// Whether key `i` of `keys` (as for [`is_retired`]) is the newest of its chain.
pub fn is_newest(keys: &[(SigningAlg, OffsetDateTime)], i: usize) -> bool {
    keys.get(i).is_some_and(|(alg, _)| {
        !keys
            .iter()
            .skip(i + 1)
            .any(|(a, _)| chain(*a) == chain(*alg))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_binding() {
        let kek = Kek::generate().unwrap();
        let sealed = kek.seal("kid-1", b"secret").unwrap();
        assert_eq!(kek.open("kid-1", &sealed).unwrap(), b"secret");
        assert!(kek.open("kid-2", &sealed).is_err(), "bound to its kid");
        assert!(
            Kek::generate().unwrap().open("kid-1", &sealed).is_err(),
            "needs the right KEK"
        );
        assert!(kek.open("kid-1", &sealed[..5]).is_err());
        assert!(!String::from_utf8_lossy(&sealed).contains("secret"));
        let text = kek.to_text();
        assert_eq!(Kek::parse(&text).unwrap().0, kek.0);
        assert!(Kek::parse("short").is_none());
    }

    #[test]
    fn every_algorithm_generates_and_loads() {
        let kek = Kek::generate().unwrap();
        let now = OffsetDateTime::UNIX_EPOCH;
        for alg in [SigningAlg::EdDSA, SigningAlg::ES256, SigningAlg::RS256] {
            let stored = generate(alg, &kek, now).unwrap();
            assert!(!String::from_utf8_lossy(&stored.sealed_private).contains("PRIVATE KEY"));
            let key = SigningKey::load(&stored, &kek).unwrap();
            assert_eq!(key.alg, alg);
            let json = serde_json::to_value(&key.jwk).unwrap();
            assert_eq!(json["kid"], stored.kid.as_str());
            assert_eq!(json["alg"], alg.name());
            assert_eq!(json["use"], "sig");
            assert!(
                json.get("d").is_none(),
                "no private part in the JWK: {json}"
            );
        }
    }
}
