//! `hearth recover --kit FILE --host ADDR`: a vault brought back from a backup host
//! onto an empty HOME, with the recovery kit alone.
//!
//! The kit gives the vault's handle on the host, the owner key that opens it there to
//! read, and the exchange key every manifest's epoch key is sealed to. The manifests
//! are read from the first, each checked to follow the one before and to open; the
//! newest shared secrets they name make the new HOME a device of the same vault (the
//! same names, the same blob ids), with an identity of its own; then each part is
//! rebuilt from its whole copy and the changes after it, each blob from its chunks,
//! and the epoch keys sealed to the kit are kept. Nothing is written until the chain
//! has been read and checked whole.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use hearth_protocol::CollectionName;
use hearth_protocol::backup::{
    BACKUP_PROTOCOL, Entry, Handle, ManifestBody, ManifestHeader, ObjectId, Request, Response,
    object_epoch, object_id, open_object, owner_open_message,
};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use zeroize::Zeroizing;

use super::{BackupError, Link, Progress, kit_info, read_chain, save_progress};
use crate::blobs::{Blobs, chunk_buffer};
use crate::collections::Collections;
use crate::epochs;
use crate::home::Home;
use crate::keys::{self, Passphrase, SharedSecrets};
use crate::recovery::RecoverySecret;
use crate::store::Store;

/// How long reaching the host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Chunks asked of the host before the first has arrived, while a restore reads blobs.
const FETCH_WINDOW: usize = 16;
/// Chunks being stored at once while the next arrive.
const STORE_WINDOW: usize = 3;

/// Waits for a chunk being stored.
async fn stored(
    task: tokio::task::JoinHandle<Result<(), crate::blobs::BlobError>>,
) -> Result<(), BackupError> {
    task.await
        .map_err(|e| BackupError::Vault(format!("storing a chunk failed: {e}")))??;
    Ok(())
}

/// What `hearth recover` brought back.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Recovered {
    /// This HOME's new device.
    pub peer_id: String,
    pub vault_id: String,
    /// The host's newest manifest, and when it was made (Unix seconds).
    pub seq: u64,
    pub made_at: u64,
    /// Parts of collections and blobs restored, and the bytes read from the host.
    pub parts: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// One part's chain on the host: its whole copy, then the changes after it.
#[derive(Default)]
struct PartChain {
    /// Each entry's objects, in order, with the epoch key id they are sealed under.
    entries: Vec<(Vec<ObjectId>, u32)>,
    heads: Vec<[u8; 32]>,
}

/// What a restore reads of a host's chain: each part's newest whole copy and the
/// changes after it, each chunk and blob list, the newest shared secrets; each object
/// with the epoch key id it is sealed under.
#[derive(Default)]
pub(super) struct Plan {
    parts: BTreeMap<(String, u16), PartChain>,
    chunks: HashMap<[u8; 32], (ObjectId, u32)>,
    blobs: Vec<([u8; 32], ObjectId, u32)>,
    secrets: Option<(ObjectId, u32)>,
}

impl Plan {
    /// Notes what a manifest (of epoch key `header.epoch`) adds; an entry that does
    /// not follow the part's chain is an error.
    pub(super) fn note(
        &mut self,
        header: &ManifestHeader,
        body: &ManifestBody,
    ) -> Result<(), String> {
        for entry in &body.entries {
            match entry {
                Entry::Part {
                    collection,
                    part,
                    after,
                    heads,
                    objects,
                } => {
                    let chain = self.parts.entry((collection.clone(), *part)).or_default();
                    if after.is_empty() {
                        chain.entries.clear();
                    } else if *after != chain.heads {
                        return Err(format!(
                            "part {part} of {collection} continues from heads it does not have"
                        ));
                    }
                    chain.entries.push((objects.clone(), header.epoch));
                    chain.heads = heads.clone();
                }
                Entry::Chunk { hash, object } => {
                    self.chunks.insert(*hash, (*object, header.epoch));
                }
                Entry::Blob { id, object } => self.blobs.push((*id, *object, header.epoch)),
                Entry::Secrets { object } => self.secrets = Some((*object, header.epoch)),
            }
        }
        Ok(())
    }

