//! Keys: creating and opening a vault's secrets in HOME.
//!
//! In: a HOME and, optionally, a passphrase. Out: [`VaultKeys`] — the device identity
//! (a libp2p Ed25519 keypair), the storage key and the keys derived from it, the
//! vault signing key, and the hash of the owner token. Secrets are zeroized on drop
//! and have no `Debug`. The key file format is in `hearth_protocol::keyfile`.

use std::fs;
use std::io;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use data_encoding::{BASE64, BASE64URL_NOPAD, HEXLOWER};
use hearth_protocol::keyfile::{
    Argon2Params, KeyFile, KeyFileError, Protection, SECRETS_DOMAIN, SECRETS_KEY, SecretsBlob,
};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hearth_protocol::seal::{Binding, NONCE_LEN, OpenError, SealKey, epoch_key_id, epoch_nonce};
use libp2p_identity::Keypair;
use libp2p_identity::PeerId;
use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::home::{Home, write_file_atomic};

/// Argon2id cost for new key files: 64 MiB, 3 passes (OWASP's recommended floor is
/// 19 MiB / 2 passes); about a quarter of a second on a laptop.
const ARGON2_M_COST_KIB: u32 = 64 * 1024;
const ARGON2_T_COST: u32 = 3;
const ARGON2_P_COST: u32 = 1;
const OWNER_TOKEN_PREFIX: &str = "hearth_owner_";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    #[error("{0} already holds a vault; refusing to overwrite it")]
    AlreadyInitialized(String),
    #[error(
        "{0} is not a Hearth vault (no key file); create one with `hearth init` or `hearth up`"
    )]
    NotAVault(String),
    #[error(
        "this vault is protected by a passphrase; give it with --passphrase-file or HEARTH_PASSPHRASE"
    )]
    PassphraseRequired,
    #[error("wrong passphrase for this vault")]
    WrongPassphrase,
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("key file {path}: {source}")]
    KeyFile { path: String, source: KeyFileError },
    #[error("key file {0} holds an invalid device key")]
    DeviceKey(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
}

/// A passphrase. Zeroized on drop, never printed.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    pub fn new(text: String) -> Result<Self, KeysError> {
        let text = Zeroizing::new(text);
        // A file written by an editor ends with a newline that is not part of it.
        let trimmed = text.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() {
            return Err(KeysError::EmptyPassphrase);
        }
        Ok(Self(Zeroizing::new(trimmed.to_owned())))
    }

    pub fn from_file(path: &Path) -> Result<Self, KeysError> {
        let text = fs::read_to_string(path).map_err(|source| KeysError::Io {
            what: "cannot read passphrase file",
            path: path.display().to_string(),
            source,
        })?;
        Self::new(text)
    }
}

/// The owner's API token. Zeroized on drop, never printed.
pub struct OwnerToken(Zeroizing<String>);

