//! The sync protocol `/hearth/sync/4`: frames exchanged between two devices of a vault.
//!
//! A stream carries frames, each `u32be length ‖ body` with `length <= MAX_FRAME`.
//! Bodies:
//!
//! ```text
//! 0x01 Hello   ‖ protocol version u8 (4) ‖ vault id (16)
//! 0x02 Doc     ‖ u8 len(name) ‖ collection name ‖ part u16be
//!              ‖ Automerge sync message (rest)
//! 0x03 Summary ‖ count u32be ‖ per collection, in name order:
//!                u8 len(name) ‖ collection name ‖ digest (32)
//! 0x04 Digests ‖ count u32be ‖ per collection, in name order:
//!                u8 len(name) ‖ collection name ‖ parts u16be (at least 1)
//!                ‖ per part, in order: part u16be ‖ heads digest (32)
//! 0x05 Whole   ‖ u8 len(name) ‖ collection name ‖ part u16be
//!              ‖ the part's saved Automerge document (rest)
//! ```
//!
//! A collection is kept in one or several parts, each an Automerge document of its
//! own (a collection of one has part 0). Each side sends `Hello` and its `Summary`
//! first; a different vault id or version ends the stream. A part's heads digest is
//! [`crate::commit::heads_digest`] of its Automerge heads; a collection's digest is
//! its part's, or [`parts_digest`] of its parts'. A `Summary` lists every collection's
//! name and digest; the two sides compare their [`fingerprint`]s. Equal: the two
//! devices hold the same changes, and nothing more is sent (one round trip, and no
//! document is read). Otherwise each side that sees a different fingerprint sends
//! `Digests` of the collections whose digest differs from the other's `Summary` (or
//! that it lacks), and each side starts Automerge sync (`Doc` frames) for every part
//! of such a collection whose digest the other side does not have; from then on, and
//! for every later local change, each side sends the Automerge sync messages its sync
//! state for that part produces and answers every message it receives, until neither
//! has anything to say. A part the other side does not have at all (its `Digests`
//! does not list it, or neither its `Summary` nor its `Digests` lists the collection:
//! a new device) is sent `Whole` instead: the document as it is stored, which the
//! receiver keeps as it came (or merges, if it has written to that part meanwhile)
//! and then syncs as any part, so that both learn each other's heads. A malformed
//! frame ends the stream (never the node).
//!
//! Versions 1 to 3 (`/hearth/sync/1` to `/3`: 1 and 2 without parts, 3 without
//! `Whole` and with a `Summary` of the fingerprint alone) are refused: a device that still speaks one is told this one's version
//! and logged as needing an upgrade.

use crate::names::CollectionName;

pub const SYNC_PROTOCOL: &str = "/hearth/sync/4";
pub const SYNC_VERSION: u8 = 4;
/// The protocols of Hearth before sync version 4: accepted only to say "upgrade".
pub const LEGACY_SYNC_PROTOCOLS: [&str; 3] = ["/hearth/sync/1", "/hearth/sync/2", "/hearth/sync/3"];
/// Largest frame body accepted. An Automerge sync message carries the changes the
/// other side lacks, so a first sync of a large collection is big, but bounded.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

const TAG_HELLO: u8 = 1;
const TAG_DOC: u8 = 2;
const TAG_SUMMARY: u8 = 3;
const TAG_DIGESTS: u8 = 4;
const TAG_WHOLE: u8 = 5;
const DIGEST: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncFrame {
    Hello {
        version: u8,
        vault_id: [u8; 16],
    },
    Doc {
        collection: CollectionName,
        part: u16,
        message: Vec<u8>,
    },
    /// What a device holds: every collection's name and digest, in name order (their
    /// [`fingerprint`] is what two devices compare first).
    Summary(Vec<(CollectionName, [u8; 32])>),
    /// Every collection's name and its parts' heads digests, in name order.
    Digests(Vec<(CollectionName, PartDigests)>),
    /// A part the peer has nothing of, as it is stored: a saved Automerge document.
    Whole {
        collection: CollectionName,
        part: u16,
        document: Vec<u8>,
    },
}

/// A collection's parts and each one's heads digest, in part order (at least one).
pub type PartDigests = Vec<(u16, [u8; 32])>;

