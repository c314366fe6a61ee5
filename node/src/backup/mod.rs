//! Backups to hosts that see nothing (`hearth backup add`, `hearth backup status`): the
//! device side of [`hearth_protocol::backup`].
//!
//! A vault enrolls a host with the host's invite code; the host is then a record of
//! `_backup` (synced to every device: the host's PeerId and addresses, the vault's
//! handle there, and the upload token, which stays sealed at rest as every value). One
//! device at a time uploads (the one with the smallest PeerId among the members it is
//! connected to): what changed since the host's newest manifest, as
//!
//! - each part of each collection whose heads moved: its Automerge changes after the
//!   heads the host has (the whole part the first time), so one edited record uploads
//!   about a kilobyte;
//! - each blob chunk and blob chunk list the host lacks, sealed again under the epoch's
//!   backup key (nothing the host keeps is sealed under the storage key);
//! - once an epoch, the vault's shared secrets, so a restore makes the same names;
//!
//! then one manifest naming them, the next of the host's chain. The device keeps what
//! it knows of each host's chain ([`Progress`], sealed in the store's `backup` tree);
//! a host that answers with a shorter chain or another newest manifest than the one
//! this device saw is refused, saying so, and nothing is uploaded to it.
//!
//! Everything a host keeps is sealed under keys derived from the current epoch key,
//! and each manifest carries that key sealed to the recovery kit: so a vault needs a
//! recovery kit before it can add a host (a backup nobody could open on an empty
//! machine protects against nothing a second device does not).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_protocol::api::{
    BackupPruned, BackupStatus, BackupVerified, HostPruned, HostStatus, HostVerified,
};
use hearth_protocol::backup::{
    Entry, Handle, MANIFESTS_PER_ANSWER, ManifestBody, ManifestHeader, OBJECTS_PER_ANSWER,
    ObjectId, Request, Response, decode, decode_host_invite, encode, epoch_token, manifest_hash,
    object_id, open_manifest, owner_open_message, rebase_message, seal_manifest, seal_object,
    token_hash,
};
use hearth_protocol::invite::pairing_proof;
use hearth_protocol::{CollectionName, RecordId};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, oneshot};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::Vault;
use crate::epochs;
use crate::mesh::frames::{read_frame, write_frame};
use crate::recovery;

mod recover;
pub use recover::{Recovered, recover};

pub const BACKUP: &str = "_backup";
/// The store tree where a device keeps what it knows of each host's chain.
const PROGRESS_TREE: &str = "backup";
/// How long a host may take to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long reaching a host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `hearth backup status` waits for a host before it says what it knew.
const STATUS_WAIT: Duration = Duration::from_secs(5);
/// Changes settle this long before an upload starts.
const SETTLE: Duration = Duration::from_secs(2);
/// Uploads are tried again this often (a host that was away, a blob that arrived).
const AGAIN_EVERY: Duration = Duration::from_secs(300);
/// How soon a failed round is tried again (doubling each time, up to [`AGAIN_EVERY`]).
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// Objects sent to a host (or asked of it) before the first answer is awaited.
const IN_FLIGHT: usize = 8;
/// Blob chunks read from this device's store ahead of the one being sent.
const READ_AHEAD: usize = 3;
/// A part's changes are cut into objects of at most this size.
const PIECE: usize = 4 * 1024 * 1024;
/// A manifest is appended once its objects reach this size or entry count, so a long
/// first upload keeps what it did if it is cut short.
const MANIFEST_BYTES: usize = 64 * 1024 * 1024;
const MANIFEST_ENTRIES: usize = 4096;

pub fn collection() -> CollectionName {
    CollectionName::parse(BACKUP).expect("_backup is a valid name")
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Code(String),
    #[error(
        "make a recovery kit first (`hearth recovery-kit`): what a host keeps is opened with it on a new machine, and without one a backup could never be restored"
    )]
    NoKit,
    #[error(
        "this device does not hold the vault's current epoch key yet; try again once it has synced"
    )]
    NoEpochKey,
    #[error("the host {0} is already a backup host of this vault")]
    AlreadyAdded(PeerId),
    #[error("cannot reach the host {peer}: {reason}")]
    Unreachable { peer: PeerId, reason: String },
    #[error("the host {peer} refused: {reason}")]
    Refused { peer: PeerId, reason: String },
    #[error("the host {peer} answered something unexpected: {what}")]
    Protocol { peer: PeerId, what: String },
    #[error(
        "the host {peer} holds manifest {held}, but this vault has seen {seen} there: it lost or rolled back uploads; nothing more is sent to it until it serves them again (ask its operator)"
    )]
    RolledBack { peer: PeerId, held: u64, seen: u64 },
    #[error(
        "the host {peer} serves another manifest {seq} than the one this vault uploaded: it was altered; nothing more is sent to it"
    )]
    Altered { peer: PeerId, seq: u64 },
    #[error("the host {peer}'s manifest {seq} does not open or does not follow its chain: {why}")]
    BadChain { peer: PeerId, seq: u64, why: String },
    #[error("the mesh is not running (the node was started without it)")]
    NoMesh,
    #[error("{0} is not empty: restore into a new, empty HOME (--home)")]
    NotEmpty(String),
    #[error("the backup on the host {peer} is damaged: {what}")]
    Damaged { peer: PeerId, what: String },
    #[error("{0}")]
    Vault(String),
    #[error(
        "this kit is not the one the vault is kept under on the host {0}: give the vault's current recovery kit"
    )]
    WrongKit(PeerId),
    #[error(
        "{0} blob(s) are still arriving on this device: a prune here would leave them out of the backup; run it on a device that holds every blob, or once they have arrived"
    )]
    BlobsArriving(usize),
}

impl From<crate::collections::CollectionError> for BackupError {
    fn from(e: crate::collections::CollectionError) -> Self {
        BackupError::Vault(e.to_string())
    }
}

impl From<crate::store::StoreError> for BackupError {
    fn from(e: crate::store::StoreError) -> Self {
        BackupError::Vault(e.to_string())
    }
}

impl From<crate::blobs::BlobError> for BackupError {
    fn from(e: crate::blobs::BlobError) -> Self {
        BackupError::Vault(e.to_string())
    }
}

/// A host of `_backup`.
#[derive(Clone)]
pub struct HostRecord {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub handle: Handle,
    token: Zeroizing<[u8; 32]>,
    /// The key id of the epoch `token` was derived from (`None`: the token drawn at
    /// enrollment, or derived when the kit was replaced).
    token_epoch: Option<u32>,
    pub added_at: u64,
    pub added_by: String,
}

impl HostRecord {
    fn to_record(&self) -> serde_json::Map<String, Value> {
        let hex = data_encoding::HEXLOWER;
        match json!({
            "peer": self.peer.to_string(),
            "addrs": self.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "handle": hex.encode(&self.handle),
            "token": hex.encode(&*self.token),
            "token_epoch": self.token_epoch,
            "added_at": self.added_at,
            "added_by": self.added_by,
        }) {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        }
    }