impl OwnerToken {
    fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *bytes);
        Self(Zeroizing::new(format!(
            "{OWNER_TOKEN_PREFIX}{}",
            BASE64URL_NOPAD.encode(&*bytes)
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The hash the node keeps of its owner token (the key of the hello proof).
pub fn token_hash(token: &[u8]) -> [u8; 32] {
    *blake3::hash(token).as_bytes()
}

/// Keys derived from the storage key, one per purpose, so no two uses share a key.
pub struct DerivedKeys {
    /// Seals every value in the store and every blob chunk until the vault's keys
    /// first rotate (then [`VaultKeys::seal_at_rest`] seals under the epoch's key);
    /// opens every value sealed with version 1.
    pub seal: Arc<SealKey>,
    /// Keys the hash that names collections in sled.
    pub names: Zeroizing<[u8; 32]>,
    /// Keys the hash that makes blob ids.
    pub blob_ids: Zeroizing<[u8; 32]>,
    /// Keys the hash that names blob chunks.
    pub chunk_ids: Zeroizing<[u8; 32]>,
}

/// Everything a node needs from its key file.
pub struct VaultKeys {
    pub vault_id: [u8; 16],
    pub device: Keypair,
    pub derived: DerivedKeys,
    /// Handed to a new device at pairing; grants will be signed with the signing key.
    storage_key: Zeroizing<[u8; 32]>,
    signing_key: Zeroizing<[u8; 32]>,
    owner_token_hash: [u8; 32],
    /// This device's own exchange key (the seed of its X25519 key pair).
    exchange: Zeroizing<[u8; 32]>,
    /// The vault's epoch keys this device knows, kept in step with `_epochs`.
    pub epochs: crate::epochs::Ring,
    /// The keys values at rest are sealed under once the keys rotated.
    at_rest: RwLock<AtRest>,
}

/// The epochs' keys for values at rest, by key id, and the one new values are
/// sealed under (`None`: the storage key's, as before any rotation).
#[derive(Default)]
struct AtRest {
    current: Option<u32>,
    keys: HashMap<u32, Arc<SealKey>>,
}

impl VaultKeys {
    /// What the epochs need of this device's keys.
    pub fn identity(&self) -> crate::epochs::Identity<'_> {
        crate::epochs::Identity {
            vault_id: self.vault_id,
            device: &self.device,
            exchange: &self.exchange,
        }
    }

    /// The public half of this device's exchange key.
    pub fn exchange_public(&self) -> [u8; 32] {
        crate::epochs::exchange_public(&self.exchange)
    }

    /// The key that seals what this device keeps of the epoch keys (`epoch_keys` in
    /// the store): derived from its own exchange key, which no other device holds, so
    /// a copy of this device's store opens no epoch key without its key file.
    pub fn local_seal(&self) -> SealKey {
        SealKey::from_bytes(blake3::derive_key(
            "hearth 2026-12 local epoch keys v1",
            &*self.exchange,
        ))
    }

    /// Whether this device holds the at-rest key of the epoch `key_id` names.
    pub fn holds_epoch(&self, key_id: u32) -> bool {
        self.at_rest
            .read()
            .expect("at-rest lock")
            .keys
            .contains_key(&key_id)
    }

    /// Adds an epoch's key (named by `key_id`) to those values at rest open with. New
    /// values are sealed under it only once [`VaultKeys::seal_under_epoch`] says so
    /// (which epoch is current is for `_epochs` to say, not for what this device kept).
    pub fn hold_epoch(&self, key_id: u32, epoch_key: &[u8; 32]) {
        let key = SealKey::for_epoch(*crate::epochs::at_rest_key(epoch_key));
        let mut at_rest = self.at_rest.write().expect("at-rest lock");
        at_rest.keys.insert(key_id, Arc::new(key));
    }

    /// Seals new values under the epoch `key_id` names (it must be held): the newest
    /// valid epoch this device holds; `None`, under the storage key's seal.
    pub fn seal_under_epoch(&self, key_id: Option<u32>) {
        let mut at_rest = self.at_rest.write().expect("at-rest lock");
        at_rest.current = key_id.filter(|id| at_rest.keys.contains_key(id));
    }

    /// The key new values are sealed under, and a fresh nonce for it.
    fn writer(&self) -> (Arc<SealKey>, [u8; NONCE_LEN]) {
        let at_rest = self.at_rest.read().expect("at-rest lock");
        match at_rest
            .current
            .and_then(|id| Some((id, at_rest.keys.get(&id)?.clone())))
        {
            Some((id, key)) => {
                let mut random = [0u8; NONCE_LEN - 4];
                rand::rngs::OsRng.fill_bytes(&mut random);
                (key, epoch_nonce(id, random))
            }
            None => {
                let mut nonce = [0u8; NONCE_LEN];
                rand::rngs::OsRng.fill_bytes(&mut nonce);
                (self.derived.seal.clone(), nonce)
            }
        }
    }

    /// The key that opens `sealed`: the storage key's for version 1, else the epoch's.
    fn reader(&self, sealed: &[u8]) -> Result<Arc<SealKey>, OpenError> {
        match epoch_key_id(sealed) {
            None => Ok(self.derived.seal.clone()),
            Some(id) => self
                .at_rest
                .read()
                .expect("at-rest lock")
                .keys
                .get(&id)
                .cloned()
                .ok_or(OpenError::UnknownKey(id)),
        }
    }

    /// Seals a value to keep at rest: under the current epoch's key once the vault's
    /// keys rotated and this device holds it, else under the storage key.
    pub fn seal_at_rest(&self, binding: Binding<'_>, plain: &[u8]) -> Vec<u8> {
        let (key, nonce) = self.writer();
        key.seal(binding, plain, nonce)
    }

    /// [`VaultKeys::seal_at_rest`] in place ([`SealKey::seal_in_place`]).
    pub fn seal_in_place_at_rest(&self, binding: Binding<'_>, buf: &mut Vec<u8>) {
        let (key, nonce) = self.writer();
        key.seal_in_place(binding, buf, nonce);
    }

    /// Opens a value kept at rest, under whichever key sealed it.
    pub fn open_at_rest(
        &self,
        binding: Binding<'_>,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        self.reader(sealed)?.open(binding, sealed)
    }

    /// [`VaultKeys::open_at_rest`] in place ([`SealKey::open_in_place`]).
    pub fn open_in_place_at_rest<'b>(
        &self,
        binding: Binding<'_>,
        sealed: &'b mut [u8],
    ) -> Result<&'b mut [u8], OpenError> {
        self.reader(sealed)?.open_in_place(binding, sealed)
    }

    pub fn peer_id(&self) -> PeerId {
        self.device.public().to_peer_id()
    }

    pub fn vault_id_hex(&self) -> String {
        HEXLOWER.encode(&self.vault_id)
    }

    /// The secrets every device of the vault shares, to hand to a device joining it.
    pub fn shared_secrets(&self) -> SharedSecrets {
        SharedSecrets {
            vault_id: self.vault_id,
            storage_key: self.storage_key.clone(),
            signing_key: self.signing_key.clone(),
        }
    }

    /// The seed of the vault's first signing key: grants' tokens of epoch 0 are signed
    /// with it.
    pub fn signing_seed(&self) -> &[u8; 32] {
        &self.signing_key
    }

    /// The answer to a CLI's hello `challenge`: proves this node holds the hash of
    /// this HOME's owner token, without revealing it.
    pub fn identity_proof(&self, challenge: &[u8]) -> [u8; 32] {
        hearth_protocol::api::identity_proof(&self.owner_token_hash, challenge)
    }

    /// Whether `presented` is the owner token, in constant time.
    pub fn is_owner_token(&self, presented: &[u8]) -> bool {
        bool::from(token_hash(presented).ct_eq(&self.owner_token_hash))
    }

    fn from_blob(blob: &SecretsBlob, keys_path: &Path) -> Result<Self, KeysError> {
        let mut device_secret = Zeroizing::new(*blob.device_key);
        let device = Keypair::ed25519_from_bytes(&mut *device_secret)
            .map_err(|_| KeysError::DeviceKey(keys_path.display().to_string()))?;
        let derive =
            |context: &str| Zeroizing::new(blake3::derive_key(context, &*blob.storage_key));
        let exchange = blob
            .exchange_key
            .as_ref()
            .map(|k| Zeroizing::new(**k))
            .ok_or_else(|| KeysError::KeyFile {
                path: keys_path.display().to_string(),
                source: KeyFileError::Secrets("no exchange key".into()),
            })?;
        let seal_key = derive("hearth 2026-11 store seal v1");
        Ok(Self {
            vault_id: blob.vault_id,
            device,
            derived: DerivedKeys {
                seal: Arc::new(SealKey::from_bytes(*seal_key)),
                names: derive("hearth 2026-11 name hash v1"),
                blob_ids: derive("hearth 2026-11 blob id v1"),
                chunk_ids: derive("hearth 2026-11 chunk id v1"),
            },
            storage_key: Zeroizing::new(*blob.storage_key),
            signing_key: Zeroizing::new(*blob.signing_key),
            owner_token_hash: blob.owner_token_hash,
            exchange,
            epochs: crate::epochs::Ring::default(),
            at_rest: RwLock::default(),
        })
    }
}

