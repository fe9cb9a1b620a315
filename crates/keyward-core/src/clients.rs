//! OAuth clients: the applications that may ask keyward for tokens through the authorization
//! code flow, their redirect URIs, and the rule a presented redirect URI is judged by.
//!
//! A client is public (a native or single-page app: no secret) or confidential (a server:
//! a secret shown once and stored only as its SHA-256). A redirect URI is https, a loopback
//! http URI (RFC 8252 §7.3: any port), or a private-use scheme (RFC 8252 §7.1, a reversed
//! domain such as `com.example.app:/cb`); never one with a fragment.

use crate::secret::TokenHash;
use crate::store::StoreResult;
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;

/// A registered client.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// `client_id`: 128 random bits, base64url.
    pub id: String,
    /// A name people recognise (shown on the consent page).
    pub name: String,
    /// Where codes may be sent.
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may return to.
    pub post_logout_redirect_uris: Vec<String>,
    /// SHA-256 of the secret of a confidential client; `None` for a public one.
    pub secret_hash: Option<TokenHash>,
    /// A client of the same operator: no consent page.
    pub first_party: bool,
    /// When it was registered.
    pub created_at: OffsetDateTime,
}

impl fmt::Debug for ClientRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("redirect_uris", &self.redirect_uris)
            .field("confidential", &self.secret_hash.is_some())
            .field("first_party", &self.first_party)
            .finish_non_exhaustive()
    }
}

impl ClientRecord {
    /// Whether it authenticates with a secret.
    pub fn is_confidential(&self) -> bool {
        self.secret_hash.is_some()
    }

    /// Whether `presented` is one of its redirect URIs, by [`redirect_matches`].
    pub fn accepts_redirect(&self, presented: &str) -> bool {
        self.redirect_uris
            .iter()
            .any(|r| redirect_matches(r, presented))
    }

    /// Whether `presented` is one of its post-logout redirect URIs, exactly.
    pub fn accepts_post_logout(&self, presented: &str) -> bool {
        self.post_logout_redirect_uris
            .iter()
            .any(|r| r == presented)
    }

    /// Whether `secret` is its secret (constant-time; false for a public client).
    pub fn secret_is(&self, secret: &str) -> bool {
        self.secret_hash
            .as_ref()
            .is_some_and(|h| *h == TokenHash::of(secret))
    }
}

/// Where clients live (the database, shared by every node).
#[async_trait]
pub trait ClientStore: Send + Sync + 'static {
    /// Register a client.
    async fn create_client(&self, client: &ClientRecord) -> StoreResult<()>;
    /// A client by id.
    async fn client(&self, id: &str) -> StoreResult<Option<ClientRecord>>;
    /// Every client, by name.
    async fn list_clients(&self) -> StoreResult<Vec<ClientRecord>>;
    /// Remove a client; false when there is none with this id.
    async fn delete_client(&self, id: &str) -> StoreResult<bool>;
}

/// Shared handle to a client store.
pub type DynClientStore = Arc<dyn ClientStore>;

/// Why a redirect URI cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectUriError {
    /// Not an absolute URI.
    #[error("'{0}' is not an absolute URI")]
    NotAUri(String),
    /// A fragment (RFC 6749 §3.1.2).
    #[error("'{0}' has a fragment; a redirect URI must not")]
    Fragment(String),
    /// http to anything but a loopback address, or a scheme that is no reversed domain.
    #[error("'{0}' must be https, http to a loopback address (127.0.0.1, [::1], localhost), or a private-use scheme such as com.example.app:/cb")]
    Scheme(String),
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Check a redirect URI for registration.
pub fn check_redirect_uri(raw: &str) -> Result<(), RedirectUriError> {
    let url = url::Url::parse(raw).map_err(|_| RedirectUriError::NotAUri(raw.to_owned()))?;
    if url.fragment().is_some() || raw.contains('#') {
        return Err(RedirectUriError::Fragment(raw.to_owned()));
    }
    let ok = match url.scheme() {
        "https" => url.host().is_some(),
        "http" => is_loopback(&url),
        // A private-use scheme is a reversed domain name: it has a dot.
        other => other.contains('.'),
    };
    if ok {
        Ok(())
    } else {
        Err(RedirectUriError::Scheme(raw.to_owned()))
    }
}

/// Whether a presented redirect URI matches a registered one: exactly (as strings), or, for
/// a registered loopback http URI, with any port (RFC 8252 §7.3: the app picks an ephemeral
/// port at run time); scheme, host, path and query must still be the same.
pub fn redirect_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    let (Ok(r), Ok(p)) = (url::Url::parse(registered), url::Url::parse(presented)) else {
        return false;
    };
    r.scheme() == "http"
        && is_loopback(&r)
        && p.scheme() == "http"
        && r.host() == p.host()
        && r.path() == p.path()
        && r.query() == p.query()
        && p.fragment().is_none()
        && p.username().is_empty()
        && p.password().is_none()
}

/// A new `client_id`: 128 random bits from the OS CSPRNG, base64url.
pub fn new_client_id() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_may_be_registered() {
        for ok in [
            "https://app.example.com/callback",
            "http://127.0.0.1/cb",
            "http://[::1]:8000/cb",
            "http://localhost/cb",
            "com.example.app:/oauth2redirect",
        ] {
            assert_eq!(check_redirect_uri(ok), Ok(()), "{ok}");
        }
        assert!(matches!(
            check_redirect_uri("/cb"),
            Err(RedirectUriError::NotAUri(_))
        ));
        assert!(matches!(
            check_redirect_uri("https://app.example.com/cb#x"),
            Err(RedirectUriError::Fragment(_))
        ));
        for bad in [
            "http://app.example.com/cb",
            "myapp:/cb",
            "javascript:alert(1)",
        ] {
            assert!(
                matches!(check_redirect_uri(bad), Err(RedirectUriError::Scheme(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn loopback_uris_match_on_any_port_and_nothing_else_bends() {
        let r = "http://127.0.0.1/cb";
        assert!(redirect_matches(r, "http://127.0.0.1/cb"));
        assert!(redirect_matches(r, "http://127.0.0.1:49152/cb"));
        assert!(redirect_matches(
            "http://[::1]:80/cb",
            "http://[::1]:51000/cb"
        ));
        assert!(!redirect_matches(r, "http://127.0.0.1:49152/cb/other"));
        assert!(!redirect_matches(r, "http://127.0.0.2:49152/cb"));
        assert!(!redirect_matches(r, "http://localhost:49152/cb"));
        assert!(!redirect_matches(r, "https://127.0.0.1:49152/cb"));
        assert!(!redirect_matches(r, "http://127.0.0.1:49152/cb?x=1"));
        assert!(!redirect_matches(r, "http://evil@127.0.0.1:49152/cb"));
        let https = "https://app.example.com/cb";
        assert!(redirect_matches(https, https));
        assert!(!redirect_matches(https, "https://app.example.com:8443/cb"));
        assert!(!redirect_matches(https, "https://app.example.com/cb/"));
        assert!(!redirect_matches(
            "com.example.app:/cb",
            "com.example.app:/cb2"
        ));
    }

    #[test]
    fn client_ids_are_random() {
        let (a, b) = (new_client_id().unwrap(), new_client_id().unwrap());
        assert_eq!(a.len(), 22);
        assert_ne!(a, b);
    }
}
