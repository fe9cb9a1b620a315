//! The change feed: what a shared session store announces of every change, so that node-local
//! caches (`--session-cache near|replicated`) stay current without reading the store.
//!
//! One typed event, [`FeedEvent`], printed and parsed here alone. Redis's Lua scripts and
//! PostgreSQL's triggers write the same text from inside the change itself; a test on each
//! engine parses what the store's own writes emit. A [`ChangeFeed`] delivers the events of one
//! engine in order, and says when it may have missed some.

use crate::clock::{from_unix_ms, to_unix_ms};
use crate::ids::{SessionId, UserId};
use crate::secret::TokenHash;
use crate::store::{Amr, SessionRecord, StoreResult};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a replica keeps of a session: what validation needs, not the client's address or user
/// agent (those stay in the store, for the session list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSession {
    /// SHA-256 of the token.
    pub token_hash: TokenHash,
    /// Public id.
    pub id: SessionId,
    /// Owner.
    pub user_id: UserId,
    /// Owner's username.
    pub username: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last use.
    pub last_seen_at: OffsetDateTime,
    /// Absolute expiry.
    pub expires_at: OffsetDateTime,
    /// How the owner authenticated.
    pub amr: Amr,
}

impl From<&SessionRecord> for ReplicaSession {
    fn from(s: &SessionRecord) -> Self {
        Self {
            token_hash: s.token_hash,
            id: s.id,
            user_id: s.user_id,
            username: s.username.clone(),
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at,
            amr: s.amr,
        }
    }
}

impl From<ReplicaSession> for SessionRecord {
    fn from(r: ReplicaSession) -> Self {
        Self {
            id: r.id,
            token_hash: r.token_hash,
            user_id: r.user_id,
            username: r.username,
            created_at: r.created_at,
            last_seen_at: r.last_seen_at,
            expires_at: r.expires_at,
            ip: None,
            user_agent: None,
            amr: r.amr,
        }
    }
}

/// One change, as the feed carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A session was created (`c <hash> {"i","u","n","c","l","e","a"}`).
    Created(ReplicaSession),
    /// A session was used (`t <hash> <last seen, ms>`).
    Touched {
        /// The session.
        token_hash: TokenHash,
        /// Its new last use.
        last_seen_at: OffsetDateTime,
    },
    /// A session ended (`d <hash>`).
    Deleted {
        /// The session.
        token_hash: TokenHash,
    },
    /// A refresh-token family was revoked (`f <family id>`).
    FamilyRevoked {
        /// The family (the `sid` of its access tokens).
        family: SessionId,
    },
    /// An access token was denied (`x <until, ms> <jti>`).
    Denied {
        /// Its `jti`.
        jti: String,
        /// Its expiry: denied until then.
        until: OffsetDateTime,
    },
    /// A node's marker (`m <node> <n>`): heard back, it proves the feed delivers, and that
    /// every change before it has been delivered.
    Marker {
        /// The node that sent it.
        node: String,
        /// Its number.
        id: u64,
    },
}

/// The session fields of a creation event.
#[derive(Serialize, Deserialize)]
struct Fields {
    i: String,
    u: String,
    n: String,
    c: i64,
    l: i64,
    e: i64,
    /// `amr` bits; absent from the events of a version before it (the password alone).
    #[serde(default = "password_alone")]
    a: u8,
}

fn password_alone() -> u8 {
    Amr::PWD.bits()
}

/// Lower-case hex of a token hash, as keys and the feed carry it.
pub fn hash_hex(h: &TokenHash) -> String {
    h.to_hex()
}