    fn parse(record: &Value) -> Option<Self> {
        let hex = data_encoding::HEXLOWER;
        let text = |f: &str| record.get(f).and_then(Value::as_str);
        Some(Self {
            peer: text("peer")?.parse().ok()?,
            addrs: record
                .get("addrs")?
                .as_array()?
                .iter()
                .filter_map(|a| a.as_str()?.parse().ok())
                .collect(),
            handle: hex
                .decode(text("handle")?.as_bytes())
                .ok()?
                .try_into()
                .ok()?,
            token: Zeroizing::new(
                hex.decode(text("token")?.as_bytes())
                    .ok()?
                    .try_into()
                    .ok()?,
            ),
            token_epoch: record
                .get("token_epoch")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok()),
            added_at: record.get("added_at").and_then(Value::as_u64).unwrap_or(0),
            added_by: text("added_by").unwrap_or_default().to_owned(),
        })
    }
}

/// The vault's backup hosts, as this device knows them.
pub fn hosts(vault: &Vault) -> Result<Vec<HostRecord>, BackupError> {
    Ok(vault
        .collections
        .records(&collection())?
        .iter()
        .filter_map(HostRecord::parse)
        .collect())
}

/// A part's heads on a host, and their digest.
type PartOnHost = (Vec<[u8; 32]>, [u8; 32]);

/// What a device knows of one host's chain: the newest manifest it saw there, and
/// what the chain holds (read from the manifests).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    handle: Handle,
    seq: u64,
    last: [u8; 32],
    /// Each part's heads on the host, and their digest (as `part_digests` gives).
    parts: BTreeMap<(String, u16), PartOnHost>,
    /// Each chunk there (by its keyed hash) and the object holding it: a manifest
    /// that holds the whole vault (`hearth backup prune`) names these again.
    chunks: HashMap<[u8; 32], ObjectId>,
    /// Each blob whose chunk list is there, and the object holding it.
    blobs: HashMap<[u8; 32], ObjectId>,
    /// The epochs (key ids) whose secrets object is there.
    secrets: HashSet<u32>,
    bytes: u64,
    quota: u64,
    last_upload: Option<u64>,
}

impl Progress {
    /// The same place in the same chain, holding nothing: what a chain that starts
    /// over (a prune, or a rebase a reader follows) is read into.
    fn emptied(&self) -> Self {
        Self {
            handle: self.handle,
            seq: self.seq,
            last: self.last,
            bytes: self.bytes,
            quota: self.quota,
            last_upload: self.last_upload,
            ..Self::default()
        }
    }

    /// Notes what a manifest sealed under the epoch key `key_id` added.
    fn apply(&mut self, entries: &[Entry], key_id: u32) {
        for entry in entries {
            match entry {
                Entry::Part {
                    collection,
                    part,
                    heads,
                    ..
                } => {
                    let digest = hearth_protocol::commit::heads_digest(heads.iter());
                    self.parts
                        .insert((collection.clone(), *part), (heads.clone(), digest));
                }
                Entry::Chunk { hash, object } => {
                    self.chunks.insert(*hash, *object);
                }
                Entry::Blob { id, object } => {
                    self.blobs.insert(*id, *object);
                }
                Entry::Secrets { .. } => {
                    self.secrets.insert(key_id);
                }
            }
        }
    }
}

/// The uploader's state on a running node.
#[derive(Default)]
pub struct Backups {
    wake: Notify,
    /// Each host's last error, and whether an upload (not a read) met it: a read that
    /// goes well does not hide why the last upload failed.
    errors: Mutex<HashMap<PeerId, (String, bool)>>,
    /// Held while an upload runs, so two do not.
    running: tokio::sync::Mutex<()>,
}

impl Backups {
    /// Asks for an upload round now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn progress_of(vault: &Vault, peer: &PeerId) -> Result<Option<Progress>, BackupError> {
    let tree = vault.store.tree(PROGRESS_TREE)?;
    Ok(tree
        .get(&peer.to_bytes())?
        .and_then(|bytes| postcard::from_bytes(&bytes).ok()))
}

fn save_progress(
    store: &crate::store::Store,
    peer: &PeerId,
    progress: &Progress,
) -> Result<(), BackupError> {
    let tree = store.tree(PROGRESS_TREE)?;
    let bytes = postcard::to_stdvec(progress).map_err(|e| BackupError::Vault(e.to_string()))?;
    tree.insert(&peer.to_bytes(), &bytes)?;
    Ok(())
}

/// The current epoch's key and key id, and the kit.
fn current_key(
    vault: &Vault,
) -> Result<(u32, Zeroizing<[u8; 32]>, recovery::KitPublic), BackupError> {
    let view = epochs::view_of(&vault.collections, vault.keys.vault_id)?;
    let kit = view.kit.clone().ok_or(BackupError::NoKit)?;
    let epoch = view
        .current(&vault.keys.vault_id)
        .ok_or(BackupError::NoEpochKey)?;
    let key = epoch
        .open(&vault.keys.identity())
        .ok_or(BackupError::NoEpochKey)?;
    Ok((epochs::key_id_of(&key), key, kit))
}

/// Every epoch key this device can open, by key id: of the epochs members made, and
/// of those made by a device since removed (what it uploaded then is still read).
fn all_keys(vault: &Vault) -> Result<HashMap<u32, Zeroizing<[u8; 32]>>, BackupError> {
    let view = epochs::view_of(&vault.collections, vault.keys.vault_id)?;
    let me = vault.keys.identity();
    let by_removed = view
        .epochs
        .iter()
        .filter(|e| view.removed.contains(&e.made_by));
    Ok(view
        .valid(&vault.keys.vault_id)
        .into_iter()
        .chain(by_removed)
        .filter_map(|e| e.open(&me))
        .map(|key| (epochs::key_id_of(&key), key))
        .collect())
}

/// The HPKE info a manifest's epoch key is sealed to the kit under.
pub fn kit_info(handle: &Handle, key_id: u32) -> Vec<u8> {
    let mut info = b"hearth/backup/manifest-key/v1".to_vec();
    info.extend_from_slice(handle);
    info.extend_from_slice(&key_id.to_be_bytes());
    info
}

/// A stream to a host.
struct Link {
    peer: PeerId,
    stream: libp2p::Stream,
}

