//! A batch of mail messages as the CLI sends them to the node to import
//! (`POST /v1/collections/{c}/mail`): each message's bytes exactly as they came in,
//! with where it came from (folder, flags, the mbox `From ` line).
//!
//! Binary, because messages are bytes (8-bit, any charset) and a batch is large:
//! `version (1) ‖ count (u32 BE)`, then per message `head length (u32 BE) ‖ head (JSON:
//! {"folder", "flags", "mbox_from"?, "view"?}) ‖ message length (u32 BE) ‖ message`. Every
//! length is checked against what is left; a batch holds at most
//! [`MAX_BATCH_MESSAGES`] messages.

use serde::{Deserialize, Serialize};

pub const BATCH_VERSION: u8 = 1;
/// The most messages one batch carries.
pub const MAX_BATCH_MESSAGES: usize = 4096;
/// The longest folder name.
pub const MAX_FOLDER_LEN: usize = 512;
/// The most flags a message carries, and the longest flag.
pub const MAX_FLAGS: usize = 32;
pub const MAX_FLAG_LEN: usize = 64;
/// The longest mbox `From ` line.
pub const MAX_MBOX_FROM_LEN: usize = 1024;

/// One message to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailItem {
    /// The folder it was found in (`INBOX`, `Sent`, `Archive/2024`).
    pub folder: String,
    /// Its flags, as names: `seen`, `answered`, `flagged`, `draft`, `deleted`,
    /// `forwarded`, or an IMAP keyword.
    pub flags: Vec<String>,
    /// The mbox `From ` line it had (without `From ` and the line end), if it came
    /// from an mbox file: an export writes it back.
    pub mbox_from: Option<String>,
    /// The message, byte for byte.
    pub bytes: Vec<u8>,
    /// Whether the folder is a view of the mailbox rather than a place of its own (an
    /// IMAP `\All` or `\Flagged` folder, such as Gmail's "All Mail"): a message the
    /// vault holds already gets nothing from it; a new one is kept under `folder`.
    pub view: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    folder: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mbox_from: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    view: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a batch could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("a mail batch of version {0} (this node reads version {BATCH_VERSION})")]
    Version(u8),
    #[error("a mail batch ends inside message {0}")]
    Truncated(usize),
    #[error("a mail batch holds {0} messages; at most {MAX_BATCH_MESSAGES}")]
    TooMany(usize),
    #[error("message {index} of the batch: {reason}")]
    Head { index: usize, reason: String },
    #[error("a mail batch has {0} bytes after its last message")]
    Trailing(usize),
}

/// Writes a batch.
pub fn encode_batch(items: &[MailItem]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + items.iter().map(|i| i.bytes.len() + 64).sum::<usize>());
    out.push(BATCH_VERSION);
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for item in items {
        let head = serde_json::to_vec(&Head {
            folder: item.folder.clone(),
            flags: item.flags.clone(),
            mbox_from: item.mbox_from.clone(),
            view: item.view,
        })
        .expect("a head serializes");
        out.extend_from_slice(&(head.len() as u32).to_be_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&(item.bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&item.bytes);
    }
    out
}

/// Reads a batch, checking every length and every head.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<MailItem>, BatchError> {
    let (&version, mut rest) = bytes.split_first().ok_or(BatchError::Truncated(0))?;
    if version != BATCH_VERSION {
        return Err(BatchError::Version(version));
    }
    let count = take_u32(&mut rest).ok_or(BatchError::Truncated(0))? as usize;
    if count > MAX_BATCH_MESSAGES {
        return Err(BatchError::TooMany(count));
    }
    let mut items = Vec::with_capacity(count);
    for index in 0..count {
        let head = take_frame(&mut rest).ok_or(BatchError::Truncated(index))?;
        let head: Head = serde_json::from_slice(head).map_err(|e| BatchError::Head {
            index,
            reason: e.to_string(),
        })?;
        check_head(&head).map_err(|reason| BatchError::Head { index, reason })?;
        let message = take_frame(&mut rest).ok_or(BatchError::Truncated(index))?;
        items.push(MailItem {
            folder: head.folder,
            flags: head.flags,
            mbox_from: head.mbox_from,
            bytes: message.to_vec(),
            view: head.view,
        });
    }
    if !rest.is_empty() {
        return Err(BatchError::Trailing(rest.len()));
    }
    Ok(items)
}

