//! The backup host: what a vault's devices and a host that keeps their backups must
//! agree on, and what the host can and cannot see.
//!
//! A host keeps, per enrolled vault, **objects** and a chain of **manifests**, under the
//! vault's *handle* (16 bytes the recovery kit derives; nothing else names the vault on
//! the host). Everything but the few clear fields below is sealed under keys derived
//! from the vault's epoch key `E_n`, which only the vault's devices and its recovery kit
//! can open.
//!
//! An **object** (a part's Automerge changes, a blob chunk, a blob's chunk list, the
//! vault's shared secrets) is:
//!
//! ```text
//! 0..4    the epoch n (u32be), in the clear
//! 4..     a sealed value (crate::seal, version 1) under object_key(E_n, handle),
//!         bound to ("backup-object", n), of: u32be length ‖ data ‖ zeros
//! ```
//!
//! padded so its size says only its bucket ([`padded_len`]: 1, 2, 4 … KiB up to
//! 1 MiB, then whole MiB). The host names an object by
//! the BLAKE3 hash of its bytes, and checks that name on every upload.
//!
//! A **manifest** is a clear header the host checks, then a sealed body:
//!
//! ```text
//! 0..4      "HBM1"
//! 4..20     the vault's handle
//! 20..28    seq (u64be): 1, 2, 3 … with no gap
//! 28..60    prev: the BLAKE3 hash of manifest seq-1 (zeros for seq 1)
//! 60..64    the epoch n (u32be)
//! 64..66    length of the next field (u16be)
//! 66..      E_n sealed to the recovery kit (HPKE, see hearth_core::epochs::seal_key_to)
//! then      a sealed value under manifest_key(E_n, handle), bound to ("backup-manifest",
//!           the header before it), of the postcard encoding of [`ManifestBody`]
//! ```
//!
//! The host accepts a manifest only as the next of its chain (seq and prev), so it can
//! neither reorder nor drop one in the middle without the devices noticing; it cannot
//! read or forge one (it lacks E_n). The devices remember the last seq and hash they
//! saw from each host, and refuse a host that serves less.
//!
//! The wire protocol (`/hearth/backup/1`) is frames (u32be length ‖ bytes, as sync's)
//! each holding the postcard encoding of one [`Request`] or [`Response`].

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::invite::{Invite, InviteError};
use crate::seal::{Binding, NONCE_LEN, OpenError, SEAL_OVERHEAD, SealKey};

pub const BACKUP_PROTOCOL: &str = "/hearth/backup/1";
/// What a backup host's invite code starts with (a device's starts with `hearth1`).
pub const HOST_INVITE_PREFIX: &str = "hearthhost1";
pub const MANIFEST_MAGIC: &[u8; 4] = b"HBM1";
/// The smallest object bucket; objects are padded to 1, 2, 4 … KiB up to 1 MiB, then
/// to whole MiB.
pub const MIN_BUCKET: usize = 1024;
pub const MAX_POW2_BUCKET: usize = 1024 * 1024;
/// The largest object a host takes (a blob chunk is 1 MiB; a part's changes can be
/// larger and are split by the device into several objects of this size at most).
pub const MAX_OBJECT: usize = 16 * 1024 * 1024;
/// The largest manifest a host takes.
pub const MAX_MANIFEST: usize = 8 * 1024 * 1024;
/// Manifests one `Manifests` answer carries at most.
pub const MANIFESTS_PER_ANSWER: u32 = 64;

const OBJECT_DOMAIN: &[u8] = b"backup-object";
const MANIFEST_DOMAIN: &[u8] = b"backup-manifest";
const OBJECT_KEY_CONTEXT: &str = "hearth 2026-12 backup object key v1";
const MANIFEST_KEY_CONTEXT: &str = "hearth 2026-12 backup manifest key v1";
const TOKEN_CONTEXT: &str = "hearth 2026-12 backup upload token hash v1";
const EPOCH_TOKEN_CONTEXT: &str = "hearth 2026-12 backup upload token of an epoch v1";
const MANIFEST_HEADER_FIXED: usize = 4 + 16 + 8 + 32 + 4 + 2;

pub type ObjectId = [u8; 32];
pub type Handle = [u8; 16];

