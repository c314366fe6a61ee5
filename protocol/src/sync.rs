//! The sync protocol `/hearth/sync/1`: frames exchanged between two devices of a vault.
//!
//! A stream carries frames, each `u32be length ‖ body` with `length <= MAX_FRAME`.
//! Bodies:
//!
//! ```text
//! 0x01 Hello  ‖ protocol version u8 (1) ‖ vault id (16)
//! 0x02 Doc    ‖ u8 len(name) ‖ collection name ‖ Automerge sync message (rest)
//! ```
//!
//! Each side sends `Hello` first; a different vault id or version ends the stream.
//! Then each side sends, per collection, the Automerge sync messages its sync state
//! produces, and answers every message it receives, until neither has anything to say.
//! A malformed frame ends the stream (never the node).

use crate::names::CollectionName;

pub const SYNC_PROTOCOL: &str = "/hearth/sync/1";
pub const SYNC_VERSION: u8 = 1;
/// Largest frame body accepted. An Automerge sync message carries the changes the
/// other side lacks, so a first sync of a large collection is big, but bounded.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

const TAG_HELLO: u8 = 1;
const TAG_DOC: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncFrame {
    Hello {
        version: u8,
        vault_id: [u8; 16],
    },
    Doc {
        collection: CollectionName,
        message: Vec<u8>,
    },
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
                message,
            } => {
                let name = collection.as_str().as_bytes();
                let mut out = Vec::with_capacity(2 + name.len() + message.len());
                out.push(TAG_DOC);
                out.push(u8::try_from(name.len()).expect("collection names are at most 63 bytes"));
                out.extend_from_slice(name);
                out.extend_from_slice(message);
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
                let (&len, rest) = rest.split_first().ok_or(FrameError::Truncated)?;
                let len = usize::from(len);
                if rest.len() < len {
                    return Err(FrameError::Truncated);
                }
                let name =
                    std::str::from_utf8(&rest[..len]).map_err(|_| FrameError::BadCollection)?;
                let collection =
                    CollectionName::parse(name).map_err(|_| FrameError::BadCollection)?;
                Ok(SyncFrame::Doc {
                    collection,
                    message: rest[len..].to_vec(),
                })
            }
            other => Err(FrameError::UnknownTag(other)),
        }
    }
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
        fn round_trip(name in "[a-z][a-z0-9_-]{0,20}", message in proptest::collection::vec(any::<u8>(), 0..300), vault in any::<[u8; 16]>()) {
            let doc = SyncFrame::Doc { collection: CollectionName::parse(&name).unwrap(), message };
            prop_assert_eq!(SyncFrame::decode(&doc.encode()).unwrap(), doc);
            let hello = SyncFrame::Hello { version: SYNC_VERSION, vault_id: vault };
            prop_assert_eq!(SyncFrame::decode(&hello.encode()).unwrap(), hello);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = SyncFrame::decode(&bytes);
        }
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(SyncFrame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(SyncFrame::decode(&[9]), Err(FrameError::UnknownTag(9)));
        assert_eq!(SyncFrame::decode(&[1, 1, 2]), Err(FrameError::Truncated));
        assert_eq!(SyncFrame::decode(&[2, 5, b'a']), Err(FrameError::Truncated));
        assert_eq!(
            SyncFrame::decode(&[2, 2, b'A', b'b']),
            Err(FrameError::BadCollection)
        );
        assert!(frame_len((MAX_FRAME as u32 + 1).to_be_bytes()).is_err());
        assert_eq!(frame_len(5u32.to_be_bytes()), Ok(5));
    }
}
