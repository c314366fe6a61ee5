//! What a backup host keeps, on its disk: per enrolled vault (named by its handle, 16
//! random-looking bytes), the objects the vault's devices uploaded and their manifest
//! chain, all sealed by the devices; the host reads only the manifests' clear headers.
//!
//! ```text
//! HOME/vaults/<handle hex>/vault.json          the upload token's hash, the owner key,
//!                                              quota, times
//! HOME/vaults/<handle hex>/objects/<xx>/<hash> an object, named by its BLAKE3 hash
//! HOME/vaults/<handle hex>/manifests/<seq>     manifest seq (20 digits)
//! ```
//!
//! Each file is written to a temporary name, synced, and renamed: a crash leaves the
//! old state or the new, and a manifest is written only after the objects before it.
//! Nothing is ever deleted by a device (`Request` has no delete).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hearth_protocol::backup::{
    Handle, MANIFESTS_PER_ANSWER, MAX_MANIFEST, MAX_OBJECT, ManifestHeader, OBJECTS_PER_ANSWER,
    ObjectId, manifest_hash, object_id, rebase_message, token_hash,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::home::{create_private_dir, sync_dir, write_file_atomic};

/// Why the host refused a request: said to the device as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this vault is already enrolled on this host")]
    AlreadyEnrolled,
    #[error("no such vault on this host, or a wrong upload token or owner key")]
    Unknown,
    #[error("this vault was opened to read only (with its owner key): nothing can be added")]
    ReadOnly,
    #[error("the object is {0} bytes; the host takes at most {MAX_OBJECT}")]
    ObjectTooLarge(usize),
    #[error("the manifest is {0} bytes; the host takes at most {MAX_MANIFEST}")]
    ManifestTooLarge(usize),
    #[error("the vault's quota of {quota} bytes is used up ({used} used, {wanted} more asked)")]
    Quota { quota: u64, used: u64, wanted: u64 },
    #[error("{0}")]
    BadManifest(String),
    #[error(
        "manifest {got} is not the next one: the host holds {held} (another device uploaded meanwhile; read the chain again)"
    )]
    NotNext { held: u64, got: u64 },
    #[error("manifest {0} does not follow the one the host holds (its prev differs)")]
    WrongPrev(u64),
    #[error("the manifest is for another vault than the one opened")]
    OtherVault,
    #[error("the host cannot store it: {0}")]
    Disk(String),
    #[error("only the vault's owner key (its recovery kit) may do this")]
    OwnerOnly,
    #[error("manifest {0} cannot be the chain's first: the host does not hold it")]
    NoSuchManifest(u64),
    #[error("the owner's signature does not match manifest {0}")]
    BadRebase(u64),
    #[error("at most {max} objects at once ({0} asked)", max = hearth_protocol::backup::OBJECTS_PER_ANSWER)]
    TooMany(usize),
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        Refusal::Disk(e.to_string())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VaultFile {
    /// Hex of the upload token's hash.
    token_hash: String,
    /// Hex of the recovery kit's owner key (Ed25519): it opens the vault to read.
    owner: String,
    quota: u64,
    enrolled_at: u64,
}

#[derive(Debug, Clone)]
struct VaultState {
    token_hash: [u8; 32],
    owner: [u8; 32],
    quota: u64,
    enrolled_at: u64,
    seq: u64,
    last: [u8; 32],
    bytes: u64,
    objects: u64,
    last_upload: Option<u64>,
    /// The first manifest the host keeps (0: never rebased, the chain starts at 1)
    /// and the owner's signature that made it first.
    base: u64,
    base_signature: Vec<u8>,
}

/// `vaults/HANDLE/base`: where the chain starts since the owner rebased it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BaseFile {
    seq: u64,
    /// Hex of the owner key's signature over `rebase_message`.
    signature: String,
}

impl VaultState {
    /// The first manifest kept (1 if the chain was never rebased).
    fn first(&self) -> u64 {
        self.base.max(1)
    }

    fn opened(&self) -> Opened {
        Opened {
            seq: self.seq,
            last: self.last,
            bytes: self.bytes,
            quota: self.quota,
        }
    }

    /// Whether `wanted` more bytes fit in the vault's quota.
    fn room_for(&self, wanted: u64) -> Result<(), Refusal> {
        if self.bytes + wanted > self.quota {
            return Err(Refusal::Quota {
                quota: self.quota,
                used: self.bytes,
                wanted,
            });
        }
        Ok(())
    }
}

/// What the host's operator sees of one vault: an opaque name and sizes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VaultSummary {
    /// The vault's handle, in hex: random to the host.
    pub name: String,
    pub bytes: u64,
    pub quota: u64,
    pub objects: u64,
    pub manifests: u64,
    pub enrolled_at: u64,
    pub last_upload: Option<u64>,
}