/// What all devices of one vault share (each has its own identity and owner token).
pub struct SharedSecrets {
    pub vault_id: [u8; 16],
    pub storage_key: Zeroizing<[u8; 32]>,
    pub signing_key: Zeroizing<[u8; 32]>,
}

/// What `init` made.
pub struct Initialized {
    pub keys: VaultKeys,
    pub passphrase: bool,
}

/// Creates a new vault's secrets in `home`: refuses, changing nothing, if one exists.
///
/// The owner token is written first and the key file last, so a crash in between
/// leaves a HOME without a vault that `init` can simply run on again.
pub fn init(home: &Home, passphrase: Option<&Passphrase>) -> Result<Initialized, KeysError> {
    init_with(home, passphrase, None)
}

/// Like [`init`], but for a device joining an existing vault: the shared secrets come
/// from the inviter, the device identity was made for the pairing (the inviter knows
/// its PeerId), and the owner token is new.
pub fn init_joined(
    home: &Home,
    passphrase: Option<&Passphrase>,
    shared: SharedSecrets,
    device_secret: Zeroizing<[u8; 32]>,
) -> Result<Initialized, KeysError> {
    init_with_device(home, passphrase, Some(shared), Some(device_secret))
}

fn init_with(
    home: &Home,
    passphrase: Option<&Passphrase>,
    shared: Option<SharedSecrets>,
) -> Result<Initialized, KeysError> {
    init_with_device(home, passphrase, shared, None)
}