impl Link {
    async fn connect(
        vault: &Vault,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<Self, BackupError> {
        let mesh = vault.mesh().ok_or(BackupError::NoMesh)?;
        let unreachable = |reason: String| BackupError::Unreachable { peer, reason };
        let connected = |peers: Vec<PeerId>| peers.contains(&peer);
        if !mesh.handle.connected_peers().await.is_ok_and(connected) {
            for addr in addrs {
                let full = if addr
                    .iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                {
                    addr.clone()
                } else {
                    addr.clone().with(libp2p::multiaddr::Protocol::P2p(peer))
                };
                let _ = mesh.handle.dial(full).await;
            }
            // The stream is asked for once connected (see pairing's `exchange`).
            let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
            loop {
                if mesh.handle.connected_peers().await.is_ok_and(connected) {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(unreachable(format!(
                        "no connection within {CONNECT_TIMEOUT:?} at {}",
                        addrs
                            .iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let stream = mesh
            .handle
            .streams()
            .open_stream(
                peer,
                StreamProtocol::new(hearth_protocol::backup::BACKUP_PROTOCOL),
            )
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self { peer, stream })
    }

    async fn ask(&mut self, request: &Request) -> Result<Response, BackupError> {
        self.send(request).await?;
        self.recv().await
    }

    /// Sends a request without waiting for its answer: the host answers in order, so
    /// several can be on their way (what uploads and restores of many objects do).
    async fn send(&mut self, request: &Request) -> Result<(), BackupError> {
        let peer = self.peer;
        tokio::time::timeout(
            ANSWER_TIMEOUT,
            write_frame(&mut self.stream, &encode(request)),
        )
        .await
        .map_err(|_| BackupError::Unreachable {
            peer,
            reason: format!("could not send within {ANSWER_TIMEOUT:?}"),
        })?
        .map_err(|e| BackupError::Unreachable {
            peer,
            reason: e.to_string(),
        })
    }

    /// The answer to the oldest request sent and not yet answered.
    async fn recv(&mut self) -> Result<Response, BackupError> {
        let peer = self.peer;
        let frame = tokio::time::timeout(ANSWER_TIMEOUT, read_frame(&mut self.stream))
            .await
            .map_err(|_| BackupError::Unreachable {
                peer,
                reason: format!("no answer within {ANSWER_TIMEOUT:?}"),
            })?
            .map_err(|e| e.to_string())
            .and_then(|frame| frame.ok_or_else(|| "the host closed the stream".to_owned()))
            .map_err(|reason| BackupError::Unreachable { peer, reason })?;
        match decode::<Response>(&frame) {
            Ok(Response::Refused { reason }) => Err(BackupError::Refused { peer, reason }),
            Ok(answer) => Ok(answer),
            Err(e) => Err(BackupError::Protocol { peer, what: e }),
        }
    }

    fn unexpected(&self, answer: &Response) -> BackupError {
        BackupError::Protocol {
            peer: self.peer,
            what: format!("{answer:?}").chars().take(80).collect(),
        }
    }
}

/// What a host says when a vault is opened.
struct Opened {
    seq: u64,
    last: [u8; 32],
    bytes: u64,
    quota: u64,
}

/// A stream to `host` with the vault opened by its upload token. If the host refuses
/// the token this device has, it tries the current epoch's: another device moved the
/// host to it and its note in `_backup` has not arrived yet (then this device notes it).
async fn open(vault: &Vault, host: &HostRecord) -> Result<(Link, Opened), BackupError> {
    let mut link = Link::connect(vault, host.peer, &host.addrs).await?;
    let mut answer = link
        .ask(&Request::Open {
            handle: host.handle,
            token: *host.token,
        })
        .await?;
    if let (Response::Refused { .. }, Ok((key_id, key, _))) = (&answer, current_key(vault))
        && host.token_epoch != Some(key_id)
    {
        let token = epoch_token(&key, &host.handle);
        let again = link
            .ask(&Request::Open {
                handle: host.handle,
                token: *token,
            })
            .await?;
        if matches!(again, Response::Opened { .. }) {
            let moved = HostRecord {
                token,
                token_epoch: Some(key_id),
                ..host.clone()
            };
            note_host(vault, &moved).await?;
            answer = again;
        }
    }
    opened(link, answer)
}

/// The host's answer to opening the vault on `link`.
fn opened(link: Link, answer: Response) -> Result<(Link, Opened), BackupError> {
    let Response::Opened {
        seq,
        last,
        bytes,
        quota,
    } = answer
    else {
        return Err(link.unexpected(&answer));
    };
    Ok((
        link,
        Opened {
            seq,
            last,
            bytes,
            quota,
        },
    ))
}

/// Writes `host` into `_backup` (under its PeerId) and commits.
async fn note_host(vault: &Vault, host: &HostRecord) -> Result<(), BackupError> {
    let id =
        RecordId::parse(&host.peer.to_string()).map_err(|e| BackupError::Vault(e.to_string()))?;
    vault
        .collections
        .put(&collection(), &id, &host.to_record())?;
    vault.store.commit().await?;
    Ok(())
}

/// Moves the vault on `host` to the upload token of the current epoch (`key`, whose
/// key id is `key_id`): what a removed device held no longer opens it once the epoch
/// its removal made is current. Any device may do it; two that do send the same token.
async fn rotate_token(
    vault: &Vault,
    host: &HostRecord,
    key_id: u32,
    key: &[u8; 32],
) -> Result<HostRecord, BackupError> {
    let (mut link, _) = open(vault, host).await?;
    let token = epoch_token(key, &host.handle);
    let answer = link
        .ask(&Request::SetToken {
            token_hash: token_hash(&token),
        })
        .await?;
    if !matches!(answer, Response::TokenSet) {
        return Err(link.unexpected(&answer));
    }
    let moved = HostRecord {
        token,
        token_epoch: Some(key_id),
        ..host.clone()
    };
    note_host(vault, &moved).await?;
    tracing::info!(host = %host.peer, "the upload token on the host moved to the current epoch");
    Ok(moved)
}

/// Enrolls the vault on `host` again under `kit`'s handle (the kit that enrolled it was
/// replaced), with the upload token, and notes it in `_backup`: the uploads start a
/// new chain there, which the new kit finds and opens. The new token is derived from
/// the old one and the new handle, so a device that retries after a failure asks the
/// same thing again.
async fn reenroll(
    vault: &Arc<Vault>,
    host: &HostRecord,
    kit: &recovery::KitPublic,
) -> Result<HostRecord, BackupError> {
    let mut material = Zeroizing::new(host.token.to_vec());
    material.extend_from_slice(&kit.handle);
    let token = Zeroizing::new(blake3::derive_key(
        "hearth 2026-12 backup upload token after a new kit v1",
        &material,
    ));
    let (mut link, _) = open(vault, host).await?;
    let answer = link
        .ask(&Request::Reenroll {
            handle: kit.handle,
            token_hash: token_hash(&token),
            owner: kit.owner,
        })
        .await?;
    if !matches!(answer, Response::Enrolled { .. }) {
        return Err(link.unexpected(&answer));
    }
    let moved = HostRecord {
        handle: kit.handle,
        token,
        token_epoch: None,
        ..host.clone()
    };
    note_host(vault, &moved).await?;
    tracing::info!(host = %host.peer, "the recovery kit was replaced: the vault is kept on the host under the new kit from now on");
    Ok(moved)
}

/// Enrolls the host of `code` as a backup host of this vault.
pub async fn add(vault: &Arc<Vault>, code: &str) -> Result<HostStatus, BackupError> {
    let invite = decode_host_invite(code).map_err(|e| BackupError::Code(e.to_string()))?;
    let peer = PeerId::from_bytes(&invite.inviter_peer_id).map_err(|_| {
        BackupError::Code("the code is damaged (its host's id); copy it again".into())
    })?;
    if invite.expires_unix <= now() {
        return Err(BackupError::Code(
            "the code has expired; ask the host for a new one (`hearth host invite`)".into(),
        ));
    }
    let addrs: Vec<Multiaddr> = invite.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    let (kit, _) =
        recovery::current(&vault.collections, &vault.keys.vault_id)?.ok_or(BackupError::NoKit)?;
    if hosts(vault)?.iter().any(|h| h.peer == peer) {
        return Err(BackupError::AlreadyAdded(peer));
    }
    let mut token = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut *token);
    let me = vault.keys.peer_id();
    let proof = pairing_proof(&invite.secret, &peer.to_bytes(), &me.to_bytes());
    let mut link = Link::connect(vault, peer, &addrs).await?;
    let answer = link
        .ask(&Request::Enroll {
            proof,
            handle: kit.handle,
            token_hash: token_hash(&token),
            owner: kit.owner,
        })
        .await?;
    let Response::Enrolled { quota } = answer else {
        return Err(link.unexpected(&answer));
    };
    let record = HostRecord {
        peer,
        addrs,
        handle: kit.handle,
        token,
        token_epoch: None,
        added_at: now(),
        added_by: me.to_string(),
    };
    note_host(vault, &record).await?;
    let progress = Progress {
        handle: kit.handle,
        quota,
        ..Progress::default()
    };
    save_progress(&vault.store, &peer, &progress)?;
    vault.store.commit().await?;
    tracing::info!(host = %peer, "added a backup host");
    vault.backups.wake();
    Ok(status_of(vault, &record, Some(&progress), false))
}

fn status_of(
    vault: &Vault,
    host: &HostRecord,
    progress: Option<&Progress>,
    up_to_date: bool,
) -> HostStatus {
    let error = vault
        .backups
        .errors
        .lock()
        .expect("errors lock is never poisoned")
        .get(&host.peer)
        .map(|(e, _)| e.clone());
    HostStatus {
        peer: host.peer.to_string(),
        addrs: host.addrs.iter().map(|a| a.to_string()).collect(),
        up_to_date: up_to_date && error.is_none(),
        bytes: progress.map_or(0, |p| p.bytes),
        quota: progress.map_or(0, |p| p.quota),
        last_upload: progress.and_then(|p| p.last_upload),
        seq: progress.map_or(0, |p| p.seq),
        added_at: host.added_at,
        error,
    }
}

/// Whether `progress` holds everything this device has.
fn covers(vault: &Vault, progress: &Progress) -> Result<bool, BackupError> {
    let Ok((key_id, _, _)) = current_key(vault) else {
        return Ok(false);
    };
    if !progress.secrets.contains(&key_id) {
        return Ok(false);
    }
    for (name, parts) in vault.collections.part_digests()? {
        for (part, digest) in parts {
            if progress
                .parts
                .get(&(name.to_string(), part))
                .is_none_or(|(_, d)| *d != digest)
            {
                return Ok(false);
            }
        }
    }
    for id in vault.blobs.stored()? {
        if !progress.blobs.contains_key(&id.0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `hearth backup status`.
pub fn status(vault: &Vault) -> Result<BackupStatus, BackupError> {
    let mut out = Vec::new();
    for host in hosts(vault)? {
        let progress = progress_of(vault, &host.peer)?;
        let up_to_date = match &progress {
            Some(p) if p.handle == host.handle => covers(vault, p)?,
            _ => false,
        };
        out.push(status_of(vault, &host, progress.as_ref(), up_to_date));
    }
    Ok(BackupStatus { hosts: out })
}

/// `hearth backup prune`: on each host, the whole vault uploaded again as new
/// manifests (chunks already there are named again, not sent), the chain rebased on
/// the first of them with the kit's owner key, then every object the chain no longer
/// names deleted. Only the owner key can do it: a device's upload token never deletes.
pub async fn prune(
    vault: &Arc<Vault>,
    owner: &libp2p::identity::ed25519::Keypair,
) -> Result<BackupPruned, BackupError> {
    let arriving = {
        let v = vault.clone();
        tokio::task::spawn_blocking(move || v.blobs.arriving(&v.collections))
            .await
            .map_err(|e| BackupError::Vault(e.to_string()))??
    };
    if !arriving.is_empty() {
        return Err(BackupError::BlobsArriving(arriving.len()));
    }
    // A kit the vault's kit replaced: what is kept under it goes whole.
    let replaced = recovery::kits(&vault.collections, &vault.keys.vault_id)?
        .replaced
        .into_iter()
        .find(|kit| kit.owner == owner.public().to_bytes());
    // No upload of this device's runs meanwhile.
    let _running = vault.backups.running.lock().await;
    let mut out = Vec::new();
    for host in hosts(vault)? {
        let result = match &replaced {
            Some(kit) => forget_replaced(vault, &host, kit, owner).await,
            None => prune_host(vault, &host, owner).await,
        };
        let pruned = match result {
            Ok(pruned) => pruned,
            Err(e) => HostPruned {
                peer: host.peer.to_string(),
                base: 0,
                objects_dropped: 0,
                bytes_before: 0,
                bytes: 0,
                replaced_kit: replaced.as_ref().map(|k| k.id.clone()),
                error: Some(e.to_string()),
            },
        };
        out.push(pruned);
    }
    Ok(BackupPruned {
        ok: out.iter().all(|h| h.error.is_none()),
        hosts: out,
    })
}

/// A stream to `host` with the vault opened by the kit's owner key.
async fn open_owner(
    vault: &Vault,
    host: &HostRecord,
    owner: &libp2p::identity::ed25519::Keypair,
) -> Result<(Link, Opened), BackupError> {
    let mut link = Link::connect(vault, host.peer, &host.addrs).await?;
    let message = owner_open_message(
        &host.peer.to_bytes(),
        &vault.keys.peer_id().to_bytes(),
        &host.handle,
    );
    let answer = link
        .ask(&Request::OpenOwner {
            handle: host.handle,
            signature: owner.sign(&message),
        })
        .await?;
    opened(link, answer)
}

async fn prune_host(
    vault: &Arc<Vault>,
    host: &HostRecord,
    owner: &libp2p::identity::ed25519::Keypair,
) -> Result<HostPruned, BackupError> {
    let ready = ready(vault, host).await?;
    let host = ready.host.clone();
    if ready.kit.owner != owner.public().to_bytes() {
        return Err(BackupError::WrongKit(host.peer));
    }
    // What the host keeps now: what is deleted at the end is among these, so an
    // object another device uploads meanwhile is never deleted.
    let (
        mut owner_link,
        Opened {
            bytes: bytes_before,
            ..
        },
    ) = open_owner(vault, &host, owner).await?;
    let mut listed: Vec<ObjectId> = Vec::new();
    loop {
        let answer = owner_link
            .ask(&Request::Objects {
                after: listed.last().copied(),
                limit: OBJECTS_PER_ANSWER,
            })
            .await?;
        let Response::ObjectIds { ids } = answer else {
            return Err(owner_link.unexpected(&answer));
        };
        let done = ids.len() < OBJECTS_PER_ANSWER as usize;
        listed.extend(ids);
        if done {
            break;
        }
    }

    // The whole vault, as new manifests: the chain can start at the first of them.
    let progress = ready.progress.emptied();
    let reuse = ready.progress;
    let mut round = Round {
        vault,
        host: &host,
        link: ready.link,
        progress,
        key_id: ready.key_id,
        key: ready.key,
        kit: ready.kit,
        pending: Pending::default(),
        in_flight: 0,
        reuse: Some(reuse),
        first: None,
    };
    round.upload().await?;
    let Some((base, hash)) = round.first else {
        return Err(BackupError::Vault(
            "nothing was uploaded to start the chain from".into(),
        ));
    };
    let signature = owner.sign(&rebase_message(&host.handle, base, &hash));
    let answer = owner_link
        .ask(&Request::Rebase {
            seq: base,
            signature,
        })
        .await?;
    if !matches!(answer, Response::Rebased { .. }) {
        return Err(owner_link.unexpected(&answer));
    }

    // What the chain names from the base on is kept; the rest of what was listed goes.
    let keys = all_keys(vault)?;
    let mut named = Progress {
        handle: host.handle,
        ..Progress::default()
    };
    let mut plan = recover::Plan::default();
    let (seq, last) = (round.progress.seq, round.progress.last);
    read_chain(
        &mut owner_link,
        &mut named,
        seq,
        last,
        &owner.public().to_bytes(),
        held(&keys),
        |header, body, _| plan.note(header, body),
    )
    .await?;
    let keep: HashSet<ObjectId> = plan.objects().into_iter().collect();
    let dropped: Vec<ObjectId> = listed.into_iter().filter(|id| !keep.contains(id)).collect();
    let mut bytes = bytes_before;
    for batch in dropped.chunks(OBJECTS_PER_ANSWER as usize) {
        let answer = owner_link
            .ask(&Request::Drop {
                ids: batch.to_vec(),
            })
            .await?;
        let Response::Dropped { bytes: now } = answer else {
            return Err(owner_link.unexpected(&answer));
        };
        bytes = now;
    }
    round.progress.bytes = bytes;
    save_progress(&vault.store, &host.peer, &round.progress)?;
    vault.store.commit().await?;
    tracing::info!(host = %host.peer, base, dropped = dropped.len(), "pruned a backup host");
    Ok(HostPruned {
        peer: host.peer.to_string(),
        base,
        objects_dropped: dropped.len() as u64,
        bytes_before,
        bytes,
        replaced_kit: None,
        error: None,
    })
}

/// Deletes the copy of the vault kept on `host` under `kit`, a kit the vault's kit
/// replaced, once the host holds the vault whole under the current kit.
async fn forget_replaced(
    vault: &Arc<Vault>,
    host: &HostRecord,
    kit: &recovery::KitPublic,
    owner: &libp2p::identity::ed25519::Keypair,
) -> Result<HostPruned, BackupError> {
    upload(vault, host, true).await?;
    let host = hosts(vault)?
        .into_iter()
        .find(|h| h.peer == host.peer)
        .unwrap_or_else(|| host.clone());
    let current = progress_of(vault, &host.peer)?
        .filter(|p| p.handle == host.handle && p.handle != kit.handle);
    let Some(current) = current.filter(|p| covers(vault, p).unwrap_or(false)) else {
        return Err(BackupError::Vault(
            "the host does not hold the whole vault under the current kit yet; the copy under the replaced kit stays until it does".into(),
        ));
    };
    let old = HostRecord {
        handle: kit.handle,
        ..host.clone()
    };
    let (mut link, Opened { bytes, .. }) = match open_owner(vault, &old, owner).await {
        Ok(opened) => opened,
        // The kit's own key, refused: nothing is kept under that kit on this host.
        Err(BackupError::Refused { .. }) => {
            return Ok(HostPruned {
                peer: host.peer.to_string(),
                base: 0,
                objects_dropped: 0,
                bytes_before: current.bytes,
                bytes: current.bytes,
                replaced_kit: Some(kit.id.clone()),
                error: None,
            });
        }
        Err(e) => return Err(e),
    };
    let answer = link.ask(&Request::Forget).await?;
    let Response::Forgotten { objects, .. } = answer else {
        return Err(link.unexpected(&answer));
    };
    tracing::info!(host = %host.peer, kit = %kit.id, "deleted the copy kept under a replaced kit");
    Ok(HostPruned {
        peer: host.peer.to_string(),
        base: 0,
        objects_dropped: objects,
        bytes_before: current.bytes + bytes,
        bytes: current.bytes,
        replaced_kit: Some(kit.id.clone()),
        error: None,
    })
}

/// Objects `hearth backup verify` asks a host to prove, at most.
const SAMPLES: usize = 64;
/// The bytes of each sampled object proven.
const PROOF_LEN: u32 = 1024;

/// `hearth backup verify`: each host's whole chain read and checked, then a sample of
/// the objects a restore would read, each proven held (a range of it with its BLAKE3
/// verified-streaming proof against its name) without downloading the objects.
pub async fn verify(vault: &Arc<Vault>) -> Result<BackupVerified, BackupError> {
    let mut out = Vec::new();
    for host in hosts(vault)? {
        let verified = match verify_host(vault, &host).await {
            Ok(verified) => verified,
            Err(e) => HostVerified {
                peer: host.peer.to_string(),
                seq: 0,
                objects: 0,
                sampled: 0,
                proven: 0,
                failures: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        out.push(verified);
    }
    Ok(BackupVerified {
        ok: out
            .iter()
            .all(|h| h.error.is_none() && h.failures.is_empty()),
        hosts: out,
    })
}

async fn verify_host(vault: &Arc<Vault>, host: &HostRecord) -> Result<HostVerified, BackupError> {
    // What this device saw there first: a host that rolled back or altered its chain
    // is refused before anything else.
    upload(vault, host, false).await?;
    // The record again: the upload may have enrolled the vault under a new kit.
    let host = &hosts(vault)?
        .into_iter()
        .find(|h| h.peer == host.peer)
        .unwrap_or_else(|| host.clone());
    let (mut link, Opened { seq, last, .. }) = open(vault, host).await?;
    let keys = all_keys(vault)?;
    let owner = owner_key(vault, &host.handle)?;
    let mut progress = Progress {
        handle: host.handle,
        ..Progress::default()
    };
    let mut plan = recover::Plan::default();
    read_chain(
        &mut link,
        &mut progress,
        seq,
        last,
        &owner,
        held(&keys),
        |header, body, _| plan.note(header, body),
    )
    .await?;
    let objects = plan.objects();
    let sample: Vec<ObjectId> = {
        let mut rng = rand::thread_rng();
        rand::seq::index::sample(&mut rng, objects.len(), objects.len().min(SAMPLES))
            .into_iter()
            .map(|i| objects[i])
            .collect()
    };
    let mut failures = Vec::new();
    for id in &sample {
        // Anywhere in the object's first MiB (past its end, the proof covers its end).
        let offset = rand::Rng::gen_range(&mut rand::thread_rng(), 0..1024 * 1024);
        let name = data_encoding::HEXLOWER.encode(&id[..8]);
        let answer = link
            .ask(&Request::Prove {
                id: *id,
                offset,
                len: PROOF_LEN,
            })
            .await?;
        let Response::Proof { slice } = answer else {
            return Err(link.unexpected(&answer));
        };
        let Some(slice) = slice else {
            failures.push(format!("object {name}… is missing"));
            continue;
        };
        let mut proven = Vec::new();
        let decoded = std::io::Read::read_to_end(
            &mut bao::decode::SliceDecoder::new(
                std::io::Cursor::new(&slice),
                &blake3::Hash::from_bytes(*id),
                offset,
                u64::from(PROOF_LEN),
            ),
            &mut proven,
        );
        if let Err(e) = decoded {
            failures.push(format!("object {name}… does not prove: {e}"));
        }
    }
    Ok(HostVerified {
        peer: host.peer.to_string(),
        seq,
        objects: objects.len() as u64,
        sampled: sample.len() as u64,
        proven: (sample.len() - failures.len()) as u64,
        failures,
        error: None,
    })
}

/// Starts the uploader: a round after changes settle, when woken, every
/// [`AGAIN_EVERY`], and soon again after a round that failed.
pub(crate) fn spawn(vault: Arc<Vault>) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop_tx, mut stop) = oneshot::channel::<()>();
    let mut changes = vault.collections.subscribe();
    let task = tokio::spawn(async move {
        let mut again = tokio::time::interval(AGAIN_EVERY);
        again.tick().await;
        // After a failed round (a host that hung up, a connection that was closing,
        // an append the host refused while the chain moved): tried again after
        // RETRY_FIRST, then twice as long each time up to AGAIN_EVERY, not only at
        // the next change.
        let mut retry_in = RETRY_FIRST;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                () = retry => {}
                change = changes.recv() => match change {
                    Ok(changed) if changed.collection.as_str() == BACKUP => {}
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        tokio::select! {
                            _ = &mut stop => return,
                            () = tokio::time::sleep(SETTLE) => {}
                        }
                        while changes.try_recv().is_ok() {}
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = vault.backups.wake.notified() => {}
                _ = again.tick() => {}
            }
            let round = upload_all(&vault);
            tokio::pin!(round);
            let failed = tokio::select! {
                _ = &mut stop => return,
                failed = &mut round => failed,
            };
            if failed {
                retry_at = Some(tokio::time::Instant::now() + retry_in);
                retry_in = (retry_in * 2).min(AGAIN_EVERY);
            } else {
                retry_at = None;
                retry_in = RETRY_FIRST;
            }
        }
    });
    (stop_tx, task)
}

/// Whether this device is the one that uploads: the smallest PeerId among the
/// members it is connected to and itself.
async fn my_turn(vault: &Vault) -> bool {
    let me = vault.keys.peer_id();
    let Some(mesh) = vault.mesh() else {
        return false;
    };
    let connected = mesh.handle.connected_peers().await.unwrap_or_default();
    !connected
        .iter()
        .any(|p| *p < me && crate::devices::is_member(&vault.collections, p))
}

/// Reads each host's chain again (what another device appended), unless an upload is
/// under way (which reads it itself): what `hearth backup status` asks first.
pub async fn refresh(vault: &Arc<Vault>) {
    let Ok(hosts) = hosts(vault) else {
        return;
    };
    let Ok(_running) = vault.backups.running.try_lock() else {
        return;
    };
    // All at once, each for a few seconds at most: a host that does not answer is
    // named so, and the others' state is shown without waiting for it.
    let reads = hosts.iter().map(|host| async move {
        let result = match tokio::time::timeout(STATUS_WAIT, upload(vault, host, false)).await {
            Ok(result) => result,
            Err(_) => Err(BackupError::Unreachable {
                peer: host.peer,
                reason: format!("no answer within {STATUS_WAIT:?}"),
            }),
        };
        // A host that holds everything has no upload left to fail.
        let whole = result.is_ok()
            && progress_of(vault, &host.peer)
                .ok()
                .flatten()
                .is_some_and(|p| p.handle == host.handle && covers(vault, &p).unwrap_or(false));
        note_result(vault, host, whole, result);
    });
    futures::future::join_all(reads).await;
}

/// Notes how reading (`uploaded` false) or uploading to `host` (or reading it and
/// finding everything there) went.
fn note_result(vault: &Vault, host: &HostRecord, uploaded: bool, result: Result<(), BackupError>) {
    let mut errors = vault
        .backups
        .errors
        .lock()
        .expect("errors lock is never poisoned");
    match result {
        Ok(()) => {
            // A read clears only what a read met; an upload clears both.
            if uploaded
                || errors
                    .get(&host.peer)
                    .is_some_and(|(_, by_upload)| !by_upload)
            {
                errors.remove(&host.peer);
            }
        }
        Err(e) => {
            tracing::warn!(host = %host.peer, error = %e, "backup upload failed");
            errors.insert(host.peer, (e.to_string(), uploaded));
        }
    }
}

/// One round: every host brought up to date. Returns whether the round failed for
/// some host (its error kept for `backup status`), to be tried again soon.
pub async fn upload_all(vault: &Arc<Vault>) -> bool {
    let Ok(hosts) = hosts(vault) else {
        return true;
    };
    // The other devices do not reach the hosts in the background: they read what the
    // uploading device appended when asked (`refresh`, for `backup status`).
    if hosts.is_empty() || !my_turn(vault).await {
        return false;
    }
    let _running = vault.backups.running.lock().await;
    let mut failed = false;
    for host in hosts {
        let result = upload(vault, &host, true).await;
        failed |= result.is_err();
        note_result(vault, &host, true, result);
    }
    failed
}

/// A host ready for an upload: its record as it is now (the vault enrolled under the
/// current kit, the token of the current epoch), a stream with the vault opened, what
/// this device knows of the chain there (caught up with what others appended), and
/// the current epoch's key.
struct Ready {
    host: HostRecord,
    link: Link,
    progress: Progress,
    key_id: u32,
    key: Zeroizing<[u8; 32]>,
    kit: recovery::KitPublic,
}

async fn ready(vault: &Arc<Vault>, host: &HostRecord) -> Result<Ready, BackupError> {
    let peer = host.peer;
    let (key_id, key, kit) = current_key(vault)?;
    if kit.handle != host.handle {
        // The kit was replaced: the new one must find the vault on the host.
        let moved = reenroll(vault, host, &kit).await?;
        return Box::pin(ready(vault, &moved)).await;
    }
    if host.token_epoch != Some(key_id) {
        let moved = rotate_token(vault, host, key_id, &key).await?;
        return Box::pin(ready(vault, &moved)).await;
    }
    let mut progress = match progress_of(vault, &peer)? {
        Some(p) if p.handle == host.handle => p,
        _ => Progress {
            handle: host.handle,
            ..Progress::default()
        },
    };
    let (mut link, opened) = open(vault, host).await?;
    let Opened {
        seq,
        last,
        bytes,
        quota,
    } = opened;
    if seq < progress.seq {
        return Err(BackupError::RolledBack {
            peer,
            held: seq,
            seen: progress.seq,
        });
    }
    if seq == progress.seq && last != progress.last {
        return Err(BackupError::Altered { peer, seq });
    }
    if seq > progress.seq {
        catch_up(vault, &mut link, &mut progress, seq, last).await?;
    }
    progress.bytes = bytes;
    progress.quota = quota;
    Ok(Ready {
        host: host.clone(),
        link,
        progress,
        key_id,
        key,
        kit,
    })
}

/// Brings one host up to date, or (`uploads` false) reads what it holds.
async fn upload(vault: &Arc<Vault>, host: &HostRecord, uploads: bool) -> Result<(), BackupError> {
    let Ready {
        host,
        link,
        progress,
        key_id,
        key,
        kit,
    } = ready(vault, host).await?;
    if !uploads {
        save_progress(&vault.store, &host.peer, &progress)?;
        vault.store.commit().await?;
        return Ok(());
    }
    let mut round = Round {
        vault,
        host: &host,
        link,
        progress,
        key_id,
        key,
        kit,
        pending: Pending::default(),
        in_flight: 0,
        reuse: None,
        first: None,
    };
    round.upload().await
}

/// What a round has uploaded and not yet named in a manifest.
#[derive(Default)]
struct Pending {
    entries: Vec<Entry>,
    bytes: usize,
    chunks: HashSet<[u8; 32]>,
    blobs: HashSet<[u8; 32]>,
}

/// One upload to one host, under the current epoch's key.
struct Round<'a> {
    vault: &'a Arc<Vault>,
    host: &'a HostRecord,
    link: Link,
    progress: Progress,
    key_id: u32,
    key: Zeroizing<[u8; 32]>,
    kit: recovery::KitPublic,
    pending: Pending,
    /// Objects sent and not yet answered.
    in_flight: usize,
    /// What the host held before a round that uploads the whole vault again (`hearth
    /// backup prune`): its chunks and chunk lists are named again, not sent again.
    reuse: Option<Progress>,
    /// The first manifest this round appended, and its hash.
    first: Option<(u64, [u8; 32])>,
}

impl Round<'_> {
    async fn upload(&mut self) -> Result<(), BackupError> {
        let vault = self.vault;
        if !self.progress.secrets.contains(&self.key_id) {
            let secrets = vault.keys.shared_secrets();
            let mut plain = Zeroizing::new(Vec::with_capacity(80));
            plain.extend_from_slice(&secrets.vault_id);
            plain.extend_from_slice(&*secrets.storage_key);
            plain.extend_from_slice(&*secrets.signing_key);
            let object = self.put(&plain).await?;
            self.add(Entry::Secrets { object }).await?;
        }
        // Parts whose heads moved.
        let digests = {
            let v = vault.clone();
            tokio::task::spawn_blocking(move || v.collections.part_digests())
                .await
                .map_err(|e| BackupError::Vault(e.to_string()))??
        };
        for (name, parts) in digests {
            for (part, digest) in parts {
                let slot = (name.to_string(), part);
                let after: Vec<[u8; 32]> = match self.progress.parts.get(&slot) {
                    Some((_, d)) if *d == digest => continue,
                    Some((heads, _)) => heads.clone(),
                    None => Vec::new(),
                };
                let (heads, bytes, whole) = {
                    let v = vault.clone();
                    let name = name.clone();
                    let after: Vec<automerge::ChangeHash> =
                        after.iter().map(|h| automerge::ChangeHash(*h)).collect();
                    tokio::task::spawn_blocking(move || {
                        v.collections.part_for_backup(&name, part, &after)
                    })
                    .await
                    .map_err(|e| BackupError::Vault(e.to_string()))??
                };
                let mut objects = Vec::new();
                for piece in bytes.chunks(PIECE) {
                    objects.push(self.put(piece).await?);
                }
                self.add(Entry::Part {
                    collection: name.to_string(),
                    part,
                    after: if whole { Vec::new() } else { after },
                    heads: heads.iter().map(|h| h.0).collect(),
                    objects,
                })
                .await?;
            }
        }
        // Blobs this device holds whole, and their chunks.
        for id in vault.blobs.stored()? {
            if self.progress.blobs.contains_key(&id.0) || self.pending.blobs.contains(&id.0) {
                continue;
            }
            let Some(manifest_bytes) = vault.blobs.manifest_bytes(id)? else {
                continue;
            };
            let manifest = hearth_protocol::blob::Manifest::decode(&manifest_bytes)
                .map_err(|e| BackupError::Vault(e.to_string()))?;
            // The chunks the host lacks, each once, and any named again from what it
            // holds (a prune).
            let mut todo: Vec<([u8; 32], Option<ObjectId>)> = Vec::new();
            let mut seen = HashSet::new();
            for hash in &manifest.chunks {
                if self.progress.chunks.contains_key(hash)
                    || self.pending.chunks.contains(hash)
                    || !seen.insert(*hash)
                {
                    continue;
                }
                let reused = self
                    .reuse
                    .as_ref()
                    .and_then(|r| r.chunks.get(hash))
                    .copied();
                todo.push((*hash, reused));
            }
            // Read ahead on other threads while the ones before are sealed and sent.
            let mut upcoming: std::collections::VecDeque<[u8; 32]> = todo
                .iter()
                .filter(|(_, reused)| reused.is_none())
                .map(|(hash, _)| *hash)
                .collect();
            let read = |hash: [u8; 32]| {
                let v = vault.clone();
                tokio::spawn(async move { v.blobs.chunk_answer(hash).await })
            };
            let mut reads = std::collections::VecDeque::with_capacity(READ_AHEAD);
            while reads.len() < READ_AHEAD
                && let Some(hash) = upcoming.pop_front()
            {
                reads.push_back(read(hash));
            }
            for (hash, reused) in todo {
                let object = match reused {
                    Some(object) => object,
                    None => {
                        let task = reads
                            .pop_front()
                            .expect("each chunk read is asked in order");
                        if let Some(next) = upcoming.pop_front() {
                            reads.push_back(read(next));
                        }
                        let answer = task.await.map_err(|e| {
                            BackupError::Vault(format!("reading a chunk failed: {e}"))
                        })??;
                        let Some(answer) = answer else {
                            return Err(BackupError::Vault(format!(
                                "blob {id} is listed as held here, but a chunk of it is missing"
                            )));
                        };
                        self.put(&answer[1..]).await?
                    }
                };
                self.pending.chunks.insert(hash);
                self.add(Entry::Chunk { hash, object }).await?;
            }
            let reused = self
                .reuse
                .as_ref()
                .and_then(|r| r.blobs.get(&id.0))
                .copied();
            let object = match reused {
                Some(object) => object,
                None => self.put(&manifest_bytes).await?,
            };
            self.pending.blobs.insert(id.0);
            self.add(Entry::Blob { id: id.0, object }).await?;
        }
        if !self.pending.entries.is_empty() {
            self.append().await
        } else {
            save_progress(&vault.store, &self.host.peer, &self.progress)?;
            Ok(vault.store.commit().await?)
        }
    }

    /// Seals `data` as an object and stores it on the host; its name.
    async fn put(&mut self, data: &[u8]) -> Result<ObjectId, BackupError> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let object = seal_object(&self.key, &self.host.handle, self.key_id, data, nonce);
        let id = object_id(&object);
        self.pending.bytes += object.len();
        self.link.send(&Request::Put { object }).await?;
        self.in_flight += 1;
        if self.in_flight >= IN_FLIGHT {
            self.stored().await?;
        }
        Ok(id)
    }

    /// Waits for the host to say it stored the oldest object on its way.
    async fn stored(&mut self) -> Result<(), BackupError> {
        self.in_flight -= 1;
        match self.link.recv().await? {
            Response::Stored { .. } => Ok(()),
            other => Err(self.link.unexpected(&other)),
        }
    }

    /// Notes an entry for the next manifest, appended once enough is pending.
    async fn add(&mut self, entry: Entry) -> Result<(), BackupError> {
        self.pending.entries.push(entry);
        if self.pending.bytes >= MANIFEST_BYTES || self.pending.entries.len() >= MANIFEST_ENTRIES {
            self.append().await?;
        }
        Ok(())
    }

    /// Appends a manifest naming what is pending, the next of the host's chain.
    async fn append(&mut self) -> Result<(), BackupError> {
        // Every object it names is stored first.
        while self.in_flight > 0 {
            self.stored().await?;
        }
        let handle = self.host.handle;
        let kit_sealed = epochs::seal_key_to(
            &kit_info(&handle, self.key_id),
            &self.kit.exchange,
            &self.key,
        )
        .ok_or_else(|| BackupError::Vault("the recovery kit's key is not valid".into()))?;
        let header = ManifestHeader {
            handle,
            seq: self.progress.seq + 1,
            prev: self.progress.last,
            epoch: self.key_id,
            kit_sealed,
        };
        let body = ManifestBody {
            made_at: now(),
            made_by: self.vault.keys.peer_id().to_string(),
            entries: std::mem::take(&mut self.pending.entries),
        };
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let manifest = seal_manifest(&self.key, &header, &body, nonce);
        let answer = self
            .link
            .ask(&Request::Append {
                manifest: manifest.clone(),
            })
            .await?;
        match answer {
            Response::Appended { seq } if seq == header.seq => {}
            other => return Err(self.link.unexpected(&other)),
        }
        let progress = &mut self.progress;
        progress.apply(&body.entries, self.key_id);
        progress.seq = header.seq;
        progress.last = manifest_hash(&manifest);
        self.first.get_or_insert((header.seq, progress.last));
        progress.bytes += (self.pending.bytes + manifest.len()) as u64;
        progress.last_upload = Some(body.made_at);
        self.pending.bytes = 0;
        save_progress(&self.vault.store, &self.host.peer, progress)?;
        self.vault.store.commit().await?;
        tracing::debug!(host = %self.host.peer, seq = header.seq, entries = body.entries.len(), "backup manifest appended");
        Ok(())
    }
}

/// Reads the manifests another device appended since `progress`, checking that each
/// follows the one before and opens; `last` is the newest's hash, as the host said.
async fn catch_up(
    vault: &Vault,
    link: &mut Link,
    progress: &mut Progress,
    seq: u64,
    last: [u8; 32],
) -> Result<(), BackupError> {
    let keys = all_keys(vault)?;
    let owner = owner_key(vault, &progress.handle)?;
    read_chain(link, progress, seq, last, &owner, held(&keys), |_, _, _| {
        Ok(())
    })
    .await
}

/// The owner key of the kit whose handle is `handle` (the vault's kit, or one it
/// replaced).
fn owner_key(vault: &Vault, handle: &Handle) -> Result<[u8; 32], BackupError> {
    let kits = recovery::kits(&vault.collections, &vault.keys.vault_id)?;
    kits.current
        .map(|(kit, _)| kit)
        .into_iter()
        .chain(kits.replaced)
        .find(|kit| kit.handle == *handle)
        .map(|kit| kit.owner)
        .ok_or(BackupError::NoKit)
}

/// The key of a manifest's epoch among `keys` (those this device holds).
fn held(
    keys: &HashMap<u32, Zeroizing<[u8; 32]>>,
) -> impl Fn(&ManifestHeader) -> Result<Zeroizing<[u8; 32]>, String> + '_ {
    |header| {
        keys.get(&header.epoch).cloned().ok_or_else(|| {
            format!(
                "it is sealed under epoch key {:08x}, which this device does not hold",
                header.epoch
            )
        })
    }
}

/// Starts `progress` over at `manifest` (the one `header` reads), the chain's new
/// first, if the host shows the owner key's signature making it so.
async fn follow_base(
    link: &mut Link,
    progress: &mut Progress,
    owner: &[u8; 32],
    header: &ManifestHeader,
    manifest: &[u8],
) -> Result<(), BackupError> {
    let answer = link.ask(&Request::Base).await?;
    let Response::Base {
        seq: base,
        signature,
    } = answer
    else {
        return Err(link.unexpected(&answer));
    };
    let message = rebase_message(&progress.handle, header.seq, &manifest_hash(manifest));
    let signed = base == header.seq
        && libp2p::identity::ed25519::PublicKey::try_from_bytes(owner)
            .is_ok_and(|key| key.verify(&message, &signature));
    if !signed {
        return Err(BackupError::BadChain {
            peer: link.peer,
            seq: progress.seq + 1,
            why: format!(
                "the host skips to manifest {} without the owner's signature making it the first",
                header.seq
            ),
        });
    }
    *progress = Progress {
        seq: header.seq - 1,
        last: header.prev,
        ..progress.emptied()
    };
    Ok(())
}

/// Reads the host's manifests after `progress` up to `seq`, each checked to follow
/// the one before (seq, prev, handle) and opened with the key `key_for` gives for its
/// header; each is noted in `progress` and shown to `visit` with its key. The newest
/// must hash to `last`, as the host said when the vault was opened.
async fn read_chain(
    link: &mut Link,
    progress: &mut Progress,
    seq: u64,
    last: [u8; 32],
    owner: &[u8; 32],
    key_for: impl Fn(&ManifestHeader) -> Result<Zeroizing<[u8; 32]>, String>,
    mut visit: impl FnMut(&ManifestHeader, &ManifestBody, Zeroizing<[u8; 32]>) -> Result<(), String>,
) -> Result<(), BackupError> {
    let peer = link.peer;
    while progress.seq < seq {
        let answer = link
            .ask(&Request::Manifests {
                after: progress.seq,
                limit: MANIFESTS_PER_ANSWER,
            })
            .await?;
        let Response::Manifests { manifests } = answer else {
            return Err(link.unexpected(&answer));
        };
        if manifests.is_empty() {
            return Err(BackupError::RolledBack {
                peer,
                held: progress.seq,
                seen: seq,
            });
        }
        for manifest in manifests {
            let (header, _) =
                ManifestHeader::parse(&manifest).map_err(|e| BackupError::BadChain {
                    peer,
                    seq: progress.seq + 1,
                    why: e.to_string(),
                })?;
            if header.seq > progress.seq + 1 && header.handle == progress.handle {
                // The owner rebased the chain (`hearth backup prune`): what came before
                // this manifest is gone, and it holds the whole vault. Only the owner
                // key's signature over it lets the chain start here. (Read from the
                // start, this is the first manifest `visit` sees.)
                follow_base(link, progress, owner, &header, &manifest).await?;
            }
            let next = progress.seq + 1;
            let bad = |why: String| BackupError::BadChain {
                peer,
                seq: next,
                why,
            };
            if header.seq != next
                || header.prev != progress.last
                || header.handle != progress.handle
            {
                return Err(bad("it does not follow the manifest before it".into()));
            }
            let key = key_for(&header).map_err(bad)?;
            let (_, body) = open_manifest(&key, &manifest).map_err(|e| bad(e.to_string()))?;
            visit(&header, &body, key).map_err(bad)?;
            progress.apply(&body.entries, header.epoch);
            progress.seq = next;
            progress.last = manifest_hash(&manifest);
            progress.last_upload = Some(body.made_at);
        }
    }
    if progress.last != last {
        return Err(BackupError::Altered { peer, seq });
    }
    Ok(())
}