    /// Every object a restore reads.
    pub(super) fn objects(&self) -> Vec<ObjectId> {
        let mut out: Vec<ObjectId> = self
            .parts
            .values()
            .flat_map(|chain| {
                chain
                    .entries
                    .iter()
                    .flat_map(|(objects, _)| objects.clone())
            })
            .chain(self.chunks.values().map(|(object, _)| *object))
            .chain(self.blobs.iter().map(|(_, object, _)| *object))
            .chain(self.secrets.iter().map(|(object, _)| *object))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Reaches `host` with a swarm of its own (this HOME runs no node yet) and opens a
/// backup stream; the task that drives the swarm is returned with it.
async fn reach(
    device: libp2p::identity::Keypair,
    host: PeerId,
    addrs: &[Multiaddr],
) -> Result<(Link, tokio::task::JoinHandle<()>), BackupError> {
    let unreachable = |reason: String| BackupError::Unreachable { peer: host, reason };
    let mut swarm =
        crate::mesh::lone_swarm(device, Duration::from_secs(60)).map_err(unreachable)?;
    let mut control = swarm.behaviour().new_control();
    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(host)
        .addresses(addrs.to_vec())
        .build();
    swarm.dial(opts).map_err(|e| unreachable(e.to_string()))?;
    let deadline = tokio::time::sleep(CONNECT_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == host => break,
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(unreachable(error.to_string()));
                }
                _ => {}
            },
            _ = &mut deadline => return Err(unreachable(format!("no connection within {CONNECT_TIMEOUT:?}"))),
        }
    }
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let stream = control
        .open_stream(host, StreamProtocol::new(BACKUP_PROTOCOL))
        .await
        .map_err(|e| unreachable(e.to_string()));
    match stream {
        Ok(stream) => Ok((Link { peer: host, stream }, driver)),
        Err(e) => {
            driver.abort();
            Err(e)
        }
    }
}

/// One object from the host, checked against its name, opened with its epoch's key.
async fn fetch(
    link: &mut Link,
    keys: &HashMap<u32, Zeroizing<[u8; 32]>>,
    handle: &Handle,
    id: ObjectId,
    bytes: &mut u64,
) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    link.send(&Request::Get { id }).await?;
    fetched(link, keys, handle, id, bytes).await
}

/// The answer to a `Get` of object `id` already sent, checked and opened.
async fn fetched(
    link: &mut Link,
    keys: &HashMap<u32, Zeroizing<[u8; 32]>>,
    handle: &Handle,
    id: ObjectId,
    bytes: &mut u64,
) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    let peer = link.peer;
    let hex = data_encoding::HEXLOWER.encode(&id[..8]);
    let answer = link.recv().await?;
    let Response::Object { object } = answer else {
        return Err(link.unexpected(&answer));
    };
    let object = object.ok_or_else(|| BackupError::Damaged {
        peer,
        what: format!("object {hex}… is missing on the host"),
    })?;
    if object_id(&object) != id {
        return Err(BackupError::Damaged {
            peer,
            what: format!("object {hex}… is not what the manifest names (altered)"),
        });
    }
    *bytes += object.len() as u64;
    // The epoch the object was sealed under: a manifest that holds the whole vault
    // (after pruning) names chunks uploaded under older epochs.
    let key_id = object_epoch(&object).map_err(|e| BackupError::Damaged {
        peer,
        what: format!("object {hex}…: {e}"),
    })?;
    let key = keys.get(&key_id).ok_or_else(|| BackupError::Damaged {
        peer,
        what: format!(
            "object {hex}… is sealed under an epoch key neither a manifest nor the kit gave"
        ),
    })?;
    open_object(key, handle, key_id, &object).map_err(|e| BackupError::Damaged {
        peer,
        what: format!("object {hex}…: {e}"),
    })
}

