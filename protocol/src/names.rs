//! Names users choose: collection names, record ids, blob ids.
//!
//! Validation lives here so the API, the CLI and (later) the mesh reject the same
//! inputs with the same words.

use std::fmt;
use std::str::FromStr;

/// Longest record id accepted, in bytes.
pub const MAX_RECORD_ID_LEN: usize = 128;
/// Longest collection name accepted, in bytes.
pub const MAX_COLLECTION_NAME_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error(
        "collection name {0:?} is invalid: use 1 to 63 characters of a-z, 0-9, '_' and '-', starting with a letter"
    )]
    Collection(String),
    #[error(
        "record id {0:?} is invalid: use 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-', not starting with '.'"
    )]
    RecordId(String),
    #[error("blob id {0:?} is invalid: a blob id is 64 lowercase hex characters")]
    BlobId(String),
}

/// A collection name: `[a-z][a-z0-9_-]{0,62}` for users, or `_` followed by the
/// same for the system's own collections (`_devices`, `_access`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectionName(String);

impl CollectionName {
    /// Parses any valid name, the system's (`_x`) included.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let body = name.strip_prefix('_').unwrap_or(name);
        let mut chars = body.chars();
        let valid = name.len() <= MAX_COLLECTION_NAME_LEN
            && chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(NameError::Collection(truncate_for_message(name)))
        }
    }

    /// Names starting with `_` belong to the system: users may read them, not write.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('_')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CollectionName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A record id: URL-safe, 1 to 128 characters of `[A-Za-z0-9._~-]`, not starting
/// with `.` (so `.` and `..` never reach a path).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(String);

impl RecordId {
    pub fn parse(id: &str) -> Result<Self, NameError> {
        let valid = !id.is_empty()
            && id.len() <= MAX_RECORD_ID_LEN
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
        if valid {
            Ok(Self(id.to_owned()))
        } else {
            Err(NameError::RecordId(truncate_for_message(id)))
        }
    }

    /// A fresh random id: 26 characters of lowercase base32 (130 bits of which 128 random).
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blob id: the keyed BLAKE3 hash of the blob's content under a vault secret, so equal
/// content in one vault has one id and an outsider cannot tell content from an id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    pub fn parse(id: &str) -> Result<Self, NameError> {
        let bad = || NameError::BlobId(truncate_for_message(id));
        if id.len() != 64 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let bytes = data_encoding::HEXLOWER
            .decode(id.as_bytes())
            .map_err(|_| bad())?;
        let array: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self(array))
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

/// Error messages quote what was wrong, but never an unbounded amount of it.
fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn collection_names() {
        for ok in [
            "contacts",
            "a",
            "notes-2026",
            "my_mail",
            "_devices",
            "_access",
        ] {
            assert!(CollectionName::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "", "_", "Contacts", "1abc", "-a", "a b", "a/b", "é", "__x", &long,
        ] {
            assert!(CollectionName::parse(bad).is_err(), "{bad}");
        }
        assert!(CollectionName::parse("_devices").unwrap().is_system());
        assert!(!CollectionName::parse("contacts").unwrap().is_system());
        assert!(CollectionName::parse(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn record_ids() {
        for ok in ["a", "A-1_b.c~d", "rec-wombat-42", &"x".repeat(128)] {
            assert!(RecordId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "a%20",
            "é",
            &"x".repeat(129),
        ] {
            assert!(RecordId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blob_ids() {
        let id = BlobId([0xab; 32]);
        assert_eq!(BlobId::parse(&id.to_string()).unwrap(), id);
        assert!(BlobId::parse(&"AB".repeat(32)).is_err());
        assert!(BlobId::parse("abc").is_err());
        assert!(BlobId::parse(&"g".repeat(64)).is_err());
    }

    proptest! {
        #[test]
        fn random_ids_are_valid(bytes in any::<[u8; 16]>()) {
            let id = RecordId::from_random(bytes);
            prop_assert!(RecordId::parse(id.as_str()).is_ok());
        }

        #[test]
        fn parsing_never_panics(s in ".*") {
            let _ = CollectionName::parse(&s);
            let _ = RecordId::parse(&s);
            let _ = BlobId::parse(&s);
        }
    }
}