/// The name a host gives an object: the BLAKE3 hash of its bytes.
pub fn object_id(object: &[u8]) -> ObjectId {
    *blake3::hash(object).as_bytes()
}

/// What a host keeps of an upload token: its hash, so a copy of the host's disk does not
/// let anyone upload.
pub fn token_hash(token: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(TOKEN_CONTEXT, token)
}

/// The upload token the devices use on a host while `epoch_key` is the vault's current
/// epoch key: only the epoch's holders can derive it.
pub fn epoch_token(epoch_key: &[u8; 32], handle: &Handle) -> Zeroizing<[u8; 32]> {
    derived(EPOCH_TOKEN_CONTEXT, epoch_key, handle)
}

fn derived(context: &str, epoch_key: &[u8; 32], handle: &Handle) -> Zeroizing<[u8; 32]> {
    let mut material = Zeroizing::new(Vec::with_capacity(48));
    material.extend_from_slice(epoch_key);
    material.extend_from_slice(handle);
    Zeroizing::new(blake3::derive_key(context, &material))
}

/// The size an object's plaintext is padded to: its 4-byte length, then the data and
/// zeros up to the data's bucket (a 1 MiB blob chunk stays in the 1 MiB bucket).
pub fn padded_len(data_len: usize) -> usize {
    let bucket = if data_len <= MAX_POW2_BUCKET {
        data_len.next_power_of_two().max(MIN_BUCKET)
    } else {
        data_len.div_ceil(MAX_POW2_BUCKET) * MAX_POW2_BUCKET
    };
    4 + bucket
}

/// Errors reading what a host keeps or answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackupFormatError {
    #[error("the backup object is truncated ({0} bytes)")]
    ObjectTruncated(usize),
    #[error("the backup object is sealed under epoch {found}, not {expected}")]
    WrongEpoch { expected: u32, found: u32 },
    #[error("the backup object does not open: {0}")]
    ObjectSeal(OpenError),
    #[error("the backup object's padding is malformed")]
    Padding,
    #[error("the manifest is malformed: {0}")]
    Manifest(&'static str),
    #[error("the manifest does not open: {0}")]
    ManifestSeal(OpenError),
    #[error("the manifest's body cannot be read: {0}")]
    ManifestBody(String),
}

/// The epoch an object was sealed under (its clear prefix).
pub fn object_epoch(object: &[u8]) -> Result<u32, BackupFormatError> {
    let prefix = object
        .get(..4)
        .ok_or(BackupFormatError::ObjectTruncated(object.len()))?;
    Ok(u32::from_be_bytes(prefix.try_into().expect("4 bytes")))
}

/// Seals `data` as an object of epoch `n`.
pub fn seal_object(
    epoch_key: &[u8; 32],
    handle: &Handle,
    n: u32,
    data: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let key = SealKey::from_bytes(*derived(OBJECT_KEY_CONTEXT, epoch_key, handle));
    let padded = padded_len(data.len());
    let mut plain = Zeroizing::new(Vec::with_capacity(padded));
    plain.extend_from_slice(
        &u32::try_from(data.len())
            .expect("objects are small")
            .to_be_bytes(),
    );
    plain.extend_from_slice(data);
    plain.resize(padded, 0);
    let epoch = n.to_be_bytes();
    let mut out = Vec::with_capacity(4 + padded + SEAL_OVERHEAD);
    out.extend_from_slice(&epoch);
    out.extend_from_slice(&key.seal(Binding::new(OBJECT_DOMAIN, &epoch), &plain, nonce));
    out
}

/// Opens an object sealed by [`seal_object`] under epoch `n`'s key.
pub fn open_object(
    epoch_key: &[u8; 32],
    handle: &Handle,
    n: u32,
    object: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BackupFormatError> {
    let found = object_epoch(object)?;
    if found != n {
        return Err(BackupFormatError::WrongEpoch { expected: n, found });
    }
    let key = SealKey::from_bytes(*derived(OBJECT_KEY_CONTEXT, epoch_key, handle));
    let plain = key
        .open(Binding::new(OBJECT_DOMAIN, &object[..4]), &object[4..])
        .map_err(BackupFormatError::ObjectSeal)?;
    let len = plain
        .get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or(BackupFormatError::Padding)?;
    let data = plain.get(4..4 + len).ok_or(BackupFormatError::Padding)?;
    if plain[4 + len..].iter().any(|b| *b != 0) {
        return Err(BackupFormatError::Padding);
    }
    Ok(Zeroizing::new(data.to_vec()))
}

/// A manifest's clear header, as the host reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHeader {
    pub handle: Handle,
    pub seq: u64,
    pub prev: [u8; 32],
    pub epoch: u32,
    /// `E_n` sealed to the recovery kit.
    pub kit_sealed: Vec<u8>,
}