/// Each collection's digest ([`parts_digest`] of its parts'), from its parts' digests.
pub fn collection_digests(
    parts: &[(CollectionName, PartDigests)],
) -> Vec<(CollectionName, [u8; 32])> {
    parts
        .iter()
        .map(|(name, parts)| (name.clone(), parts_digest(parts)))
        .collect()
}

/// The digest of a collection kept in several parts: BLAKE3 of each part's number
/// and heads digest, in part order. (A collection of one part has that part's heads
/// digest.)
pub fn parts_digest(parts: &[(u16, [u8; 32])]) -> [u8; 32] {
    if let [(_, only)] = parts {
        return *only;
    }
    let mut hasher = blake3::Hasher::new_derive_key("hearth collection parts digest v1");
    for (part, digest) in parts {
        hasher.update(&part.to_be_bytes());
        hasher.update(digest);
    }
    *hasher.finalize().as_bytes()
}

/// The fingerprint of a device's collections: BLAKE3 of each collection's name (with
/// its length) and heads digest, in name order. Equal fingerprints, equal heads.
pub fn fingerprint(digests: &[(CollectionName, [u8; 32])]) -> [u8; 32] {
    let mut sorted: Vec<&(CollectionName, [u8; 32])> = digests.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = blake3::Hasher::new_derive_key("hearth sync fingerprint v1");
    for (name, digest) in sorted {
        let name = name.as_str().as_bytes();
        hasher.update(&[u8::try_from(name.len()).expect("collection names are at most 63 bytes")]);
        hasher.update(name);
        hasher.update(digest);
    }
    *hasher.finalize().as_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0}")]
    UnknownTag(u8),
    #[error("frame is truncated")]
    Truncated,
    #[error("frame is {0} bytes, over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("frame names an invalid collection")]
    BadCollection,
    #[error("frame has {0} bytes after its end")]
    Trailing(usize),
    #[error("digests are not in name order, or name a collection twice")]
    Unordered,
    #[error("a collection's digests name no part, or parts out of order")]
    BadParts,
}

impl SyncFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            SyncFrame::Hello { version, vault_id } => {
                let mut out = vec![TAG_HELLO, *version];
                out.extend_from_slice(vault_id);
                out
            }
            SyncFrame::Doc {
                collection,
                part,
                message,
            } => part_frame(TAG_DOC, collection, *part, message),
            SyncFrame::Whole {
                collection,
                part,
                document,
            } => part_frame(TAG_WHOLE, collection, *part, document),
            SyncFrame::Summary(digests) => {
                let mut out = Vec::with_capacity(5 + digests.len() * (2 + DIGEST + 16));
                out.push(TAG_SUMMARY);
                let count = u32::try_from(digests.len()).expect("fewer than 2^32 collections");
                out.extend_from_slice(&count.to_be_bytes());
                for (name, digest) in digests {
                    push_name(&mut out, name);
                    out.extend_from_slice(digest);
                }
                out
            }
            SyncFrame::Digests(digests) => {
                let mut out = Vec::with_capacity(5 + digests.len() * (6 + DIGEST + 16));
                out.push(TAG_DIGESTS);
                let count = u32::try_from(digests.len()).expect("fewer than 2^32 collections");
                out.extend_from_slice(&count.to_be_bytes());
                for (name, parts) in digests {
                    push_name(&mut out, name);
                    let count = u16::try_from(parts.len()).expect("at most 65,535 parts");
                    out.extend_from_slice(&count.to_be_bytes());
                    for (part, digest) in parts {
                        out.extend_from_slice(&part.to_be_bytes());
                        out.extend_from_slice(digest);
                    }
                }
                out
            }
        }
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        if body.len() > MAX_FRAME {
            return Err(FrameError::TooLarge(body.len()));
        }
        let (&tag, rest) = body.split_first().ok_or(FrameError::Empty)?;
        match tag {
            TAG_HELLO => {
                if rest.len() < 17 {
                    return Err(FrameError::Truncated);
                }
                if rest.len() > 17 {
                    return Err(FrameError::Trailing(rest.len() - 17));
                }
                Ok(SyncFrame::Hello {
                    version: rest[0],
                    vault_id: rest[1..17].try_into().expect("length checked"),
                })
            }
            TAG_DOC => {
                let (collection, part, message) = take_part(rest)?;
                Ok(SyncFrame::Doc {
                    collection,
                    part,
                    message: message.to_vec(),
                })
            }
            TAG_WHOLE => {
                let (collection, part, document) = take_part(rest)?;
                Ok(SyncFrame::Whole {
                    collection,
                    part,
                    document: document.to_vec(),
                })
            }
            // Each entry is at least 2 + 32 bytes.
            TAG_SUMMARY => Ok(SyncFrame::Summary(take_named(
                rest,
                2 + DIGEST,
                take_digest,
            )?)),
            // Each entry is at least 2 + 2 + 2 + 32 bytes, each part 2 + 32.
            TAG_DIGESTS => Ok(SyncFrame::Digests(take_named(rest, 6 + DIGEST, |after| {
                let (parts, mut after) = take::<2>(after)?;
                let parts = usize::from(u16::from_be_bytes(parts));
                if parts == 0 {
                    return Err(FrameError::BadParts);
                }
                if parts > after.len() / (2 + DIGEST) {
                    return Err(FrameError::Truncated);
                }
                let mut list: PartDigests = Vec::with_capacity(parts);
                for _ in 0..parts {
                    let (part, next) = take::<2>(after)?;
                    let (digest, next) = take_digest(next)?;
                    let part = u16::from_be_bytes(part);
                    if list.last().is_some_and(|(last, _)| *last >= part) {
                        return Err(FrameError::BadParts);
                    }
                    list.push((part, digest));
                    after = next;
                }
                Ok((list, after))
            })?)),
            other => Err(FrameError::UnknownTag(other)),
        }
    }
}