/// Brings the vault back from `host` into the empty `home`, with the kit's `secret`.
pub async fn recover(
    home: &Home,
    secret: &RecoverySecret,
    host: PeerId,
    addrs: &[Multiaddr],
    passphrase: Option<&Passphrase>,
) -> Result<Recovered, BackupError> {
    if home.has_vault() || home.is_host() || home.store_dir().exists() {
        return Err(BackupError::NotEmpty(home.root().display().to_string()));
    }
    let kit = secret.public();
    let handle = kit.handle;
    let exchange = secret.exchange_seed();
    let device = libp2p::identity::Keypair::generate_ed25519();
    let me = device.public().to_peer_id();
    let (mut link, driver) = reach(device.clone(), host, addrs).await?;
    // What a restore that fails leaves behind is removed: the HOME stays empty, ready
    // for another try.
    let made = [
        home.keys(),
        home.owner_token(),
        home.store_dir(),
        home.blobs_dir(),
    ];
    let existed: Vec<bool> = made.iter().map(|p| p.exists()).collect();
    let result = read_and_restore(
        home, secret, &kit, &exchange, device, me, host, &mut link, handle, passphrase,
    )
    .await;
    driver.abort();
    if result.is_err() {
        for (path, existed) in made.iter().zip(existed) {
            if existed {
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            if let Err(e) = removed
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove what a failed restore wrote");
            }
        }
    }
    result
}

