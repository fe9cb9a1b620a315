//! Time-based one-time passwords (RFC 6238) as the contract fixes them: SHA-1, 6 digits,
//! 30-second steps, one step of drift either way, which every authenticator app reads. The
//! arithmetic is the `totp-rs` crate's; this module adds what a server needs on top: a
//! secret from the OS random source that never shows in `Debug`, and verification that says
//! *which* step a code was for, so that a store can refuse a code for a step already used
//! (compare-and-set on the last used step: a code is accepted at most once, on any node).

use std::fmt;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

/// Seconds per step.
pub const STEP_SECONDS: u64 = 30;
/// Digits of a code.
pub const DIGITS: usize = 6;
/// Steps of drift accepted either way.
pub const SKEW: u64 = 1;
/// Bytes of a shared secret: 256 bits (RFC 4226 asks for at least 128, recommends 160).
pub const SECRET_BYTES: usize = 32;

/// Why TOTP could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TotpError {
    /// The OS random source failed.
    #[error("the OS random source failed")]
    Random(#[source] getrandom::Error),
    /// A stored secret has the wrong length, or a label holds a `:`.
    #[error("invalid TOTP parameters: {0}")]
    Invalid(String),
}

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeRefused {
    /// Not the code of the current step or a neighbour (or not six digits).
    #[error("wrong code")]
    Wrong,
    /// The code of a step at or before the last one used: a replay.
    #[error("code already used")]
    Replayed,
}