fn init_with_device(
    home: &Home,
    passphrase: Option<&Passphrase>,
    shared: Option<SharedSecrets>,
    device_secret: Option<Zeroizing<[u8; 32]>>,
) -> Result<Initialized, KeysError> {
    let root = home.root();
    if home.has_vault() || home.store_dir().exists() {
        return Err(KeysError::AlreadyInitialized(root.display().to_string()));
    }
    crate::home::create_private_dir(root).map_err(|source| KeysError::Io {
        what: "cannot create home directory",
        path: root.display().to_string(),
        source,
    })?;

    let mut rng = rand::rngs::OsRng;
    let token = OwnerToken::generate();
    let mut blob = SecretsBlob {
        vault_id: [0; 16],
        storage_key: Zeroizing::new([0; 32]),
        signing_key: Zeroizing::new([0; 32]),
        owner_token_hash: token_hash(token.as_str().as_bytes()),
        device_key: Zeroizing::new([0; 32]),
        exchange_key: Some(Zeroizing::new([0; 32])),
    };
    if let Some(exchange) = blob.exchange_key.as_mut() {
        rng.fill_bytes(&mut **exchange);
    }
    match shared {
        Some(shared) => {
            blob.vault_id = shared.vault_id;
            blob.storage_key = shared.storage_key;
            blob.signing_key = shared.signing_key;
        }
        None => {
            rng.fill_bytes(&mut blob.vault_id);
            rng.fill_bytes(&mut *blob.storage_key);
            rng.fill_bytes(&mut *blob.signing_key);
        }
    }
    match device_secret {
        Some(secret) => blob.device_key = secret,
        None => rng.fill_bytes(&mut *blob.device_key),
    }
    let keys = VaultKeys::from_blob(&blob, &home.keys())?;

    let plain = blob.encode();
    let file = protect(&plain, passphrase)?;

    let io_err = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| KeysError::Io { what, path, source }
    };
    let mut token_line = Zeroizing::new(token.as_str().as_bytes().to_vec());
    token_line.push(b'\n');
    write_file_atomic(&home.owner_token(), &token_line, 0o600)
        .map_err(io_err("cannot write owner token", &home.owner_token()))?;
    write_file_atomic(&home.keys(), &file.to_json(), 0o600)
        .map_err(io_err("cannot write key file", &home.keys()))?;
    Ok(Initialized {
        keys,
        passphrase: passphrase.is_some(),
    })
}

/// A key file holding `plain`, wrapped by `passphrase` (Argon2id) if there is one.
fn protect(plain: &[u8], passphrase: Option<&Passphrase>) -> Result<KeyFile, KeysError> {
    match passphrase {
        None => Ok(KeyFile::new(Protection::None, plain)),
        Some(passphrase) => wrap_with_passphrase(plain, passphrase, SECRETS_DOMAIN, SECRETS_KEY),
    }
}

