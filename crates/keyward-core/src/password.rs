//! Password policy and Argon2id hashing on a bounded blocking pool.

use crate::secret::Password;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Shortest password accepted, in characters.
pub const PASSWORD_MIN: usize = 8;
/// Longest password accepted, in characters. Checked before any hashing.
pub const PASSWORD_MAX: usize = 256;

/// Argon2id memory cost in KiB: OWASP's minimum (19 MiB).
pub const ARGON2_M_KIB: u32 = 19 * 1024;
/// Argon2id iterations: OWASP's minimum for 19 MiB.
pub const ARGON2_T: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P: u32 = 1;

/// Why a new password was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Fewer than [`PASSWORD_MIN`] characters.
    #[error("password must be at least {PASSWORD_MIN} characters")]
    TooShort,
    /// More than [`PASSWORD_MAX`] characters.
    #[error("password must be at most {PASSWORD_MAX} characters")]
    TooLong,
    /// The same character repeated.
    #[error("password must not be one character repeated")]
    OneCharacter,
    /// A common or breached password, a name, or a common word with a few characters added.
    #[error("password is too common; choose one that is not on lists of common passwords")]
    Common,
    /// Guessable in few tries by a strength estimate.
    #[error("password is too easy to guess; use a longer one or a few unrelated words")]
    Guessable,
}

/// Whether a password is within the length limits; cheap, and run before anything else.
pub fn check_length(password: &Password) -> Result<(), PolicyError> {
    let n = password.expose().chars().count();
    if n > PASSWORD_MAX {
        Err(PolicyError::TooLong)
    } else if n < PASSWORD_MIN {
        Err(PolicyError::TooShort)
    } else {
        Ok(())
    }
}

/// The whole policy for a new password (NIST SP 800-63B §3.1.1.2: a blocklist and a strength
/// estimate, no composition rules): within the length limits, not one repeated character, not a
/// common or breached password (zxcvbn's frequency lists, which come from breaches), not the
/// user's own name or the service's, not a common word dressed up with a few digits or
/// symbols (`Summer2024!`), and not guessable within a million guesses by zxcvbn's estimate
/// (a random 8-character password is 10^8).
pub fn check_policy(password: &Password, user_inputs: &[&str]) -> Result<(), PolicyError> {
    check_length(password)?;
    let raw = password.expose();
    let mut chars = raw.chars();
    if let Some(first) = chars.next() {
        if chars.all(|c| c == first) {
            return Err(PolicyError::OneCharacter);
        }
    }
    let mut inputs: Vec<&str> = user_inputs.to_vec();
    inputs.push("keyward");
    let estimate = zxcvbn::zxcvbn(raw, &inputs);
    if is_listed(&estimate, raw, COMMON_RANK) {
        return Err(PolicyError::Common);
    }
    if u8::from(estimate.score()) < MIN_SCORE {
        return Err(PolicyError::Guessable);
    }
    // A dictionary word with digits or symbols around it: zxcvbn prices `2024!` as random
    // characters, so judge the word alone.
    let core = raw.trim_matches(|c: char| !c.is_alphabetic());
    let decoration = raw.chars().count() - core.chars().count();
    if core.chars().count() >= 3 && (1..=MAX_DECORATION).contains(&decoration) {
        let word = zxcvbn::zxcvbn(core, &inputs);
        if is_listed(&word, core, usize::MAX) {
            return Err(PolicyError::Common);
        }
    }
    Ok(())
}

/// Rank limit under which a dictionary password counts as "very common".
const COMMON_RANK: usize = 10_000;
/// zxcvbn's score 2: at least 10^6 guesses.
const MIN_SCORE: u8 = 2;
/// Characters around a word that still make it "a word with a few digits or symbols".
const MAX_DECORATION: usize = 6;