impl ManifestHeader {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MANIFEST_HEADER_FIXED + self.kit_sealed.len());
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&self.handle);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.prev);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        let len = u16::try_from(self.kit_sealed.len()).expect("an HPKE-sealed key is short");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.kit_sealed);
        out
    }

    /// Reads the header of `manifest`, and where its sealed body starts.
    pub fn parse(manifest: &[u8]) -> Result<(Self, usize), BackupFormatError> {
        let bad = BackupFormatError::Manifest;
        if manifest.len() < MANIFEST_HEADER_FIXED {
            return Err(bad("shorter than its header"));
        }
        if &manifest[..4] != MANIFEST_MAGIC {
            return Err(bad("not a Hearth backup manifest (no HBM1)"));
        }
        let handle = manifest[4..20].try_into().expect("16 bytes");
        let seq = u64::from_be_bytes(manifest[20..28].try_into().expect("8 bytes"));
        let prev = manifest[28..60].try_into().expect("32 bytes");
        let epoch = u32::from_be_bytes(manifest[60..64].try_into().expect("4 bytes"));
        let len = usize::from(u16::from_be_bytes(manifest[64..66].try_into().expect("2")));
        let kit_sealed = manifest
            .get(66..66 + len)
            .ok_or(bad("its sealed key is cut short"))?
            .to_vec();
        if manifest.len() < 66 + len + SEAL_OVERHEAD {
            return Err(bad("its body is cut short"));
        }
        if seq == 0 {
            return Err(bad("its sequence number is 0"));
        }
        Ok((
            Self {
                handle,
                seq,
                prev,
                epoch,
                kit_sealed,
            },
            66 + len,
        ))
    }
}

/// What one manifest adds to a vault's backup on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestBody {
    /// Unix seconds when it was made.
    pub made_at: u64,
    /// The device that made it (its PeerId, as text).
    pub made_by: String,
    pub entries: Vec<Entry>,
}

/// One object a manifest adds, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// Automerge changes of one part of a collection: the whole part when `after` is
    /// empty, else the changes after those heads; `heads` are the part's heads once
    /// they are applied. Long changes span several objects, in order.
    Part {
        collection: String,
        part: u16,
        after: Vec<[u8; 32]>,
        heads: Vec<[u8; 32]>,
        objects: Vec<ObjectId>,
    },
    /// A blob's chunk list (`hearth_protocol::blob::Manifest`, its stored bytes).
    Blob { id: [u8; 32], object: ObjectId },
    /// One blob chunk's plaintext, named by the vault's keyed chunk hash.
    Chunk { hash: [u8; 32], object: ObjectId },
    /// The vault's shared secrets (vault id ‖ storage key ‖ signing key), so a restore
    /// makes the same names and blob ids.
    Secrets { object: ObjectId },
}

impl Entry {
    /// The objects this entry names.
    pub fn objects(&self) -> Vec<ObjectId> {
        match self {
            Entry::Part { objects, .. } => objects.clone(),
            Entry::Blob { object, .. }
            | Entry::Chunk { object, .. }
            | Entry::Secrets { object } => {
                vec![*object]
            }
        }
    }
}

