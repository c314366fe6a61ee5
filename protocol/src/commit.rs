//! The commit record: what a device last committed, kept outside its store so that a
//! store that went back in time (an older copy restored, a damaged or truncated log)
//! is noticed instead of silently forgetting acknowledged writes.
//!
//! Two files, `HOME/commit.0` and `HOME/commit.1`; commit number `n` is written to
//! `commit.(n % 2)`, so a write torn by a crash leaves the other intact. Each file is
//! one sealed value (`crate::seal`, binding `("commit-record", "")`) of:
//!
//! ```text
//! byte 0       version (1)
//! bytes 1..9   commit number, u64 big-endian (the store keeps the same number)
//! bytes 9..13  entry count, u32 big-endian
//! then per collection, sorted by key:
//!   32 bytes   the collection's opaque key in the store
//!    8 bytes   its generation: changes ever persisted, u64 big-endian
//!   32 bytes   BLAKE3 of its Automerge heads, sorted and concatenated
//! ```

use std::collections::BTreeMap;

pub const COMMIT_RECORD_VERSION: u8 = 1;
/// The seal binding domain of a commit record.
pub const COMMIT_RECORD_DOMAIN: &[u8] = b"commit-record";
/// Largest record accepted (about 900,000 collections).
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

/// Where one collection stood at a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionMark {
    pub generation: u64,
    pub heads: [u8; 32],
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitRecord {
    pub commit: u64,
    pub collections: BTreeMap<[u8; 32], CollectionMark>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitRecordError {
    #[error("commit record has unknown version {0}")]
    Version(u8),
    #[error("commit record is malformed: {0}")]
    Malformed(&'static str),
}

const ENTRY: usize = 32 + 8 + 32;

impl CommitRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + self.collections.len() * ENTRY);
        out.push(COMMIT_RECORD_VERSION);
        out.extend_from_slice(&self.commit.to_be_bytes());
        let count = u32::try_from(self.collections.len()).expect("fewer than 2^32 collections");
        out.extend_from_slice(&count.to_be_bytes());
        for (key, mark) in &self.collections {
            out.extend_from_slice(key);
            out.extend_from_slice(&mark.generation.to_be_bytes());
            out.extend_from_slice(&mark.heads);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CommitRecordError> {
        let (&version, rest) = bytes
            .split_first()
            .ok_or(CommitRecordError::Malformed("empty"))?;
        if version != COMMIT_RECORD_VERSION {
            return Err(CommitRecordError::Version(version));
        }
        if rest.len() < 12 {
            return Err(CommitRecordError::Malformed("truncated header"));
        }
        let commit = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let count = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        let body = &rest[12..];
        if body.len()
            != count
                .checked_mul(ENTRY)
                .ok_or(CommitRecordError::Malformed("count"))?
        {
            return Err(CommitRecordError::Malformed(
                "entry count does not match the length",
            ));
        }
        let mut collections = BTreeMap::new();
        for entry in body.chunks_exact(ENTRY) {
            let key: [u8; 32] = entry[..32].try_into().expect("32 bytes");
            let mark = CollectionMark {
                generation: u64::from_be_bytes(entry[32..40].try_into().expect("8 bytes")),
                heads: entry[40..72].try_into().expect("32 bytes"),
            };
            if collections.insert(key, mark).is_some() {
                return Err(CommitRecordError::Malformed("a collection appears twice"));
            }
        }
        Ok(Self {
            commit,
            collections,
        })
    }
}

/// The digest of a document's heads, as a commit record keeps it.
pub fn heads_digest<'a>(heads: impl IntoIterator<Item = &'a [u8; 32]>) -> [u8; 32] {
    let mut sorted: Vec<&[u8; 32]> = heads.into_iter().collect();
    sorted.sort();
    let mut hasher = blake3::Hasher::new();
    for head in sorted {
        hasher.update(head);
    }
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(commit in any::<u64>(), entries in proptest::collection::btree_map(any::<[u8; 32]>(), (any::<u64>(), any::<[u8; 32]>()), 0..20)) {
            let record = CommitRecord {
                commit,
                collections: entries.into_iter().map(|(k, (generation, heads))| (k, CollectionMark { generation, heads })).collect(),
            };
            prop_assert_eq!(CommitRecord::decode(&record.encode()), Ok(record));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CommitRecord::decode(&bytes);
        }
    }

    #[test]
    fn rejects_wrong_lengths_and_versions() {
        let record = CommitRecord {
            commit: 7,
            collections: BTreeMap::from([(
                [1; 32],
                CollectionMark {
                    generation: 3,
                    heads: [2; 32],
                },
            )]),
        };
        let bytes = record.encode();
        assert!(CommitRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(CommitRecord::decode(&longer).is_err());
        let mut version = bytes.clone();
        version[0] = 2;
        assert_eq!(
            CommitRecord::decode(&version),
            Err(CommitRecordError::Version(2))
        );
        assert_eq!(
            heads_digest([&[1; 32], &[2; 32]]),
            heads_digest([&[2; 32], &[1; 32]])
        );
    }
}
