//! keyward's domain: users, sessions, the secrets that stand for them, the store traits every
//! backend implements, the clock that expiry reads, and the [`AuthService`] that ties them
//! together. Nothing here knows HTTP or a particular database.
#![deny(missing_docs)]

pub mod auth;
pub mod clients;
pub mod clock;
pub mod device;
pub mod feed;
pub mod ids;
pub mod mail;
pub mod memory;
pub mod mfa;
pub mod oauth;
pub mod password;
pub mod recovery;
pub mod secret;
pub mod store;
pub mod throttle;
pub mod totp;
pub mod url;

pub use auth::{
    AuthConfig, AuthError, AuthResult, AuthService, ClientInfo, NewSession, Readiness, AUDIT,
};
pub use clients::{ClientRecord, ClientStore, DynClientStore};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use device::{DeviceCookie, DeviceKey};
pub use ids::{SessionId, UserId, Username};
pub use mail::{
    DynOutbox, DynPostOffice, Email, Letter, MailState, MailSummary, OutboundMail, Outbox,
    PostOffice, TicketKind,
};
pub use memory::MemorySessionStore;
pub use mfa::{DynMfaStore, Enrolment, MfaRecord, MfaStore, Sealer};
pub use oauth::{AuthorizationCode, Consent, DynGrantStore, Grant, GrantStore, Redeemed, Scopes};
pub use password::PasswordHasher;
pub use recovery::{DynTicketStore, ResetFor, Ticket, TicketStore};
pub use secret::{Password, SessionToken, TokenHash};
pub use store::{
    Amr, DynKeyStore, DynSessionStore, DynTokenStore, DynUserStore, KeyStore, RefreshFamily,
    RotateOutcome, SessionRecord, SessionStore, StoreError, StoreResult, StoredKey, TokenStore,
    UserRecord, UserStore,
};
pub use throttle::{DynFailureLog, FailureLog, MemoryFailureLog, Throttle, ThrottleConfig};
pub use url::{Engine, RedisTopology, StoreUrl, StoreUrlError};