/// Whether one dictionary match (any of zxcvbn's lists or the user inputs, l33t spellings
/// included) covers the whole of `raw` at a rank within `max_rank`.
fn is_listed(estimate: &zxcvbn::Entropy, raw: &str, max_rank: usize) -> bool {
    let [only] = estimate.sequence() else {
        return false;
    };
    let zxcvbn::matching::patterns::MatchPattern::Dictionary(d) = &only.pattern else {
        return false;
    };
    let whole = only.i == 0 && only.j + 1 == raw.chars().count();
    whole && d.rank <= max_rank
}

/// Errors of the hashing pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// Argon2 refused its parameters.
    #[error("argon2 parameters")]
    Params(#[source] argon2::Error),
    /// Argon2 failed to hash (a corrupted stored hash that cannot be parsed is not this).
    #[error("argon2 hashing")]
    Argon2(#[source] argon2::password_hash::Error),
    /// The blocking task did not complete.
    #[error("hashing task failed")]
    Join(#[source] tokio::task::JoinError),
    /// The OS random source failed.
    #[error("random source failed")]
    Random(#[source] getrandom::Error),
}

/// The outcome of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matched.
    pub ok: bool,
    /// The stored hash uses weaker parameters (or another algorithm) than today's and should
    /// be replaced now that the password is known.
    pub needs_rehash: bool,
}

/// Argon2id hashing and verification, run on tokio's blocking threads with at most
/// `concurrency` at once, so a burst of logins never starves the async executor that serves
/// session validation.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password: verified against for unknown users so that their
    /// failures take as long as a wrong password for a known one.
    dummy: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// A hasher with OWASP's parameters and `concurrency` parallel hashes at most
    /// (`None`: one less than the number of cores, at least one).
    pub fn new(concurrency: Option<usize>) -> Result<Self, HashError> {
        let params =
            Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None).map_err(HashError::Params)?;
        let n = concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
        });
        let mut random = [0u8; 24];
        getrandom::fill(&mut random).map_err(HashError::Random)?;
        let dummy_pw = hex(&random);
        let dummy = hash_blocking(&params, &dummy_pw)?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(n.max(1))),
            dummy: dummy.into(),
        })
    }

    /// Hash a new password into an Argon2id PHC string.
    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let params = self.params.clone();
        let pw = password.clone();
        self.run(move || hash_blocking(&params, pw.expose()))
            .await?
    }

    /// Verify `password` against a stored PHC string, or against the dummy hash when there is
    /// no user (`stored == None`), which always fails but costs the same.
    pub async fn verify(
        &self,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<Verified, HashError> {
        let known = stored.is_some();
        let phc: String = stored.map_or_else(|| self.dummy.to_string(), str::to_owned);
        let params = self.params.clone();
        let pw = password.clone();
        let v = self
            .run(move || verify_blocking(&params, pw.expose(), &phc))
            .await?;
        Ok(Verified {
            ok: v.ok && known,
            needs_rehash: v.needs_rehash && known,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        // The semaphore is never closed, so acquiring only waits.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        })
        .await
        .map_err(HashError::Join)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(HashError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(HashError::Argon2)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError::Argon2)
}

fn verify_blocking(target: &Params, password: &str, phc: &str) -> Verified {
    let Ok(parsed) = PasswordHash::new(phc) else {
        // An unparseable stored hash never verifies.
        return Verified {
            ok: false,
            needs_rehash: false,
        };
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    let weaker = match Params::try_from(&parsed) {
        Ok(p) => {
            p.m_cost() < target.m_cost()
                || p.t_cost() < target.t_cost()
                || parsed.algorithm.as_str() != "argon2id"
                || parsed.version != Some(Version::V0x13.into())
        }
        Err(_) => true,
    };
    Verified {
        ok,
        needs_rehash: weaker,
    }
}

/// Hash with explicit, possibly weaker parameters: for tests of the upgrade path only.
#[doc(hidden)]
pub fn hash_with_params(password: &str, m_kib: u32, t: u32) -> Result<String, HashError> {
    let params = Params::new(m_kib, t, 1, None).map_err(HashError::Params)?;
    hash_blocking(&params, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> Password {
        Password::new(s.to_owned())
    }

    #[test]
    fn policy() {
        assert_eq!(check_policy(&pw("short"), &[]), Err(PolicyError::TooShort));
        assert_eq!(
            check_policy(&pw(&"ab".repeat(129)), &[]),
            Err(PolicyError::TooLong)
        );
        assert_eq!(
            check_policy(&pw("aaaaaaaaaa"), &[]),
            Err(PolicyError::OneCharacter)
        );
        assert_eq!(check_policy(&pw("password"), &[]), Err(PolicyError::Common));
        assert_eq!(
            check_policy(&pw("PassWord1"), &[]),
            Err(PolicyError::Common)
        );
        assert_eq!(check_policy(&pw("12345678"), &[]), Err(PolicyError::Common));
        assert_eq!(
            check_policy(&pw("qwertyuiop"), &[]),
            Err(PolicyError::Common)
        );
        assert_eq!(
            check_policy(&pw("alice.smith"), &["alice.smith"]),
            Err(PolicyError::Common)
        );
        assert_eq!(check_policy(&pw("bench-password-1"), &[]), Ok(()));
        assert_eq!(
            check_policy(&pw("correct horse battery staple"), &[]),
            Ok(())
        );
        // 256 characters is the limit, counted in characters, not bytes.
        let long: String = (0..256)
            .map(|i: u32| char::from_u32(0xe0 + (i * 7919) % 31).unwrap())
            .collect();
        assert_eq!(check_policy(&pw(&long), &[]), Ok(()));
        assert_eq!(
            check_policy(&pw(&"é1".repeat(128)), &[]),
            Err(PolicyError::Guessable)
        );
    }

    #[test]
    fn common_and_guessable_passwords_are_refused_random_ones_accepted() {
        // The contract's examples, and their like.
        for weak in [
            "password1234",
            "Summer2024",
            "letmein!",
            "qwertyuiop",
            "Summer2024!",
            "Winter2023!",
            "Welcome2024!",
            "P@ssw0rd2024",
            "Password123!",
            "iloveyou123",
            "Dragon2024!",
            "Admin@123",
            "keyward2024",
            "trustno1",
        ] {
            assert!(
                check_policy(&pw(weak), &["alice"]).is_err(),
                "{weak} accepted"
            );
        }
        assert!(
            check_policy(&pw("alice2024!"), &["alice"]).is_err(),
            "the username"
        );
        for fine in [
            "Xq7-vNbz",
            "Kx9#mP2q",
            "correct-horse-battery",
            "correct horse battery staple",
            "a-long-passphrase",
            "another-pass-9",
        ] {
            assert_eq!(check_policy(&pw(fine), &["alice"]), Ok(()), "{fine}");
        }
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters() {
        let h = PasswordHasher::new(Some(1)).unwrap();
        let phc = h.hash(&pw("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let v = h.verify(&pw("correct horse"), Some(&phc)).await.unwrap();
        assert_eq!(
            v,
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        let v = h.verify(&pw("wrong horse"), Some(&phc)).await.unwrap();
        assert!(!v.ok);
        let v = h.verify(&pw("correct horse"), None).await.unwrap();
        assert!(!v.ok);
        // Unknown users are checked against a dummy hash of the same cost.
        assert!(h.dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let v = h
            .verify(&pw("correct horse"), Some("not a phc"))
            .await
            .unwrap();
        assert!(!v.ok);
    }

    #[tokio::test]
    async fn weaker_hashes_ask_for_an_upgrade() {
        let h = PasswordHasher::new(Some(1)).unwrap();
        let weak = hash_with_params("correct horse", 8 * 1024, 1).unwrap();
        let v = h.verify(&pw("correct horse"), Some(&weak)).await.unwrap();
        assert_eq!(
            v,
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }
}