/// A shared TOTP secret. `Debug` never shows it; [`TotpSecret::base32`] is for showing it to
/// its owner once, at enrolment.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// A new secret of [`SECRET_BYTES`] from the OS random source.
    pub fn generate() -> Result<Self, TotpError> {
        let mut bytes = vec![0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes).map_err(TotpError::Random)?;
        Ok(Self(bytes))
    }

    /// A stored secret.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, TotpError> {
        if bytes.len() != SECRET_BYTES {
            return Err(TotpError::Invalid(format!(
                "a secret is {SECRET_BYTES} bytes, not {}",
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    /// The bytes, to store (sealed) and to compute codes with.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// RFC 4648 base32 without padding, as authenticator apps take it typed in.
    pub fn base32(&self) -> String {
        self.totp(DIGITS, None, String::new())
            .map(|t| t.get_secret_base32())
            .unwrap_or_default()
    }

    fn totp(
        &self,
        digits: usize,
        issuer: Option<String>,
        account: String,
    ) -> Result<TOTP, TotpError> {
        TOTP::new(
            Algorithm::SHA1,
            digits,
            // Drift is judged here (`step_of`), not by the crate.
            0,
            STEP_SECONDS,
            self.0.clone(),
            issuer,
            account,
        )
        .map_err(|e| TotpError::Invalid(e.to_string()))
    }

    /// The `otpauth://totp/…` URI an authenticator app scans (as a QR code) to enrol:
    /// `issuer` and `account` label the entry and must not hold a `:`.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Result<String, TotpError> {
        Ok(self
            .totp(DIGITS, Some(issuer.to_owned()), account.to_owned())?
            .get_url())
    }

    /// The code of the step that `unix_seconds` falls in.
    pub fn code_at(&self, unix_seconds: u64) -> String {
        self.code_with(DIGITS, unix_seconds)
    }

    fn code_with(&self, digits: usize, unix_seconds: u64) -> String {
        self.totp(digits, None, String::new())
            .map(|t| t.generate(unix_seconds))
            .unwrap_or_default()
    }

    /// The step `code` is for, among the current step at `unix_seconds` and one either way,
    /// if it is later than `last_used` (the step of the last code accepted for this secret).
    /// Every candidate is compared, in constant time, whatever matched.
    pub fn verify(
        &self,
        code: &str,
        unix_seconds: u64,
        last_used: Option<u64>,
    ) -> Result<u64, CodeRefused> {
        let code = code.trim();
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodeRefused::Wrong);
        }
        let now = unix_seconds / STEP_SECONDS;
        let mut matched = None;
        for step in now.saturating_sub(SKEW)..=now.saturating_add(SKEW) {
            let candidate = self.code_at(step.saturating_mul(STEP_SECONDS));
            if bool::from(candidate.as_bytes().ct_eq(code.as_bytes())) {
                matched = Some(step);
            }
        }
        match matched {
            None => Err(CodeRefused::Wrong),
            Some(step) if last_used.is_some_and(|last| step <= last) => Err(CodeRefused::Replayed),
            Some(step) => Ok(step),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B's SHA-1 key (20 ASCII bytes, shorter than the secrets we make).
    fn rfc_key() -> TotpSecret {
        TotpSecret(b"12345678901234567890".to_vec())
    }

    #[test]
    fn rfc_6238_appendix_b_sha1_vectors() {
        for (time, code) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(rfc_key().code_with(8, time), code, "T = {time}");
            // Our six digits are the last six of the RFC's eight (the same truncation).
            assert_eq!(rfc_key().code_at(time), code[2..], "T = {time}");
        }
    }

    #[test]
    fn secrets_are_256_random_bits_and_never_shown() {
        let a = TotpSecret::generate().unwrap();
        let b = TotpSecret::generate().unwrap();
        assert_eq!(a.expose().len(), 32);
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "TotpSecret(<redacted>)");
        assert_eq!(a.base32().len(), 52);
        assert!(TotpSecret::from_bytes(vec![0; 20]).is_err());
        assert_eq!(TotpSecret::from_bytes(a.expose().to_vec()).unwrap(), a);
    }

    #[test]
    fn one_step_of_drift_and_no_replay() {
        let s = TotpSecret::generate().unwrap();
        let t = 1_800_000_000; // the start of step 60,000,000
        let step = t / STEP_SECONDS;
        assert_eq!(s.verify(&s.code_at(t), t + 29, None), Ok(step));
        assert_eq!(s.verify(&s.code_at(t - 30), t, None), Ok(step - 1));
        assert_eq!(s.verify(&s.code_at(t + 30), t, None), Ok(step + 1));
        assert_eq!(
            s.verify(&s.code_at(t - 60), t, None),
            Err(CodeRefused::Wrong)
        );
        assert_eq!(
            s.verify(&s.code_at(t + 60), t, None),
            Err(CodeRefused::Wrong)
        );
        // Used once: the same code, or an older one, again is a replay; a newer one is fine.
        assert_eq!(
            s.verify(&s.code_at(t), t, Some(step)),
            Err(CodeRefused::Replayed)
        );
        assert_eq!(
            s.verify(&s.code_at(t - 30), t, Some(step)),
            Err(CodeRefused::Replayed)
        );
        assert_eq!(s.verify(&s.code_at(t + 30), t, Some(step)), Ok(step + 1));
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６"] {
            assert_eq!(s.verify(bad, t, None), Err(CodeRefused::Wrong), "{bad:?}");
        }
        assert_eq!(s.verify(&format!(" {} ", s.code_at(t)), t, None), Ok(step));
    }

    #[test]
    fn the_enrolment_uri_is_what_apps_scan() {
        let s = TotpSecret::generate().unwrap();
        let uri = s
            .otpauth_uri("keyward example", "alice@example.com")
            .unwrap();
        assert_eq!(
            uri,
            format!(
                "otpauth://totp/keyward%20example:alice%40example.com?secret={}&issuer=keyward%20example",
                s.base32()
            )
        );
        assert!(s.otpauth_uri("host:8080", "alice").is_err());
    }

    /// An independent implementation: `oathtool` (Debian's oath-toolkit), which
    /// `scripts/test` installs, computes the same codes from the base32 secret.
    #[test]
    fn oathtool_agrees() {
        let s = TotpSecret::generate().unwrap();
        for t in [0u64, 59, 1_111_111_109, 1_800_000_000, 2_000_000_000] {
            let out = std::process::Command::new("oathtool")
                .args(["--totp", "--base32", "--now"])
                .arg(format!("@{t}"))
                .arg(s.base32())
                .output()
                .expect("oathtool (apt-get install oathtool; scripts/test does)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                s.code_at(t),
                "T = {t}"
            );
        }
    }
}