/// `plain` sealed under the key Argon2id derives from `passphrase` (a new salt, the key
/// file's parameters), bound to `(domain, key)`: the key file's wrapping, also used by
/// a recovery kit with a passphrase.
pub fn wrap_with_passphrase(
    plain: &[u8],
    passphrase: &Passphrase,
    domain: &[u8],
    key: &[u8],
) -> Result<KeyFile, KeysError> {
    let mut rng = rand::rngs::OsRng;
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let params = Argon2Params {
        salt: BASE64.encode(&salt),
        m_cost_kib: ARGON2_M_COST_KIB,
        t_cost: ARGON2_T_COST,
        p_cost: ARGON2_P_COST,
    };
    let kek = derive_kek(passphrase, &params)?;
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let sealed = kek.seal(Binding::new(domain, key), plain, nonce);
    Ok(KeyFile::new(Protection::Argon2id(params), &sealed))
}

/// Opens what [`wrap_with_passphrase`] sealed (a file without protection holds it
/// plain).
pub fn unwrap_with_passphrase(
    file: &KeyFile,
    passphrase: &Passphrase,
    domain: &[u8],
    key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeysError> {
    if let Protection::Argon2id(params) = &file.protection {
        // Bounds the cost a file can ask for before any work is done.
        KeyFile::parse(&file.to_json()).map_err(|source| KeysError::KeyFile {
            path: "kit".into(),
            source,
        })?;
        let stored = file.secrets_bytes().map_err(|source| KeysError::KeyFile {
            path: "kit".into(),
            source,
        })?;
        let kek = derive_kek(passphrase, params)?;
        return kek
            .open(Binding::new(domain, key), &stored)
            .map_err(|_| KeysError::WrongPassphrase);
    }
    file.secrets_bytes().map_err(|source| KeysError::KeyFile {
        path: "kit".into(),
        source,
    })
}

/// Sets, changes or removes (`new` = `None`) the passphrase of the vault in `home`.
/// The secrets stay the same; only their wrapping changes. The new key file replaces
/// the old one by an atomic rename after it is on disk, so an interruption at any
/// moment leaves either the old passphrase or the new one working, never neither.
/// A running node is unaffected (it read the file when it started).
pub fn change_passphrase(
    home: &Home,
    old: Option<&Passphrase>,
    new: Option<&Passphrase>,
) -> Result<(), KeysError> {
    let path = home.keys();
    let file = read_key_file(home)?;
    let plain = unwrap_secrets(&file, old, &path)?;
    // Proves the secrets decode before anything is written.
    SecretsBlob::decode(&plain).map_err(|source| KeysError::KeyFile {
        path: path.display().to_string(),
        source,
    })?;
    let replacement = protect(&plain, new)?;
    write_file_atomic(&path, &replacement.to_json(), 0o600).map_err(|source| KeysError::Io {
        what: "cannot write key file",
        path: path.display().to_string(),
        source,
    })
}

fn read_key_file(home: &Home) -> Result<KeyFile, KeysError> {
    let path = home.keys();
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(KeysError::NotAVault(home.root().display().to_string()));
        }
        Err(source) => {
            return Err(KeysError::Io {
                what: "cannot read key file",
                path: path.display().to_string(),
                source,
            });
        }
    };
    KeyFile::parse(&bytes).map_err(|source| KeysError::KeyFile {
        path: path.display().to_string(),
        source,
    })
}