/// Seals a manifest: `header` (its `kit_sealed` already made), then `body`.
pub fn seal_manifest(
    epoch_key: &[u8; 32],
    header: &ManifestHeader,
    body: &ManifestBody,
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let mut out = header.encode();
    let key = SealKey::from_bytes(*derived(MANIFEST_KEY_CONTEXT, epoch_key, &header.handle));
    let plain = Zeroizing::new(postcard::to_stdvec(body).expect("a manifest body encodes"));
    let sealed = key.seal(Binding::new(MANIFEST_DOMAIN, &out), &plain, nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a manifest's body with its epoch's key (the caller found the key from the
/// header's epoch).
pub fn open_manifest(
    epoch_key: &[u8; 32],
    manifest: &[u8],
) -> Result<(ManifestHeader, ManifestBody), BackupFormatError> {
    let (header, at) = ManifestHeader::parse(manifest)?;
    let key = SealKey::from_bytes(*derived(MANIFEST_KEY_CONTEXT, epoch_key, &header.handle));
    let plain = key
        .open(
            Binding::new(MANIFEST_DOMAIN, &manifest[..at]),
            &manifest[at..],
        )
        .map_err(BackupFormatError::ManifestSeal)?;
    let body =
        postcard::from_bytes(&plain).map_err(|e| BackupFormatError::ManifestBody(e.to_string()))?;
    Ok((header, body))
}

/// What the owner key signs to open a vault to read: bound to the host's and the
/// device's PeerIds (as Noise authenticated them), so it cannot be replayed elsewhere.
pub fn owner_open_message(host: &[u8], device: &[u8], handle: &Handle) -> Vec<u8> {
    let mut message = b"hearth/backup/open-owner/v1".to_vec();
    message.push(u8::try_from(host.len()).expect("PeerIds are short"));
    message.extend_from_slice(host);
    message.push(u8::try_from(device.len()).expect("PeerIds are short"));
    message.extend_from_slice(device);
    message.extend_from_slice(handle);
    message
}

/// What the owner key signs to make manifest `seq` (whose hash is `hash`) the first
/// of the vault's chain on a host ([`Request::Rebase`]): the host drops the manifests
/// before it, and anyone who reads the chain from there checks this signature against
/// the kit's owner key, since that manifest's `prev` names one no longer served.
pub fn rebase_message(handle: &Handle, seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut message = b"hearth/backup/rebase/v1".to_vec();
    message.extend_from_slice(handle);
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

/// The hash a manifest's successor names as `prev`.
pub fn manifest_hash(manifest: &[u8]) -> [u8; 32] {
    *blake3::hash(manifest).as_bytes()
}

/// A device's request on `/hearth/backup/1`. Byte fields are encoded as bytes
/// (`serde_bytes`), not as sequences of numbers: a 1 MiB object is one copy, not a
/// million calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Enrolls a vault with an invite: `proof` is [`crate::invite::pairing_proof`] of the
    /// invite's secret over the host's and this device's PeerIds.
    Enroll {
        proof: [u8; 32],
        handle: Handle,
        token_hash: [u8; 32],
        /// The recovery kit's owner key (Ed25519): what opens the vault to read on an
        /// empty machine ([`Request::OpenOwner`]).
        owner: [u8; 32],
    },
    /// Opens the vault `handle` with its upload token (first on a stream, before any
    /// of the requests below).
    Open { handle: Handle, token: [u8; 32] },
    /// Opens the vault `handle` to read only, with the kit's owner key: its signature
    /// of [`owner_open_message`] (a restore, which has no upload token).
    OpenOwner {
        handle: Handle,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// Enrolls the vault again under a new handle (its recovery kit was replaced), on
    /// a stream opened with the upload token: a new chain, found by the new kit. The
    /// old one stays (the old kit still opens it) until its owner prunes it.
    Reenroll {
        handle: Handle,
        token_hash: [u8; 32],
        owner: [u8; 32],
    },
    /// Stores an object (named by its hash).
    Put {
        #[serde(with = "serde_bytes")]
        object: Vec<u8>,
    },
    /// Appends a manifest to the chain.
    Append {
        #[serde(with = "serde_bytes")]
        manifest: Vec<u8>,
    },
    /// Manifests with seq > `after`, in order, at most `limit`
    /// ([`MANIFESTS_PER_ANSWER`] at most).
    Manifests { after: u64, limit: u32 },
    /// One object's bytes.
    Get { id: ObjectId },
    /// Proof that the host holds an object: the bytes `offset..offset + len` of it
    /// (at most [`MAX_PROOF`]) with their BLAKE3 verified-streaming proof (a Bao slice)
    /// against the object's name.
    Prove { id: ObjectId, offset: u64, len: u32 },
    /// Replaces the vault's upload token (by its hash), on a stream opened with the
    /// current one: the devices move to a token derived from each new epoch key
    /// ([`epoch_token`]), so the token a removed device held stops opening the vault.
    SetToken { token_hash: [u8; 32] },
    /// Where the chain starts on the host: answered with [`Response::Base`].
    Base,
    /// Makes manifest `seq` the first of the chain (a manifest that holds the whole
    /// vault), dropping the ones before it; `signature` is the owner key's over
    /// [`rebase_message`]. Only on a stream opened with the owner key.
    Rebase {
        seq: u64,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// The names of the objects the host keeps for the vault, in order, after `after`,
    /// at most `limit` ([`OBJECTS_PER_ANSWER`] at most). Only with the owner key.
    Objects { after: Option<ObjectId>, limit: u32 },
    /// Deletes objects (at most [`OBJECTS_PER_ANSWER`]): what pruning frees. Only with
    /// the owner key: a device's upload token adds, never deletes.
    Drop { ids: Vec<ObjectId> },
    /// Deletes the vault from the host, everything it keeps: what a copy kept under a
    /// replaced recovery kit comes to. Only with the owner key (of that kit).
    Forget,
}

/// Object names one `Objects` answer carries, and one `Drop` names, at most.
pub const OBJECTS_PER_ANSWER: u32 = 4096;

/// The longest range a `Prove` asks for.
pub const MAX_PROOF: u32 = 16 * 1024;

/// A host's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Enrolled {
        quota: u64,
    },
    /// The vault is open: its newest manifest's seq and hash (0 and zeros if none), the
    /// bytes it uses and its quota.
    Opened {
        seq: u64,
        last: [u8; 32],
        bytes: u64,
        quota: u64,
    },
    Stored {
        bytes: u64,
    },
    Appended {
        seq: u64,
    },
    Manifests {
        manifests: Vec<serde_bytes::ByteBuf>,
    },
    Object {
        #[serde(with = "serde_bytes")]
        object: Option<Vec<u8>>,
    },
    /// The Bao slice of the range asked for; `None` if the host lacks the object.
    Proof {
        #[serde(with = "serde_bytes")]
        slice: Option<Vec<u8>>,
    },
    Refused {
        reason: String,
    },
    /// The upload token was replaced.
    TokenSet,
    /// The chain starts at manifest `seq` (1, with no signature, if it was never
    /// rebased), made first by the owner key's `signature` over [`rebase_message`].
    Base {
        seq: u64,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// The chain was rebased; the bytes the vault uses now.
    Rebased {
        bytes: u64,
    },
    ObjectIds {
        ids: Vec<ObjectId>,
    },
    /// Objects deleted; the bytes the vault uses now.
    Dropped {
        bytes: u64,
    },
    /// The vault was deleted; the bytes and objects it used.
    Forgotten {
        bytes: u64,
        objects: u64,
    },
}

pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    postcard::to_stdvec(message).expect("protocol messages encode")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

/// Encodes a host's invite: an [`Invite`] under [`HOST_INVITE_PREFIX`].
pub fn encode_host_invite(invite: &Invite) -> Zeroizing<String> {
    let code = invite.encode();
    let body = code
        .strip_prefix(crate::invite::INVITE_PREFIX)
        .expect("an invite starts with its prefix");
    Zeroizing::new(format!("{HOST_INVITE_PREFIX}{body}"))
}

/// Decodes a host's invite; a device's invite is refused, saying what it is.
pub fn decode_host_invite(code: &str) -> Result<Invite, HostInviteError> {
    let code = code.trim();
    match code.strip_prefix(HOST_INVITE_PREFIX) {
        Some(body) => Invite::decode(&format!("{}{body}", crate::invite::INVITE_PREFIX))
            .map_err(HostInviteError::Invite),
        None if code.starts_with(crate::invite::INVITE_PREFIX) => Err(HostInviteError::DeviceCode),
        None => Err(HostInviteError::Prefix),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostInviteError {
    #[error(
        "not a backup host's code (it should start with \"{HOST_INVITE_PREFIX}\"; `hearth host invite` on the host prints one)"
    )]
    Prefix,
    #[error(
        "this is a code to pair a device (`hearth join`), not a backup host's code (`hearth host invite` on the host prints one)"
    )]
    DeviceCode,
    #[error("{0}")]
    Invite(InviteError),
}

#[cfg(test)]
mod tests;