/// A token hash from its lower-case hex.
pub fn hash_from_hex(s: &str) -> Option<TokenHash> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..32)
        .map(|i| {
            s.get(i * 2..i * 2 + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    bytes.and_then(|b| TokenHash::from_slice(&b))
}

impl FeedEvent {
    /// The text form.
    pub fn encode(&self) -> String {
        match self {
            Self::Created(s) => {
                let fields = Fields {
                    i: s.id.to_string(),
                    u: s.user_id.to_string(),
                    n: s.username.clone(),
                    c: to_unix_ms(s.created_at),
                    l: to_unix_ms(s.last_seen_at),
                    e: to_unix_ms(s.expires_at),
                    a: s.amr.bits(),
                };
                let json = serde_json::to_string(&fields).unwrap_or_default();
                format!("c {} {json}", s.token_hash.to_hex())
            }
            Self::Touched {
                token_hash,
                last_seen_at,
            } => format!("t {} {}", token_hash.to_hex(), to_unix_ms(*last_seen_at)),
            Self::Deleted { token_hash } => format!("d {}", token_hash.to_hex()),
            Self::FamilyRevoked { family } => format!("f {family}"),
            Self::Denied { jti, until } => format!("x {} {jti}", to_unix_ms(*until)),
            Self::Marker { node, id } => format!("m {node} {id}"),
        }
    }

    /// Parse the text form; `None` for anything else (a newer version's event is ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let (op, rest) = text.split_once(' ')?;
        match op {
            "c" => {
                let (hash, json) = rest.split_once(' ')?;
                let f: Fields = serde_json::from_str(json).ok()?;
                Some(Self::Created(ReplicaSession {
                    token_hash: hash_from_hex(hash)?,
                    id: SessionId::parse(&f.i)?,
                    user_id: UserId::parse(&f.u)?,
                    username: f.n,
                    created_at: from_unix_ms(f.c),
                    last_seen_at: from_unix_ms(f.l),
                    expires_at: from_unix_ms(f.e),
                    amr: Amr::from_bits(f.a),
                }))
            }
            "t" => {
                let (hash, at) = rest.split_once(' ')?;
                Some(Self::Touched {
                    token_hash: hash_from_hex(hash)?,
                    last_seen_at: from_unix_ms(at.parse().ok()?),
                })
            }
            "d" => Some(Self::Deleted {
                token_hash: hash_from_hex(rest)?,
            }),
            "f" => Some(Self::FamilyRevoked {
                family: SessionId::parse(rest)?,
            }),
            "x" => {
                let (until, jti) = rest.split_once(' ')?;
                Some(Self::Denied {
                    jti: jti.to_owned(),
                    until: from_unix_ms(until.parse().ok()?),
                })
            }
            "m" => {
                let (node, id) = rest.split_once(' ')?;
                Some(Self::Marker {
                    node: node.to_owned(),
                    id: id.parse().ok()?,
                })
            }
            _ => None,
        }
    }

    /// Whether this event takes something away (a session, a family, a token): what a node
    /// catching up applies first.
    pub fn is_revocation(&self) -> bool {
        matches!(
            self,
            Self::Deleted { .. } | Self::FamilyRevoked { .. } | Self::Denied { .. }
        )
    }
}

/// What a feed tells the cache that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedMessage {
    /// A change, in commit order.
    Event(FeedEvent),
    /// The feed may have missed changes (a lost connection, a gap, falling behind): stop
    /// trusting what was heard until the feed says it has caught up.
    Lost,
    /// The feed follows again but could not replay what it missed: load everything afresh
    /// (a snapshot taken from now on sees every change the feed no longer delivers).
    Reload,
    /// The feed follows again and has delivered every change it missed, in order.
    CaughtUp,
}

/// Denials a node must hold to answer "is this token denied" from memory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Denials {
    /// Denied access tokens: `jti` and until when.
    pub tokens: Vec<(String, OffsetDateTime)>,
    /// Revoked refresh-token families.
    pub families: Vec<SessionId>,
}

/// Where [`ChangeFeed::load_sessions`] puts what it loads.
pub trait LoadSink: Send {
    /// About how many sessions are coming, said once and as early as the feed can tell (a
    /// replicated cache then sizes its table once instead of growing it).
    fn expect(&mut self, sessions: u64);
    /// One session.
    fn session(&mut self, s: ReplicaSession);
}