fn check_head(head: &Head) -> Result<(), String> {
    let printable = |s: &str| !s.chars().any(char::is_control);
    if head.folder.is_empty() || head.folder.len() > MAX_FOLDER_LEN || !printable(&head.folder) {
        return Err(format!(
            "a folder name must be 1 to {MAX_FOLDER_LEN} bytes without control characters"
        ));
    }
    if head.flags.len() > MAX_FLAGS
        || head
            .flags
            .iter()
            .any(|f| f.is_empty() || f.len() > MAX_FLAG_LEN || !printable(f))
    {
        return Err(format!(
            "at most {MAX_FLAGS} flags of 1 to {MAX_FLAG_LEN} bytes without control characters"
        ));
    }
    if head
        .mbox_from
        .as_ref()
        .is_some_and(|f| f.len() > MAX_MBOX_FROM_LEN || !printable(f))
    {
        return Err(format!(
            "an mbox From line of at most {MAX_MBOX_FROM_LEN} bytes on one line"
        ));
    }
    Ok(())
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (n, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(u32::from_be_bytes(*n))
}

fn take_frame<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_u32(rest)? as usize;
    if rest.len() < len {
        return None;
    }
    let (frame, tail) = rest.split_at(len);
    *rest = tail;
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item() -> impl Strategy<Value = MailItem> {
        (
            "[A-Za-z0-9/ ]{1,20}",
            proptest::collection::vec("[a-z]{1,10}", 0..4),
            proptest::option::of("[ -~]{0,40}"),
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<bool>(),
        )
            .prop_map(|(folder, flags, mbox_from, bytes, view)| MailItem {
                folder,
                flags,
                mbox_from,
                bytes,
                view,
            })
    }

    proptest! {
        #[test]
        fn a_batch_reads_back_as_written(items in proptest::collection::vec(item(), 0..8)) {
            prop_assert_eq!(decode_batch(&encode_batch(&items)).unwrap(), items);
        }

        /// Any cut of a batch, and any bytes at all, are refused or read without a panic.
        #[test]
        fn a_cut_or_junk_batch_is_an_error_not_a_panic(
            items in proptest::collection::vec(item(), 1..4),
            cut in any::<prop::sample::Index>(),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let whole = encode_batch(&items);
            let at = cut.index(whole.len());
            prop_assert!(decode_batch(&whole[..at]).is_err());
            let _ = decode_batch(&junk);
        }
    }

    #[test]
    fn bad_heads_and_versions_are_named() {
        let good = MailItem {
            folder: "INBOX".into(),
            flags: vec!["seen".into()],
            mbox_from: None,
            bytes: b"Subject: x\r\n\r\nhi\r\n".to_vec(),
            view: false,
        };
        let mut batch = encode_batch(std::slice::from_ref(&good));
        batch[0] = 9;
        assert_eq!(decode_batch(&batch), Err(BatchError::Version(9)));
        let bad = MailItem {
            folder: "a\nb".into(),
            ..good.clone()
        };
        assert!(matches!(
            decode_batch(&encode_batch(&[good.clone(), bad])),
            Err(BatchError::Head { index: 1, .. })
        ));
        let mut batch = encode_batch(std::slice::from_ref(&good));
        batch.push(0);
        assert_eq!(decode_batch(&batch), Err(BatchError::Trailing(1)));
        // A count over the limit is refused before anything is read or reserved.
        let mut many = vec![BATCH_VERSION];
        many.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_batch(&many),
            Err(BatchError::TooMany(u32::MAX as usize))
        );
        let too_many = vec![good; MAX_BATCH_MESSAGES + 1];
        assert_eq!(
            decode_batch(&encode_batch(&too_many)),
            Err(BatchError::TooMany(MAX_BATCH_MESSAGES + 1))
        );
    }
}