/// What a device learns when it opens its vault on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub seq: u64,
    pub last: [u8; 32],
    pub bytes: u64,
    pub quota: u64,
}

/// What a vault's folder is renamed to end with while its owner deletes it.
const FORGOTTEN: &str = ".forgotten";

pub struct HostStore {
    root: PathBuf,
    quota: u64,
    vaults: Mutex<HashMap<Handle, VaultState>>,
    /// Objects written and not yet synced to the disk, per vault: synced together
    /// before the next manifest is written (a manifest never names an object a crash
    /// could lose).
    unsynced: Mutex<HashMap<Handle, Vec<PathBuf>>>,
}

/// Writes `bytes` to `path` through a temporary file renamed over it (0600), without
/// syncing: [`HostStore::append`] syncs a manifest's objects before the manifest.
fn write_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl HostStore {
    /// Opens (or makes) the store under `root` (`HOME/vaults`); `quota` is what a vault
    /// enrolled from now on may use.
    pub fn open(root: &Path, quota: u64) -> std::io::Result<Self> {
        create_private_dir(root)?;
        let mut vaults = HashMap::new();
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(handle) = data_encoding::HEXLOWER
                .decode(name.as_bytes())
                .ok()
                .and_then(|h| Handle::try_from(h.as_slice()).ok())
            else {
                // A vault its owner deleted, cut short: finished now.
                if name.ends_with(FORGOTTEN) {
                    std::fs::remove_dir_all(entry.path())?;
                    continue;
                }
                tracing::warn!(name, "not a vault's folder; left alone");
                continue;
            };
            match Self::load(&entry.path()) {
                Ok(state) => {
                    vaults.insert(handle, state);
                }
                Err(e) => {
                    tracing::warn!(name, error = %e, "cannot read this vault's folder; it is not served")
                }
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            quota,
            vaults: Mutex::new(vaults),
            unsynced: Mutex::new(HashMap::new()),
        })
    }

    fn load(dir: &Path) -> std::io::Result<VaultState> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let file: VaultFile = serde_json::from_slice(&std::fs::read(dir.join("vault.json"))?)
            .map_err(|e| bad(&format!("vault.json: {e}")))?;
        let token_hash = data_encoding::HEXLOWER
            .decode(file.token_hash.as_bytes())
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
            .ok_or_else(|| bad("vault.json: the token hash is malformed"))?;
        let owner = data_encoding::HEXLOWER
            .decode(file.owner.as_bytes())
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
            .ok_or_else(|| bad("vault.json: the owner key is malformed"))?;
        let mut bytes = 0;
        let mut objects = 0;
        let mut last_upload = None;
        let objects_dir = dir.join("objects");
        if objects_dir.exists() {
            for sub in std::fs::read_dir(&objects_dir)? {
                for object in std::fs::read_dir(sub?.path())? {
                    let object = object?;
                    // An object a crash cut short before its rename: never named.
                    if object.path().extension().is_some_and(|e| e == "tmp") {
                        std::fs::remove_file(object.path())?;
                        continue;
                    }
                    bytes += object.metadata()?.len();
                    objects += 1;
                }
            }
        }
        // Where the owner made the chain start; manifests before it (a rebase cut
        // short before it dropped them) are dropped now.
        let (base, base_signature) = match std::fs::read(dir.join("base")) {
            Ok(bytes) => {
                let file: BaseFile =
                    serde_json::from_slice(&bytes).map_err(|e| bad(&format!("base: {e}")))?;
                let signature = data_encoding::HEXLOWER
                    .decode(file.signature.as_bytes())
                    .map_err(|_| bad("base: the signature is malformed"))?;
                (file.seq, signature)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, Vec::new()),
            Err(e) => return Err(e),
        };
        for seq in 1..base {
            let path = dir.join("manifests").join(format!("{seq:020}"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // The chain must be whole from its first manifest: no gap.
        let mut seq = base.saturating_sub(1);
        let mut last = [0u8; 32];
        loop {
            let path = dir.join("manifests").join(format!("{:020}", seq + 1));
            let Ok(manifest) = std::fs::read(&path) else {
                break;
            };
            bytes += manifest.len() as u64;
            last = manifest_hash(&manifest);
            last_upload = std::fs::metadata(&path)?
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            seq += 1;
        }
        if base > 0 && seq < base {
            return Err(bad("base: the manifest the chain starts at is missing"));
        }
        Ok(VaultState {
            token_hash,
            owner,
            quota: file.quota,
            enrolled_at: file.enrolled_at,
            seq,
            last,
            bytes,
            objects,
            last_upload,
            base,
            base_signature,
        })
    }

    fn dir(&self, handle: &Handle) -> PathBuf {
        self.root.join(hex(handle))
    }

    fn object_path(&self, handle: &Handle, id: &ObjectId) -> PathBuf {
        let name = hex(id);
        self.dir(handle)
            .join("objects")
            .join(&name[..2])
            .join(&name[2..])
    }

    /// Enrolls a vault (the invite was checked by the caller).
    pub fn enroll(
        &self,
        handle: Handle,
        token_hash: [u8; 32],
        owner: [u8; 32],
    ) -> Result<u64, Refusal> {
        let mut vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        if let Some(state) = vaults.get(&handle) {
            // The same enrollment again (a device retrying): nothing to do.
            if bool::from(state.token_hash.ct_eq(&token_hash)) && state.owner == owner {
                return Ok(state.quota);
            }
            return Err(Refusal::AlreadyEnrolled);
        }
        let dir = self.dir(&handle);
        create_private_dir(&dir)?;
        create_private_dir(&dir.join("objects"))?;
        create_private_dir(&dir.join("manifests"))?;
        let enrolled_at = now();
        let file = VaultFile {
            token_hash: hex(&token_hash),
            owner: hex(&owner),
            quota: self.quota,
            enrolled_at,
        };
        write_file_atomic(
            &dir.join("vault.json"),
            &serde_json::to_vec_pretty(&file).expect("serializes"),
            0o600,
        )?;
        vaults.insert(
            handle,
            VaultState {
                token_hash,
                owner,
                quota: self.quota,
                enrolled_at,
                seq: 0,
                last: [0; 32],
                bytes: 0,
                objects: 0,
                last_upload: None,
                base: 0,
                base_signature: Vec::new(),
            },
        );
        Ok(self.quota)
    }

    /// Replaces a vault's upload token (by its hash): the old one no longer opens it.
    pub fn set_token(&self, handle: &Handle, token_hash: [u8; 32]) -> Result<(), Refusal> {
        let mut vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        let state = vaults.get_mut(handle).ok_or(Refusal::Unknown)?;
        if bool::from(state.token_hash.ct_eq(&token_hash)) {
            return Ok(());
        }
        let file = VaultFile {
            token_hash: hex(&token_hash),
            owner: hex(&state.owner),
            quota: state.quota,
            enrolled_at: state.enrolled_at,
        };
        write_file_atomic(
            &self.dir(handle).join("vault.json"),
            &serde_json::to_vec_pretty(&file).expect("serializes"),
            0o600,
        )?;
        state.token_hash = token_hash;
        Ok(())
    }

    /// Opens a vault with its upload token.
    pub fn open_vault(&self, handle: &Handle, token: &[u8; 32]) -> Result<Opened, Refusal> {
        let vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        let presented = token_hash(token);
        let state = vaults.get(handle).ok_or(Refusal::Unknown)?;
        if !bool::from(state.token_hash.ct_eq(&presented)) {
            return Err(Refusal::Unknown);
        }
        Ok(state.opened())
    }

    /// Opens a vault to read, with the owner key's signature of `message`
    /// ([`hearth_protocol::backup::owner_open_message`]).
    pub fn open_owner(
        &self,
        handle: &Handle,
        message: &[u8],
        signature: &[u8],
    ) -> Result<Opened, Refusal> {
        let vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        let state = vaults.get(handle).ok_or(Refusal::Unknown)?;
        let verified = libp2p::identity::ed25519::PublicKey::try_from_bytes(&state.owner)
            .is_ok_and(|key| key.verify(message, signature));
        if !verified {
            return Err(Refusal::Unknown);
        }
        Ok(state.opened())
    }

    /// Stores an object; the bytes the vault uses afterwards.
    pub fn put(&self, handle: &Handle, object: &[u8]) -> Result<u64, Refusal> {
        if object.len() > MAX_OBJECT {
            return Err(Refusal::ObjectTooLarge(object.len()));
        }
        let id = object_id(object);
        let path = self.object_path(handle, &id);
        let mut vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        let state = vaults.get_mut(handle).ok_or(Refusal::Unknown)?;
        // Already here whole (an object's name is its hash, so the same bytes).
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == object.len() as u64) {
            return Ok(state.bytes);
        }
        let wanted = object.len() as u64;
        state.room_for(wanted)?;
        let dir = path.parent().expect("an object has a folder");
        if !dir.exists() {
            create_private_dir(dir)?;
            sync_dir(dir.parent().expect("objects/ has a parent"))?;
        }
        write_unsynced(&path, object)?;
        self.unsynced
            .lock()
            .expect("unsynced lock is never poisoned")
            .entry(*handle)
            .or_default()
            .push(path);
        state.bytes += wanted;
        state.objects += 1;
        state.last_upload = Some(now());
        Ok(state.bytes)
    }

    /// Appends a manifest: it must be the next of the chain.
    pub fn append(&self, handle: &Handle, manifest: &[u8]) -> Result<u64, Refusal> {
        if manifest.len() > MAX_MANIFEST {
            return Err(Refusal::ManifestTooLarge(manifest.len()));
        }
        let (header, _) =
            ManifestHeader::parse(manifest).map_err(|e| Refusal::BadManifest(e.to_string()))?;
        if &header.handle != handle {
            return Err(Refusal::OtherVault);
        }
        let mut vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        let state = vaults.get_mut(handle).ok_or(Refusal::Unknown)?;
        if header.seq != state.seq + 1 {
            return Err(Refusal::NotNext {
                held: state.seq,
                got: header.seq,
            });
        }
        if header.prev != state.last {
            return Err(Refusal::WrongPrev(header.seq));
        }
        let wanted = manifest.len() as u64;
        state.room_for(wanted)?;
        let unsynced = self
            .unsynced
            .lock()
            .expect("unsynced lock is never poisoned")
            .remove(handle)
            .unwrap_or_default();
        let mut dirs = std::collections::BTreeSet::new();
        for object in &unsynced {
            std::fs::File::open(object)?.sync_all()?;
            if let Some(dir) = object.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            sync_dir(&dir)?;
        }
        let path = self
            .dir(handle)
            .join("manifests")
            .join(format!("{:020}", header.seq));
        write_file_atomic(&path, manifest, 0o600)?;
        state.seq = header.seq;
        state.last = manifest_hash(manifest);
        state.bytes += wanted;
        state.last_upload = Some(now());
        Ok(state.seq)
    }

    /// Manifests after `after`, in order, at most `limit`.
    pub fn manifests(
        &self,
        handle: &Handle,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, Refusal> {
        let (held, first) = {
            let vaults = self.vaults.lock().expect("vaults lock is never poisoned");
            let state = vaults.get(handle).ok_or(Refusal::Unknown)?;
            (state.seq, state.first())
        };
        let limit = u64::from(limit.min(MANIFESTS_PER_ANSWER));
        // Manifests before the chain's first are gone: the answer starts at it.
        let after = after.max(first - 1);
        let mut out = Vec::new();
        for seq in after + 1..=held.min(after.saturating_add(limit)) {
            let path = self
                .dir(handle)
                .join("manifests")
                .join(format!("{seq:020}"));
            out.push(std::fs::read(path)?);
        }
        Ok(out)
    }

    /// Where the chain starts: (1, no signature) if it was never rebased.
    pub fn base(&self, handle: &Handle) -> Result<(u64, Vec<u8>), Refusal> {
        let vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        let state = vaults.get(handle).ok_or(Refusal::Unknown)?;
        Ok((state.first(), state.base_signature.clone()))
    }

    /// Makes manifest `seq` the chain's first, if `signature` is the owner key's over
    /// its [`rebase_message`]: the base is written (synced) first, then the manifests
    /// before it are deleted. Returns the bytes the vault uses afterwards.
    pub fn rebase(&self, handle: &Handle, seq: u64, signature: &[u8]) -> Result<u64, Refusal> {
        let mut vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        let state = vaults.get_mut(handle).ok_or(Refusal::Unknown)?;
        if seq < state.first() || seq > state.seq {
            return Err(Refusal::NoSuchManifest(seq));
        }
        let manifests = self.dir(handle).join("manifests");
        let manifest = std::fs::read(manifests.join(format!("{seq:020}")))?;
        let message = rebase_message(handle, seq, &manifest_hash(&manifest));
        let verified = libp2p::identity::ed25519::PublicKey::try_from_bytes(&state.owner)
            .is_ok_and(|key| key.verify(&message, signature));
        if !verified {
            return Err(Refusal::BadRebase(seq));
        }
        let file = BaseFile {
            seq,
            signature: hex(signature),
        };
        write_file_atomic(
            &self.dir(handle).join("base"),
            &serde_json::to_vec_pretty(&file).expect("serializes"),
            0o600,
        )?;
        for old in state.first()..seq {
            let path = manifests.join(format!("{old:020}"));
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            match std::fs::remove_file(&path) {
                Ok(()) => state.bytes = state.bytes.saturating_sub(len),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        state.base = seq;
        state.base_signature = signature.to_vec();
        Ok(state.bytes)
    }

    /// Deletes the vault and everything it keeps; the bytes and objects it used. Its folder is
    /// renamed first, so a crash midway leaves nothing that is served again.
    pub fn forget(&self, handle: &Handle) -> Result<(u64, u64), Refusal> {
        let mut vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        let state = vaults.get(handle).ok_or(Refusal::Unknown)?;
        let used = (state.bytes, state.objects);
        let dir = self.dir(handle);
        let gone = self.root.join(format!("{}{FORGOTTEN}", hex(handle)));
        std::fs::rename(&dir, &gone)?;
        sync_dir(&self.root)?;
        vaults.remove(handle);
        self.unsynced
            .lock()
            .expect("unsynced lock is never poisoned")
            .remove(handle);
        std::fs::remove_dir_all(&gone)?;
        Ok(used)
    }

    /// The names of the vault's objects after `after`, in order, at most `limit`.
    pub fn objects(
        &self,
        handle: &Handle,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<ObjectId>, Refusal> {
        if !self
            .vaults
            .lock()
            .expect("vaults lock is never poisoned")
            .contains_key(handle)
        {
            return Err(Refusal::Unknown);
        }
        let mut ids = Vec::new();
        let objects = self.dir(handle).join("objects");
        for sub in std::fs::read_dir(&objects)? {
            let sub = sub?;
            let prefix = sub.file_name().to_string_lossy().into_owned();
            for object in std::fs::read_dir(sub.path())? {
                let rest = object?.file_name().to_string_lossy().into_owned();
                let id = data_encoding::HEXLOWER
                    .decode(format!("{prefix}{rest}").as_bytes())
                    .ok()
                    .and_then(|b| ObjectId::try_from(b.as_slice()).ok());
                if let Some(id) = id.filter(|id| after.is_none_or(|a| *id > a)) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        ids.truncate(limit.min(OBJECTS_PER_ANSWER) as usize);
        Ok(ids)
    }

    /// Deletes objects (those it lacks are skipped); the bytes the vault uses after.
    pub fn drop_objects(&self, handle: &Handle, ids: &[ObjectId]) -> Result<u64, Refusal> {
        if ids.len() > OBJECTS_PER_ANSWER as usize {
            return Err(Refusal::TooMany(ids.len()));
        }
        let mut vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        let state = vaults.get_mut(handle).ok_or(Refusal::Unknown)?;
        let mut dropped = Vec::new();
        for id in ids {
            let path = self.object_path(handle, id);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            std::fs::remove_file(&path)?;
            state.bytes = state.bytes.saturating_sub(meta.len());
            state.objects = state.objects.saturating_sub(1);
            dropped.push(path);
        }
        // An object dropped before the manifest that would have synced it: nothing
        // to sync any more.
        if let Some(unsynced) = self
            .unsynced
            .lock()
            .expect("unsynced lock is never poisoned")
            .get_mut(handle)
        {
            unsynced.retain(|p| !dropped.contains(p));
        }
        Ok(state.bytes)
    }

    pub fn get(&self, handle: &Handle, id: &ObjectId) -> Result<Option<Vec<u8>>, Refusal> {
        match std::fs::read(self.object_path(handle, id)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The Bao slice proving the host holds bytes `offset..offset + len` of object
    /// `id` (its name is its BLAKE3 hash, the slice's root); `None` if it lacks it.
    pub fn prove(
        &self,
        handle: &Handle,
        id: &ObjectId,
        offset: u64,
        len: u32,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let Some(object) = self.get(handle, id)? else {
            return Ok(None);
        };
        let len = len.min(hearth_protocol::backup::MAX_PROOF);
        let (outboard, _) = bao::encode::outboard(&object);
        let mut slice = Vec::new();
        std::io::Read::read_to_end(
            &mut bao::encode::SliceExtractor::new_outboard(
                std::io::Cursor::new(&object),
                std::io::Cursor::new(&outboard),
                offset,
                u64::from(len),
            ),
            &mut slice,
        )?;
        Ok(Some(slice))
    }

    /// Every enrolled vault, by its opaque name.
    pub fn summaries(&self) -> Vec<VaultSummary> {
        let vaults = self.vaults.lock().expect("vaults lock is never poisoned");
        let mut out: Vec<VaultSummary> = vaults
            .iter()
            .map(|(handle, s)| VaultSummary {
                name: hex(handle),
                bytes: s.bytes,
                quota: s.quota,
                objects: s.objects,
                manifests: s.seq + 1 - s.first().min(s.seq + 1),
                enrolled_at: s.enrolled_at,
                last_upload: s.last_upload,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests;