/// Where a change was made, for a marker that must follow it.
#[derive(Debug, Clone, Copy)]
pub enum Near<'a> {
    /// A change to a user's shard (sessions, families).
    Shard(crate::ids::Shard),
    /// A denial of this `jti`.
    Denial(&'a str),
    /// No change: a heartbeat.
    Nothing,
}

/// A shared store's change feed.
///
/// [`ChangeFeed::start`] connects and spawns the task that delivers [`FeedMessage`]s: first
/// [`FeedMessage::Reload`] once subscribed (so a joining node loads what exists), then every
/// change in order, [`FeedMessage::Lost`] whenever something may have been missed, and
/// [`FeedMessage::Reload`] or [`FeedMessage::CaughtUp`] once it follows again.
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Start following; messages go to `sink` until it is dropped.
    async fn start(&self, sink: tokio::sync::mpsc::UnboundedSender<FeedMessage>)
        -> StoreResult<()>;
    /// Publish this node's marker behind a change to `near` (Redis sends it from the slot the
    /// change ran on, whose order it then shares).
    async fn marker(&self, near: Near<'_>, node: &str, id: u64) -> StoreResult<()>;
    /// Ask for [`FeedMessage::Reload`] (the cache stopped trusting the feed on its own: a
    /// marker that never came back).
    fn resync(&self);
    /// Every live session, for a replicated cache, into `sink`; returns how many.
    async fn load_sessions(&self, sink: &mut dyn LoadSink) -> StoreResult<u64>;
    /// Every denial the store holds.
    async fn load_denials(&self) -> StoreResult<Denials>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> ReplicaSession {
        let user = UserId::new();
        ReplicaSession {
            token_hash: crate::SessionToken::generate_in(user.shard())
                .unwrap()
                .hash(),
            id: SessionId::new_in(user.shard()),
            user_id: user,
            username: "ada lovelace".into(),
            created_at: from_unix_ms(1_800_000_000_123),
            last_seen_at: from_unix_ms(1_800_000_060_000),
            expires_at: from_unix_ms(1_800_604_800_123),
            amr: crate::Amr::PWD_OTP,
        }
    }

    #[test]
    fn every_event_round_trips() {
        let s = session();
        for e in [
            FeedEvent::Created(s.clone()),
            FeedEvent::Touched {
                token_hash: s.token_hash,
                last_seen_at: from_unix_ms(1_800_000_120_000),
            },
            FeedEvent::Deleted {
                token_hash: s.token_hash,
            },
            FeedEvent::FamilyRevoked { family: s.id },
            FeedEvent::Denied {
                jti: "0b8f1c2a-6d3e-4f5a-8b7c-9d0e1f2a3b4c".into(),
                until: from_unix_ms(1_800_000_900_000),
            },
            FeedEvent::Marker {
                node: "node-1".into(),
                id: 42,
            },
        ] {
            assert_eq!(
                FeedEvent::parse(&e.encode()),
                Some(e.clone()),
                "{}",
                e.encode()
            );
        }
    }

    #[test]
    fn what_lua_and_postgres_write_parses() {
        let s = session();
        // cjson orders keys as it likes; json_build_object as asked; both with numbers.
        let text = format!(
            "c {} {{\"e\":1800604800123,\"n\":\"ada lovelace\",\"u\":\"{}\",\"i\":\"{}\",\"l\":1800000060000,\"c\":1800000000123,\"a\":3}}",
            s.token_hash.to_hex(),
            s.user_id,
            s.id
        );
        assert_eq!(FeedEvent::parse(&text), Some(FeedEvent::Created(s.clone())));
        // An event of a version before amr: the password alone.
        let old = text.replace(",\"a\":3", "");
        let pwd = ReplicaSession {
            amr: crate::Amr::PWD,
            ..s
        };
        assert_eq!(FeedEvent::parse(&old), Some(FeedEvent::Created(pwd)));
        for bad in [
            "",
            "c",
            "c abc {}",
            "t zz 1",
            "x notanumber jti",
            "q 1",
            "m node x",
        ] {
            assert_eq!(FeedEvent::parse(bad), None, "{bad}");
        }
    }
}