/// Checks that each manifest (seq, epoch key id) is sealed under an epoch key of the
/// restored vault, in an epoch no older than the manifest before it.
fn check_epochs(
    view: &epochs::View,
    keys: &HashMap<u32, Zeroizing<[u8; 32]>>,
    sealed_under: &[(u64, u32)],
) -> Result<(), String> {
    let listed =
        |peer: &PeerId| view.members.iter().any(|m| m.peer == *peer) || view.removed.contains(peer);
    let mut before = 0;
    for (seq, key_id) in sealed_under {
        let key = keys
            .get(key_id)
            .ok_or_else(|| format!("manifest {seq}'s key was not opened"))?;
        let n = view
            .epochs
            .iter()
            .find(|e| listed(&e.made_by) && e.commits_to(key))
            .map(|e| e.n)
            .ok_or_else(|| {
                format!(
                    "manifest {seq} is sealed under a key that is none of the vault's epochs: it was added by someone who held the upload token but no key of the vault; nothing was restored"
                )
            })?;
        if n < before {
            return Err(format!(
                "manifest {seq} is sealed under epoch {n}, older than the manifest before it (epoch {before}): it was added by a device that held an old key; nothing was restored"
            ));
        }
        before = n;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn read_and_restore(
    home: &Home,
    secret: &RecoverySecret,
    kit: &crate::recovery::KitPublic,
    exchange: &[u8; 32],
    device: libp2p::identity::Keypair,
    me: PeerId,
    host: PeerId,
    link: &mut Link,
    handle: Handle,
    passphrase: Option<&Passphrase>,
) -> Result<Recovered, BackupError> {
    let message = owner_open_message(&host.to_bytes(), &me.to_bytes(), &handle);
    let signature = secret.owner_keypair().sign(&message);
    let answer = link.ask(&Request::OpenOwner { handle, signature }).await?;
    let Response::Opened { seq, last, .. } = answer else {
        return Err(link.unexpected(&answer));
    };
    if seq == 0 {
        return Err(BackupError::Damaged {
            peer: host,
            what: "the host holds nothing of this vault yet".into(),
        });
    }

    // The whole chain, checked, before anything is written.
    let mut keys: HashMap<u32, Zeroizing<[u8; 32]>> = HashMap::new();
    let mut progress = Progress {
        handle,
        ..Progress::default()
    };
    let mut plan = Plan::default();
    // Each manifest's epoch key, in chain order: checked against the vault's epochs
    // once they are read.
    let mut sealed_under: Vec<(u64, u32)> = Vec::new();
    read_chain(
        link,
        &mut progress,
        seq,
        last,
        &kit.owner,
        |header| {
            epochs::open_key_with(
                &kit_info(&handle, header.epoch),
                exchange,
                &header.kit_sealed,
            )
            .filter(|key| epochs::key_id_of(key) == header.epoch)
            .ok_or_else(|| "its epoch key does not open with this kit".to_owned())
        },
        |header, body, key| {
            plan.note(header, body)?;
            sealed_under.push((header.seq, header.epoch));
            keys.insert(header.epoch, key);
            Ok(())
        },
    )
    .await?;
    let made_at = progress.last_upload.unwrap_or(0);

    // The vault's secrets, then a new device of it.
    let mut bytes = 0;
    let Plan {
        parts,
        chunks,
        blobs,
        secrets,
    } = plan;
    let (object, _) = secrets.ok_or_else(|| BackupError::Damaged {
        peer: host,
        what: "no manifest names the vault's secrets".into(),
    })?;
    let plain = fetch(link, &keys, &handle, object, &mut bytes).await?;
    if plain.len() != 80 {
        return Err(BackupError::Damaged {
            peer: host,
            what: "the vault's secrets object is malformed".into(),
        });
    }
    let shared = SharedSecrets {
        vault_id: plain[..16].try_into().expect("16 bytes"),
        storage_key: Zeroizing::new(plain[16..48].try_into().expect("32 bytes")),
        signing_key: Zeroizing::new(plain[48..80].try_into().expect("32 bytes")),
    };
    let device_secret = Zeroizing::new(
        <[u8; 32]>::try_from(
            device
                .try_into_ed25519()
                .map_err(|e| BackupError::Vault(e.to_string()))?
                .secret()
                .as_ref(),
        )
        .map_err(|_| BackupError::Vault("unexpected device key length".into()))?,
    );
    let vault_id = data_encoding::HEXLOWER.encode(&shared.vault_id);
    let made = keys::init_joined(home, passphrase, shared, device_secret)
        .map_err(|e| BackupError::Vault(e.to_string()))?;
    let vault_keys = std::sync::Arc::new(made.keys);
    let store = std::sync::Arc::new(Store::open(&home.store_dir(), vault_keys.clone())?);
    let collections = std::sync::Arc::new(Collections::open(
        store.clone(),
        crate::collections::actor_for(&me),
    )?);

    // Every part: its whole copy, then the changes after it.
    let restored_parts = parts.len();
    for ((collection, part), chain) in parts {
        let name = CollectionName::parse(&collection).map_err(|e| BackupError::Damaged {
            peer: host,
            what: format!("a part names the collection {collection:?}: {e}"),
        })?;
        for (i, (objects, _)) in chain.entries.iter().enumerate() {
            let mut data = Zeroizing::new(Vec::new());
            for object in objects {
                data.extend_from_slice(&fetch(link, &keys, &handle, *object, &mut bytes).await?);
            }
            let c = collections.clone();
            let name = name.clone();
            let whole = i == 0;
            tokio::task::spawn_blocking(move || {
                if whole {
                    c.receive_whole(&name, part, &data)
                } else {
                    c.receive_changes(&name, part, &data)
                }
            })
            .await
            .map_err(|e| BackupError::Vault(e.to_string()))??;
        }
    }
    store.commit().await?;

    // Every manifest must be sealed under one of the vault's epoch keys (made by one
    // of its devices, removed ones included), none older than the one before it:
    // anyone can seal a key to the kit's public half, so a manifest that someone who
    // held the upload token but no vault key added, or one added under an old epoch
    // after a newer one was in use, is caught here and nothing is kept.
    let view = epochs::view_of(&collections, vault_keys.vault_id)?;
    check_epochs(&view, &keys, &sealed_under)
        .map_err(|what| BackupError::Damaged { peer: host, what })?;

    // The epoch keys sealed to the kit, sealed to this device as a member seals them
    // to another: it holds them from its first start, and can pass them on.
    for epoch in view.valid(&vault_keys.vault_id) {
        if let Some(key) = epoch.open_as(&vault_keys.vault_id, &kit.recipient(), exchange) {
            epochs::seal_to_self(&collections, &vault_keys, epoch, &key)?;
        }
    }
    // Chunks uploaded under an epoch no kept manifest is sealed under (the chain was
    // pruned) open with that epoch's key, which the kit opens from `_epochs`.
    for epoch in &view.epochs {
        if let Some(key) = epoch.open_as(&vault_keys.vault_id, &kit.recipient(), exchange) {
            keys.entry(epochs::key_id_of(&key)).or_insert(key);
        }
    }

    // Every blob, chunk by chunk (each checked against its keyed hash as it is stored).
    let store_blobs = std::sync::Arc::new(Blobs::open(
        home.blobs_dir(),
        store.clone(),
        vault_keys.clone(),
    )?);
    let restored_blobs = blobs.len();
    for (id, object, _) in blobs {
        let manifest_bytes = fetch(link, &keys, &handle, object, &mut bytes).await?;
        let manifest = hearth_protocol::blob::Manifest::decode(&manifest_bytes).map_err(|e| {
            BackupError::Damaged {
                peer: host,
                what: format!("a blob's chunk list: {e}"),
            }
        })?;
        let blob = hearth_protocol::BlobId(id);
        let _pinned = store_blobs.pin_fetch(blob, &manifest);
        let wanted: Vec<([u8; 32], ObjectId)> = manifest
            .chunks
            .iter()
            .map(|hash| {
                chunks
                    .get(hash)
                    .map(|(object, _)| (*hash, *object))
                    .ok_or_else(|| BackupError::Damaged {
                        peer: host,
                        what: format!("blob {blob} names a chunk no manifest holds"),
                    })
            })
            .collect::<Result<_, _>>()?;
        // A window of asks kept full: the next chunk is asked for before the one that
        // arrived is stored, so the host's disk and the way here never wait for this
        // device's.
        let mut asked = std::collections::VecDeque::with_capacity(FETCH_WINDOW);
        let mut next = wanted.iter();
        for (hash, object) in next.by_ref().take(FETCH_WINDOW) {
            link.send(&Request::Get { id: *object }).await?;
            asked.push_back((*hash, *object));
        }
        // Chunks are stored (sealed, written) on other threads while the next arrive.
        let mut storing = std::collections::VecDeque::with_capacity(STORE_WINDOW);
        while let Some((hash, object)) = asked.pop_front() {
            let plain = fetched(link, &keys, &handle, object, &mut bytes).await?;
            if let Some((hash, object)) = next.next() {
                link.send(&Request::Get { id: *object }).await?;
                asked.push_back((*hash, *object));
            }
            let mut buf = chunk_buffer(plain.len());
            buf.extend_from_slice(&plain);
            let blobs = store_blobs.clone();
            storing.push_back(tokio::spawn(
                async move { blobs.store_chunk(hash, buf).await },
            ));
            if storing.len() >= STORE_WINDOW
                && let Some(oldest) = storing.pop_front()
            {
                stored(oldest).await?;
            }
        }
        for task in storing {
            stored(task).await?;
        }
        store_blobs.store_manifest(blob, &manifest).await?;
    }

    // This device knows the host's chain: it goes on from there, uploading only what
    // it adds.
    save_progress(&store, &host, &progress)?;
    store.commit().await?;
    drop(store_blobs);
    drop(collections);
    store.shutdown().await?;
    Ok(Recovered {
        peer_id: me.to_string(),
        vault_id,
        seq,
        made_at,
        parts: restored_parts,
        blobs: restored_blobs,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the uploader chain can hold: manifests under the vault's epochs, in order.
    /// One under a key that is no epoch (anyone can seal a key to the kit's public
    /// half) or under an older epoch than the one before it is refused.
    #[test]
    fn a_manifest_under_no_epoch_or_an_older_one_is_refused() {
        let device = libp2p::identity::Keypair::generate_ed25519();
        let seed = [3u8; 32];
        let me = epochs::Identity {
            vault_id: [1; 16],
            device: &device,
            exchange: &seed,
        };
        let mut view = epochs::View {
            members: vec![epochs::Member {
                peer: device.public().to_peer_id(),
                exchange: Some(epochs::exchange_public(&seed)),
            }],
            ..epochs::View::default()
        };
        let mut keys = HashMap::new();
        let mut ids = Vec::new();
        for now in [1_000, 1_001] {
            let writes = epochs::plan(&view, &me, epochs::Rotation::Now, now);
            epochs::apply(&mut view, &writes);
            let key = view.current(&me.vault_id).unwrap().open(&me).unwrap();
            ids.push(epochs::key_id_of(&key));
            keys.insert(epochs::key_id_of(&key), key);
        }
        let forged = Zeroizing::new([9u8; 32]);
        keys.insert(epochs::key_id_of(&forged), forged.clone());
        let (one, two, none) = (ids[0], ids[1], epochs::key_id_of(&forged));

        assert_eq!(
            check_epochs(&view, &keys, &[(1, one), (2, two), (3, two)]),
            Ok(())
        );
        let refused = check_epochs(&view, &keys, &[(1, one), (2, none)]).unwrap_err();
        assert!(
            refused.contains("manifest 2") && refused.contains("none of the vault's epochs"),
            "{refused}"
        );
        let refused = check_epochs(&view, &keys, &[(1, two), (2, one)]).unwrap_err();
        assert!(refused.contains("older"), "{refused}");
        // An epoch made by a device the vault never listed counts for nothing.
        view.members.clear();
        assert!(check_epochs(&view, &keys, &[(1, one)]).is_err());
    }
}