/// The secrets blob of a key file, unwrapped with `passphrase` if it has one.
fn unwrap_secrets(
    file: &KeyFile,
    passphrase: Option<&Passphrase>,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, KeysError> {
    let stored = file.secrets_bytes().map_err(|source| KeysError::KeyFile {
        path: path.display().to_string(),
        source,
    })?;
    match &file.protection {
        // A passphrase given for a vault that has none is harmless: ignore it.
        Protection::None => Ok(stored),
        Protection::Argon2id(params) => {
            let passphrase = passphrase.ok_or(KeysError::PassphraseRequired)?;
            let kek = derive_kek(passphrase, params)?;
            kek.open(Binding::new(SECRETS_DOMAIN, SECRETS_KEY), &stored)
                .map_err(|_| KeysError::WrongPassphrase)
        }
    }
}

/// Opens the secrets of the vault in `home`. A key file from before exchange keys
/// gets one: it is rewritten (same secrets, same passphrase) with a new exchange key,
/// by an atomic rename, before the keys are returned.
pub fn open(home: &Home, passphrase: Option<&Passphrase>) -> Result<VaultKeys, KeysError> {
    let (_, mut blob) = read_secrets(home, passphrase)?;
    if blob.exchange_key.is_none() {
        blob = add_exchange_key(home, passphrase)?;
    }
    VaultKeys::from_blob(&blob, &home.keys())
}

/// The key file of `home` and the secrets it holds, opened with `passphrase`.
fn read_secrets(
    home: &Home,
    passphrase: Option<&Passphrase>,
) -> Result<(KeyFile, SecretsBlob), KeysError> {
    let path = home.keys();
    let file = read_key_file(home)?;
    let plain = unwrap_secrets(&file, passphrase, &path)?;
    let blob = SecretsBlob::decode(&plain).map_err(|source| KeysError::KeyFile {
        path: path.display().to_string(),
        source,
    })?;
    Ok((file, blob))
}

/// Gives a key file of version 1 an exchange key: under an exclusive lock
/// (`HOME/keys.lock`), so two starts at once cannot each write one and run on a key the
/// file no longer holds; the file is read again under the lock, and rewritten with the
/// protection it had (a passphrase given for a file without one is not added).
fn add_exchange_key(
    home: &Home,
    passphrase: Option<&Passphrase>,
) -> Result<SecretsBlob, KeysError> {
    use std::os::fd::AsRawFd;
    let path = home.keys();
    let lock_path = home.root().join("keys.lock");
    let io_err = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| KeysError::Io { what, path, source }
    };
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("cannot open the key file's lock", &lock_path))?;
    // SAFETY: flock on a file descriptor this function owns; released when it closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err("cannot lock the key file", &lock_path)(
            io::Error::last_os_error(),
        ));
    }
    let (file, mut blob) = read_secrets(home, passphrase)?;
    if blob.exchange_key.is_some() {
        return Ok(blob);
    }
    let mut exchange = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut *exchange);
    blob.exchange_key = Some(exchange);
    let keep_passphrase = match file.protection {
        Protection::None => None,
        Protection::Argon2id(_) => passphrase,
    };
    let replacement = protect(&blob.encode(), keep_passphrase)?;
    write_file_atomic(&path, &replacement.to_json(), 0o600)
        .map_err(io_err("cannot write key file", &path))?;
    tracing::info!("gave this device an exchange key (the key file is now version 2)");
    drop(lock);
    Ok(blob)
}

/// Whether the vault in `home` needs a passphrase to open.
pub fn needs_passphrase(home: &Home) -> bool {
    fs::read(home.keys())
        .ok()
        .and_then(|bytes| KeyFile::parse(&bytes).ok())
        .is_some_and(|f| matches!(f.protection, Protection::Argon2id(_)))
}

fn derive_kek(passphrase: &Passphrase, params: &Argon2Params) -> Result<SealKey, KeysError> {
    let bad_params = |e: argon2::Error| KeysError::KeyFile {
        path: "keys".into(),
        source: KeyFileError::Params(e.to_string()),
    };
    let salt = params.salt_bytes().map_err(|source| KeysError::KeyFile {
        path: "keys".into(),
        source,
    })?;
    let argon = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
            .map_err(bad_params)?,
    );
    let mut kek = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.0.as_bytes(), &salt, &mut *kek)
        .map_err(bad_params)?;
    Ok(SealKey::from_bytes(*kek))
}