/// `u32be count ‖ (u8 len(name) ‖ collection name ‖ value)*`, names in strict order
/// and nothing after the last entry; `value` reads each value from what follows its
/// name. An entry takes at least `least` bytes: a count the frame cannot hold is
/// refused before anything is allocated for it.
fn take_named<T>(
    bytes: &[u8],
    least: usize,
    value: impl for<'a> Fn(&'a [u8]) -> Result<(T, &'a [u8]), FrameError>,
) -> Result<Vec<(CollectionName, T)>, FrameError> {
    let (count, mut rest) = take::<4>(bytes)?;
    let count = u32::from_be_bytes(count) as usize;
    if count > rest.len() / least {
        return Err(FrameError::Truncated);
    }
    let mut entries: Vec<(CollectionName, T)> = Vec::with_capacity(count);
    for _ in 0..count {
        let (name, after) = take_name(rest)?;
        if entries.last().is_some_and(|(last, _)| *last >= name) {
            return Err(FrameError::Unordered);
        }
        let (value, after) = value(after)?;
        entries.push((name, value));
        rest = after;
    }
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(entries)
}

/// A frame about one part: `tag ‖ u8 len(name) ‖ name ‖ part u16be ‖ body`.
fn part_frame(tag: u8, collection: &CollectionName, part: u16, body: &[u8]) -> Vec<u8> {
    let name = collection.as_str().as_bytes();
    let mut out = Vec::with_capacity(4 + name.len() + body.len());
    out.push(tag);
    push_name(&mut out, collection);
    out.extend_from_slice(&part.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The collection, part and body of a frame about one part (after its tag).
fn take_part(bytes: &[u8]) -> Result<(CollectionName, u16, &[u8]), FrameError> {
    let (collection, rest) = take_name(bytes)?;
    let (part, rest) = take::<2>(rest)?;
    Ok((collection, u16::from_be_bytes(part), rest))
}

fn push_name(out: &mut Vec<u8>, name: &CollectionName) {
    let name = name.as_str().as_bytes();
    out.push(u8::try_from(name.len()).expect("collection names are at most 63 bytes"));
    out.extend_from_slice(name);
}

fn take<const N: usize>(bytes: &[u8]) -> Result<([u8; N], &[u8]), FrameError> {
    if bytes.len() < N {
        return Err(FrameError::Truncated);
    }
    let (head, rest) = bytes.split_at(N);
    Ok((head.try_into().expect("length checked"), rest))
}

fn take_digest(bytes: &[u8]) -> Result<([u8; 32], &[u8]), FrameError> {
    take::<DIGEST>(bytes)
}

fn take_name(bytes: &[u8]) -> Result<(CollectionName, &[u8]), FrameError> {
    let (&len, rest) = bytes.split_first().ok_or(FrameError::Truncated)?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(FrameError::Truncated);
    }
    let name = std::str::from_utf8(&rest[..len]).map_err(|_| FrameError::BadCollection)?;
    let name = CollectionName::parse(name).map_err(|_| FrameError::BadCollection)?;
    Ok((name, &rest[len..]))
}

/// The 4-byte length prefix of a frame, checked against [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// `/hearth/removed/1`: a device of the vault tells a device it removed that it was
/// removed, so that one says so instead of writing into the void. One message, then
/// the stream ends: `vault id (16) ‖ removed_at u64be` (Unix seconds). Accepted only
/// from a device the receiver counts as a member of the same vault.
pub const REMOVED_PROTOCOL: &str = "/hearth/removed/1";
pub const REMOVED_NOTICE_LEN: usize = 24;

pub fn encode_removed(vault_id: &[u8; 16], removed_at: u64) -> [u8; REMOVED_NOTICE_LEN] {
    let mut out = [0u8; REMOVED_NOTICE_LEN];
    out[..16].copy_from_slice(vault_id);
    out[16..].copy_from_slice(&removed_at.to_be_bytes());
    out
}

pub fn decode_removed(bytes: &[u8; REMOVED_NOTICE_LEN]) -> ([u8; 16], u64) {
    let mut vault = [0u8; 16];
    vault.copy_from_slice(&bytes[..16]);
    let mut at = [0u8; 8];
    at.copy_from_slice(&bytes[16..]);
    (vault, u64::from_be_bytes(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(name in "[a-z][a-z0-9_-]{0,20}", part in any::<u16>(), message in proptest::collection::vec(any::<u8>(), 0..300), vault in any::<[u8; 16]>()) {
            let doc = SyncFrame::Doc { collection: CollectionName::parse(&name).unwrap(), part, message: message.clone() };
            prop_assert_eq!(SyncFrame::decode(&doc.encode()).unwrap(), doc);
            let whole = SyncFrame::Whole { collection: CollectionName::parse(&name).unwrap(), part, document: message };
            prop_assert_eq!(SyncFrame::decode(&whole.encode()).unwrap(), whole);
            let hello = SyncFrame::Hello { version: SYNC_VERSION, vault_id: vault };
            prop_assert_eq!(SyncFrame::decode(&hello.encode()).unwrap(), hello);
        }

        #[test]
        fn summaries_and_digests_round_trip(
            names in proptest::collection::btree_set("_?[a-z][a-z0-9_-]{0,20}", 0..20),
            seed in any::<u8>(),
        ) {
            let digests: Vec<(CollectionName, PartDigests)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let parts = (0..=(i as u16 % 3)).map(|p| (p * 7, [seed.wrapping_add(i as u8); 32])).collect();
                    (CollectionName::parse(n).unwrap(), parts)
                })
                .collect();
            let frame = SyncFrame::Digests(digests.clone());
            prop_assert_eq!(SyncFrame::decode(&frame.encode()).unwrap(), frame);
            let collections: Vec<(CollectionName, [u8; 32])> =
                digests.iter().map(|(n, p)| (n.clone(), parts_digest(p))).collect();
            let summary = SyncFrame::Summary(collections);
            prop_assert_eq!(SyncFrame::decode(&summary.encode()).unwrap(), summary.clone());
            // Any cut of the frame is refused, never misread.
            let bytes = summary.encode();
            for cut in 1..bytes.len() {
                prop_assert!(SyncFrame::decode(&bytes[..cut]).is_err());
            }
            // Any cut of the frame is refused, never misread.
            let bytes = SyncFrame::Digests(digests).encode();
            for cut in 1..bytes.len() {
                prop_assert!(SyncFrame::decode(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = SyncFrame::decode(&bytes);
        }
    }

    #[test]
    fn a_collection_of_one_part_has_its_digest_and_parts_are_hashed_in_order() {
        assert_eq!(parts_digest(&[(0, [5; 32])]), [5; 32]);
        let two = parts_digest(&[(0, [1; 32]), (3, [2; 32])]);
        assert_ne!(two, parts_digest(&[(0, [1; 32]), (4, [2; 32])]));
        assert_ne!(two, parts_digest(&[(0, [2; 32]), (3, [1; 32])]));
    }

    #[test]
    fn the_fingerprint_follows_names_and_digests_not_their_order() {
        let a = (CollectionName::parse("a").unwrap(), [1; 32]);
        let b = (CollectionName::parse("b").unwrap(), [2; 32]);
        let ab = fingerprint(&[a.clone(), b.clone()]);
        assert_eq!(ab, fingerprint(&[b.clone(), a.clone()]));
        assert_ne!(ab, fingerprint(std::slice::from_ref(&a)));
        assert_ne!(ab, fingerprint(&[a, (b.0, [3; 32])]));
        // The name's length is hashed: "ab"+digest is not "a"+"b…".
        let joined = (CollectionName::parse("ab").unwrap(), [2; 32]);
        assert_ne!(
            fingerprint(&[joined]),
            fingerprint(&[(CollectionName::parse("a").unwrap(), [2; 32])])
        );
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(SyncFrame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(SyncFrame::decode(&[9]), Err(FrameError::UnknownTag(9)));
        assert_eq!(SyncFrame::decode(&[1, 1, 2]), Err(FrameError::Truncated));
        assert_eq!(SyncFrame::decode(&[2, 5, b'a']), Err(FrameError::Truncated));
        assert_eq!(
            SyncFrame::decode(&[2, 1, b'a', 0]),
            Err(FrameError::Truncated),
            "a Doc frame names its part"
        );
        assert_eq!(
            SyncFrame::decode(&[5, 1, b'a', 0]),
            Err(FrameError::Truncated),
            "a Whole frame names its part"
        );
        assert_eq!(
            SyncFrame::decode(&[2, 2, b'A', b'b']),
            Err(FrameError::BadCollection)
        );
        assert!(frame_len((MAX_FRAME as u32 + 1).to_be_bytes()).is_err());
        // A count the frame cannot hold, and digests out of order or twice.
        assert_eq!(
            SyncFrame::decode(&[4, 0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::Truncated)
        );
        let entry = |name: &str, parts: &[u16]| {
            let mut e = vec![name.len() as u8];
            e.extend_from_slice(name.as_bytes());
            e.extend_from_slice(&(parts.len() as u16).to_be_bytes());
            for part in parts {
                e.extend_from_slice(&part.to_be_bytes());
                e.extend_from_slice(&[0; 32]);
            }
            e
        };
        for names in [["b", "a"], ["a", "a"]] {
            let mut frame = vec![4, 0, 0, 0, 2];
            frame.extend(entry(names[0], &[0]));
            frame.extend(entry(names[1], &[0]));
            assert_eq!(SyncFrame::decode(&frame), Err(FrameError::Unordered));
        }
        for parts in [&[][..], &[1, 1], &[2, 1]] {
            let mut frame = vec![4, 0, 0, 0, 1];
            frame.extend(entry("a", parts));
            frame.extend_from_slice(&[0; 34]);
            assert_eq!(
                SyncFrame::decode(&frame),
                Err(FrameError::BadParts),
                "{parts:?}"
            );
        }
        // A summary's entries: names in strict order, each with its whole digest, and
        // nothing after the last.
        let summary = |names: &[&str]| {
            let mut frame = vec![3];
            frame.extend_from_slice(&(names.len() as u32).to_be_bytes());
            for name in names {
                frame.push(name.len() as u8);
                frame.extend_from_slice(name.as_bytes());
                frame.extend_from_slice(&[7; 32]);
            }
            frame
        };
        assert!(
            matches!(SyncFrame::decode(&summary(&["a", "b"])), Ok(SyncFrame::Summary(d)) if d.len() == 2)
        );
        assert_eq!(
            SyncFrame::decode(&summary(&["b", "a"])),
            Err(FrameError::Unordered)
        );
        assert_eq!(
            SyncFrame::decode(&summary(&["a", "a"])),
            Err(FrameError::Unordered)
        );
        let mut trailing = summary(&["a"]);
        trailing.push(0);
        assert_eq!(SyncFrame::decode(&trailing), Err(FrameError::Trailing(1)));
        assert_eq!(
            SyncFrame::decode(&[3, 0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::Truncated),
            "a count the frame cannot hold"
        );
        assert_eq!(frame_len(5u32.to_be_bytes()), Ok(5));
    }
}
