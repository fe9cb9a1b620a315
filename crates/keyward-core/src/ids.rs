//! Public identifiers and validated names.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// A user's stable identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(Uuid);

impl UserId {
    /// A new random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
    /// Parse the text form.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }
    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
    /// From the UUID's 16 bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(b))
    }
    /// The user's shard: where a partitioned store (Redis Cluster) keeps everything of this
    /// user together. Every session id, session token and refresh token minted for the user
    /// carries the same shard, so one atomic script can touch all of them.
    pub fn shard(&self) -> Shard {
        self.0.as_bytes()[0]
    }
}

/// A partition of the key space: one byte, shared by a user and every id and token of theirs.
pub type Shard = u8;

impl Default for UserId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A session's public id: shown in lists and used to revoke one session.
/// Unrelated to the token: knowing it grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A new random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
    /// A new random id in `shard` (its first byte; the other 114 random bits stay random).
    pub fn new_in(shard: Shard) -> Self {
        let mut bytes = *Uuid::new_v4().as_bytes();
        bytes[0] = shard;
        Self(Uuid::from_bytes(bytes))
    }
    /// Parse the text form; `None` for anything that is not one.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }
    /// From the UUID's 16 bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(b))
    }
    /// The UUID's 16 bytes.
    pub fn as_uuid_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
    /// The shard this id was minted in (see [`UserId::shard`]).
    pub fn shard(&self) -> Shard {
        self.0.as_bytes()[0]
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Longest username accepted, in characters.
pub const USERNAME_MAX: usize = 64;

/// A valid username: 1–64 ASCII letters, digits or `._-@+`. Compared case-insensitively
/// through [`Username::key`]; the spelling the user chose is kept for display.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

/// Why a username was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsernameError {
    /// Empty.
    #[error("username must not be empty")]
    Empty,
    /// Longer than [`USERNAME_MAX`].
    #[error("username must be at most {USERNAME_MAX} characters")]
    TooLong,
    /// A character outside the allowed set.
    #[error("username may contain only ASCII letters, digits and . _ - @ +")]
    BadCharacter,
}

impl Username {
    /// Validate a username.
    pub fn parse(raw: &str) -> Result<Self, UsernameError> {
        if raw.is_empty() {
            return Err(UsernameError::Empty);
        }
        if raw.chars().count() > USERNAME_MAX {
            return Err(UsernameError::TooLong);
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+'))
        {
            return Err(UsernameError::BadCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The spelling as registered.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form that uniqueness and look-ups use.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(Username::parse("alice.b-c_d@e+f").is_ok());
        assert_eq!(Username::parse(""), Err(UsernameError::Empty));
        assert_eq!(
            Username::parse(&"a".repeat(65)),
            Err(UsernameError::TooLong)
        );
        assert!(Username::parse(&"a".repeat(64)).is_ok());
        assert_eq!(Username::parse("a b"), Err(UsernameError::BadCharacter));
        assert_eq!(Username::parse("é"), Err(UsernameError::BadCharacter));
        assert_eq!(Username::parse("Alice").unwrap().key(), "alice");
    }
}