/// The hash of `HOME/owner.token`, made first if there is none (a backup host's HOME,
/// which has no key file: its owner token is all its API needs).
pub fn owner_token_hash_or_new(home: &Home) -> io::Result<[u8; 32]> {
    match read_owner_token(home) {
        Ok(token) => Ok(token_hash(token.as_str().as_bytes())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let token = OwnerToken::generate();
            let mut line = Zeroizing::new(token.as_str().as_bytes().to_vec());
            line.push(b'\n');
            write_file_atomic(&home.owner_token(), &line, 0o600)?;
            Ok(token_hash(token.as_str().as_bytes()))
        }
        Err(e) => Err(e),
    }
}

/// Reads the owner token a client presents (`HOME/owner.token`).
pub fn read_owner_token(home: &Home) -> io::Result<OwnerToken> {
    let text = Zeroizing::new(fs::read_to_string(home.owner_token())?);
    Ok(OwnerToken(Zeroizing::new(text.trim().to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_then_open_without_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("h"));
        let made = init(&home, None).unwrap();
        assert!(!made.passphrase);
        let opened = open(&home, None).unwrap();
        assert_eq!(opened.peer_id(), made.keys.peer_id());
        assert_eq!(opened.vault_id, made.keys.vault_id);
        let token = read_owner_token(&home).unwrap();
        assert!(opened.is_owner_token(token.as_str().as_bytes()));
        assert!(!opened.is_owner_token(b"hearth_owner_wrong"));
        for f in [home.keys(), home.owner_token()] {
            assert_eq!(
                fs::metadata(&f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn init_refuses_existing_vault_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        init(&home, None).unwrap();
        let before = (
            fs::read(home.keys()).unwrap(),
            fs::read(home.owner_token()).unwrap(),
        );
        assert!(matches!(
            init(&home, None),
            Err(KeysError::AlreadyInitialized(_))
        ));
        let after = (
            fs::read(home.keys()).unwrap(),
            fs::read(home.owner_token()).unwrap(),
        );
        assert_eq!(before, after);
    }

    #[test]
    fn passphrase_protects_and_wrong_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let pass = Passphrase::new("correct horse\n".into()).unwrap();
        let made = init(&home, Some(&pass)).unwrap();
        assert!(needs_passphrase(&home));
        assert!(matches!(
            open(&home, None),
            Err(KeysError::PassphraseRequired)
        ));
        let wrong = Passphrase::new("incorrect horse".into()).unwrap();
        assert!(matches!(
            open(&home, Some(&wrong)),
            Err(KeysError::WrongPassphrase)
        ));
        let opened = open(
            &home,
            Some(&Passphrase::new("correct horse".into()).unwrap()),
        )
        .unwrap();
        assert_eq!(opened.peer_id(), made.keys.peer_id());
        // The key file holds no secret in clear.
        let file = fs::read(home.keys()).unwrap();
        assert!(!String::from_utf8_lossy(&file).contains("correct horse"));
        assert!(matches!(
            Passphrase::new("\n".into()),
            Err(KeysError::EmptyPassphrase)
        ));
    }

    #[test]
    fn a_passphrase_is_set_changed_and_removed_and_a_wrong_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let pass = |p: &str| Passphrase::new(p.into()).unwrap();
        let made = init(&home, None).unwrap();
        let peer = made.keys.peer_id();

        change_passphrase(&home, None, Some(&pass("first"))).unwrap();
        assert!(matches!(
            open(&home, None),
            Err(KeysError::PassphraseRequired)
        ));
        assert_eq!(open(&home, Some(&pass("first"))).unwrap().peer_id(), peer);

        // A wrong old passphrase is refused and the file stays byte for byte.
        let before = fs::read(home.keys()).unwrap();
        assert!(matches!(
            change_passphrase(&home, Some(&pass("nope")), Some(&pass("second"))),
            Err(KeysError::WrongPassphrase)
        ));
        assert!(matches!(
            change_passphrase(&home, None, Some(&pass("second"))),
            Err(KeysError::PassphraseRequired)
        ));
        assert_eq!(fs::read(home.keys()).unwrap(), before);

        // An interrupted change (the new file written, not yet renamed) leaves the
        // old passphrase working and the leftover harmless.
        fs::write(dir.path().join(".keys.tmp-999999"), b"{partial").unwrap();
        assert_eq!(open(&home, Some(&pass("first"))).unwrap().peer_id(), peer);

        change_passphrase(&home, Some(&pass("first")), Some(&pass("second"))).unwrap();
        assert!(matches!(
            open(&home, Some(&pass("first"))),
            Err(KeysError::WrongPassphrase)
        ));
        let reopened = open(&home, Some(&pass("second"))).unwrap();
        assert_eq!(reopened.peer_id(), peer);
        assert_eq!(reopened.vault_id_hex(), made.keys.vault_id_hex());
        assert_eq!(
            fs::metadata(home.keys()).unwrap().permissions().mode() & 0o777,
            0o600
        );

        change_passphrase(&home, Some(&pass("second")), None).unwrap();
        assert!(!needs_passphrase(&home));
        assert_eq!(open(&home, None).unwrap().peer_id(), peer);
    }

    /// Rewrites the key file of `home` as version 1 (no exchange key), as a Hearth from
    /// before exchange keys wrote it.
    fn make_version_one(home: &Home, passphrase: Option<&Passphrase>) {
        let file = read_key_file(home).unwrap();
        let plain = unwrap_secrets(&file, passphrase, &home.keys()).unwrap();
        let mut old = SecretsBlob::decode(&plain).unwrap();
        old.exchange_key = None;
        fs::write(
            home.keys(),
            protect(&old.encode(), passphrase).unwrap().to_json(),
        )
        .unwrap();
    }

    /// Two starts that upgrade one version-1 file at once end with one exchange key,
    /// the one in the file.
    #[test]
    fn two_upgrades_at_once_agree_on_the_exchange_key() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        init(&home, None).unwrap();
        for _ in 0..5 {
            make_version_one(&home, None);
            let opened: Vec<[u8; 32]> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| open(&home, None).unwrap().exchange_public()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let on_disk = open(&home, None).unwrap().exchange_public();
            assert!(opened.iter().all(|k| *k == on_disk), "{opened:?}");
        }
    }

    /// A key file from before exchange keys (version 1) opens with its passphrase, gets
    /// an exchange key once, and keeps its identity, secrets and passphrase.
    #[test]
    fn a_version_one_key_file_gets_an_exchange_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let pass = Passphrase::new("old vault".into()).unwrap();
        let made = init(&home, Some(&pass)).unwrap();
        make_version_one(&home, Some(&pass));

        assert!(matches!(
            open(&home, None),
            Err(KeysError::PassphraseRequired)
        ));
        let opened = open(&home, Some(&pass)).unwrap();
        assert_eq!(opened.peer_id(), made.keys.peer_id());
        assert_eq!(opened.signing_seed(), made.keys.signing_seed());
        let exchange = opened.exchange_public();
        assert_ne!(exchange, made.keys.exchange_public());
        // Written back as version 2, under the same passphrase; the next open keeps it.
        let again = open(&home, Some(&pass)).unwrap();
        assert_eq!(again.exchange_public(), exchange);
        let file = read_key_file(&home).unwrap();
        let plain = unwrap_secrets(&file, Some(&pass), &home.keys()).unwrap();
        assert_eq!(plain.len(), hearth_protocol::keyfile::SECRETS_LEN);
        assert_eq!(
            fs::metadata(home.keys()).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// A passphrase given when a version-1 file without one is upgraded (a stale
    /// HEARTH_PASSPHRASE, say) is not added to it.
    #[test]
    fn the_upgrade_keeps_a_file_without_a_passphrase_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        init(&home, None).unwrap();
        make_version_one(&home, None);
        let stale = Passphrase::new("left in the environment".into()).unwrap();
        open(&home, Some(&stale)).unwrap();
        assert!(!needs_passphrase(&home));
        open(&home, None).unwrap();
    }

    #[test]
    fn missing_and_corrupt_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        assert!(matches!(open(&home, None), Err(KeysError::NotAVault(_))));
        fs::write(home.keys(), b"{garbage").unwrap();
        assert!(matches!(open(&home, None), Err(KeysError::KeyFile { .. })));
    }
}
