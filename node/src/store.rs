//! The encrypted store: sled trees whose every value is sealed, and group commit.
//!
//! In: byte keys and plaintext values from the subsystems above (collections, blobs).
//! Out: values opened and authenticated, or [`StoreError::Corrupt`] naming what failed —
//! a value that does not authenticate is never returned. Keys that carry user meaning
//! are made opaque by the caller with [`Store::name_key`]. Durability: an insert is
//! durable once [`Store::commit`] returns; concurrent committers share one fsync.
//!
//! This module is the only one that talks to sled, so storage faults can be injected
//! here (reliability issue).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use data_encoding::HEXLOWER;
use hearth_protocol::seal::{Binding, NONCE_LEN, OpenError};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::keys::VaultKeys;

/// Version of the store's layout (tree names, key shapes, value encodings).
pub const STORE_FORMAT_VERSION: u32 = 1;
const META_FORMAT_KEY: &[u8] = b"format";
/// Commit requests waiting for the flusher; writers beyond this wait for room.
const COMMIT_QUEUE: usize = 4096;
/// How long opening waits for another handle's lock to go (see `Store::open`).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the store is in use by another process (is a node already running on this HOME?)")]
    Locked,
    #[error("storage error: {0}")]
    Storage(String),
    #[error("stored data is corrupt: {what}: {source}")]
    Corrupt { what: String, source: OpenError },
    #[error("stored data is corrupt: {0}")]
    Malformed(String),
    #[error(
        "the store has format version {found}; this Hearth reads version {STORE_FORMAT_VERSION}"
    )]
    Version { found: u32 },
    #[error("the store is shutting down")]
    Closed,
    #[error("the disk is full: nothing was written")]
    DiskFull,
    #[error(
        "an earlier write to disk failed ({0}); to keep what is stored intact this node accepts no more writes: restart it"
    )]
    Failed(String),
}

impl StoreError {
    /// The API error code this failure is answered with.
    pub fn code(&self) -> hearth_protocol::api::ErrorCode {
        use hearth_protocol::api::ErrorCode;
        match self {
            StoreError::Corrupt { .. } | StoreError::Malformed(_) | StoreError::Version { .. } => {
                ErrorCode::Corrupt
            }
            StoreError::Closed => ErrorCode::Unavailable,
            StoreError::DiskFull => ErrorCode::InsufficientStorage,
            _ => ErrorCode::Storage,
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match &e {
            sled::Error::Io(io) if is_disk_full(io) => StoreError::DiskFull,
            _ => StoreError::Storage(e.to_string()),
        }
    }
}

/// Whether an I/O error is the disk being full (ENOSPC, 28 on Linux and the BSDs).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(28)
}

/// Injected I/O failures, so tests can see what the node does when its disk fails: a
/// write error, a full disk, a failed fsync. Every write and every flush of the store
/// checks it first (one atomic load). Nothing sets it outside tests.
#[derive(Debug, Default)]
pub struct Faults {
    /// 0: none; 1: writes fail with an I/O error; 2: writes fail as if the disk were full.
    writes: std::sync::atomic::AtomicU8,
    flushes: std::sync::atomic::AtomicBool,
}

/// One kind of injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    WriteError,
    DiskFull,
    FlushError,
}

impl Faults {
    /// From now on, fail this way (until [`Faults::clear`]).
    pub fn inject(&self, fault: Fault) {
        match fault {
            Fault::WriteError => self.writes.store(1, Ordering::SeqCst),
            Fault::DiskFull => self.writes.store(2, Ordering::SeqCst),
            Fault::FlushError => self.flushes.store(true, Ordering::SeqCst),
        }
    }

    pub fn clear(&self) {
        self.writes.store(0, Ordering::SeqCst);
        self.flushes.store(false, Ordering::SeqCst);
    }

    /// The error an injected write failure gives, if one is set.
    pub fn check_write(&self) -> Result<(), StoreError> {
        match self.writes.load(Ordering::Relaxed) {
            0 => Ok(()),
            2 => Err(StoreError::DiskFull),
            _ => Err(StoreError::Storage("injected write error".into())),
        }
    }

    fn check_flush(&self) -> Result<(), String> {
        if self.flushes.load(Ordering::Relaxed) {
            Err("injected fsync failure".into())
        } else {
            Ok(())
        }
    }
}

/// Once a flush has failed, the kernel may have dropped pages it could not write while
/// still reporting later flushes as successful ("fsyncgate"): from then on the store
/// refuses every write, and a restart re-reads what is really on disk.
#[derive(Debug, Default)]
struct Poisoned(std::sync::OnceLock<String>);

impl Poisoned {
    fn check(&self) -> Result<(), StoreError> {
        match self.0.get() {
            None => Ok(()),
            Some(reason) => Err(StoreError::Failed(reason.clone())),
        }
    }

    /// Keeps the first failure's reason.
    fn set(&self, reason: &str) {
        let _ = self.0.set(reason.to_owned());
    }
}

/// Counters that show group commit at work.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Commit requests answered.
    pub commits: AtomicU64,
    /// fsyncs issued for them.
    pub flushes: AtomicU64,
}

type CommitReply = oneshot::Sender<Result<(), String>>;

enum FlusherMessage {
    Commit(CommitReply),
    /// Finish what is queued, then stop.
    Stop,
}

pub struct Store {
    db: sled::Db,
    keys: Arc<VaultKeys>,
    commit_tx: mpsc::Sender<FlusherMessage>,
    flusher: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<CommitStats>,
    faults: Arc<Faults>,
    poisoned: Arc<Poisoned>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, with its flusher thread.
    pub fn open(dir: &std::path::Path, keys: Arc<VaultKeys>) -> Result<Self, StoreError> {
        crate::home::create_private_dir(dir)
            .map_err(|e| StoreError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            // Durability comes from explicit commits; the background flush only bounds
            // how much unacknowledged work a crash may drop.
            .flush_every_ms(Some(1000));
        // sled releases its file lock from its own flusher thread, a moment after the
        // last handle of a previous open is dropped: wait that moment out, briefly.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) => {
                    let locked = matches!(&e, sled::Error::Io(io)
                        if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock"));
                    if !locked {
                        return Err(StoreError::from(e));
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        };
        let (commit_tx, commit_rx) = mpsc::channel(COMMIT_QUEUE);
        let stats = Arc::new(CommitStats::default());
        let faults = Arc::new(Faults::default());
        let poisoned = Arc::new(Poisoned::default());
        let flusher = {
            let (db, stats) = (db.clone(), stats.clone());
            let (faults, poisoned) = (faults.clone(), poisoned.clone());
            std::thread::Builder::new()
                .name("hearth-flusher".into())
                .spawn(move || run_flusher(db, commit_rx, stats, &faults, &poisoned))
                .map_err(|e| StoreError::Storage(format!("cannot start the flusher thread: {e}")))?
        };
        let store = Self {
            db,
            keys,
            commit_tx,
            flusher: std::sync::Mutex::new(Some(flusher)),
            stats,
            faults,
            poisoned,
        };
        store.check_format()?;
        Ok(store)
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let meta = self.tree("meta")?;
        match meta.get(META_FORMAT_KEY)? {
            Some(value) => {
                let bytes: [u8; 4] = value.as_slice().try_into().map_err(|_| {
                    StoreError::Malformed("store format marker has the wrong length".into())
                })?;
                let found = u32::from_be_bytes(bytes);
                if found != STORE_FORMAT_VERSION {
                    return Err(StoreError::Version { found });
                }
            }
            None => {
                meta.insert(META_FORMAT_KEY, &STORE_FORMAT_VERSION.to_be_bytes())?;
                self.db.flush()?;
            }
        }
        Ok(())
    }

    /// A tree whose values are sealed, bound to the tree's name and each key.
    pub fn tree(&self, name: &'static str) -> Result<SealedTree, StoreError> {
        Ok(SealedTree {
            tree: self.db.open_tree(name)?,
            name,
            keys: self.keys.clone(),
            faults: self.faults.clone(),
            poisoned: self.poisoned.clone(),
        })
    }

    /// The store's fault injector (tests only set it).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Refuses a write if a fault is injected or an earlier flush failed.
    pub fn check_write(&self) -> Result<(), StoreError> {
        self.poisoned.check()?;
        self.faults.check_write()
    }

    /// An opaque sled key for a user-chosen name: a keyed hash, so the disk shows
    /// neither the name nor (without the vault key) which name it is.
    pub fn name_key(&self, domain: &str, name: &str) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.keys.derived.names);
        hasher.update(domain.as_bytes());
        hasher.update(&[0]);
        hasher.update(name.as_bytes());
        *hasher.finalize().as_bytes()
    }

    /// Returns once everything inserted before the call is on disk (fsynced).
    /// Concurrent callers share one flush.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.poisoned.check()?;
        let (tx, rx) = oneshot::channel();
        self.commit_tx
            .send(FlusherMessage::Commit(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Failed(message)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Flushes everything and stops the flusher. Commits after this fail with `Closed`.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let flusher = self
            .flusher
            .lock()
            .expect("flusher lock is never poisoned")
            .take();
        if let Some(flusher) = flusher {
            // A graceful stop, not an abort: an abort could leave a flush running on
            // the blocking pool, holding the database open after shutdown returns.
            let _ = self.commit_tx.send(FlusherMessage::Stop).await;
            let _ = tokio::task::spawn_blocking(move || flusher.join()).await;
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Storage(format!("flush task failed: {e}")))??;
        Ok(())
    }
}

/// The group-commit loop: take every waiting request, fsync once, answer them all.
/// A request queued during a flush waits for the next one, because its write may have
/// missed the flush in progress. It runs on its own thread so that a commit costs one
/// wake-up each way, not a trip through the blocking pool.
fn run_flusher(
    db: sled::Db,
    mut rx: mpsc::Receiver<FlusherMessage>,
    stats: Arc<CommitStats>,
    faults: &Faults,
    poisoned: &Poisoned,
) {
    let mut waiters = Vec::new();
    let mut stopping = false;
    while !stopping {
        match rx.blocking_recv() {
            Some(FlusherMessage::Commit(first)) => waiters.push(first),
            Some(FlusherMessage::Stop) | None => break,
        }
        while waiters.len() < COMMIT_QUEUE {
            match rx.try_recv() {
                Ok(FlusherMessage::Commit(waiter)) => waiters.push(waiter),
                Ok(FlusherMessage::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let result = faults
            .check_flush()
            .and_then(|()| db.flush().map(|_| ()).map_err(|e| e.to_string()));
        if let Err(message) = &result {
            tracing::error!(error = %message, "flush to disk failed; writes are not acknowledged and no more are accepted");
            poisoned.set(message);
        }
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats
            .commits
            .fetch_add(waiters.len() as u64, Ordering::Relaxed);
        for waiter in waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

/// A sled tree whose values are sealed with the vault's storage key.
#[derive(Clone)]
pub struct SealedTree {
    tree: sled::Tree,
    name: &'static str,
    keys: Arc<VaultKeys>,
    faults: Arc<Faults>,
    poisoned: Arc<Poisoned>,
}

/// A set of inserts and removes on one tree, applied atomically.
#[derive(Default)]
pub struct SealedBatch {
    batch: sled::Batch,
}

impl SealedTree {
    pub fn get(&self, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        match self.tree.get(key)? {
            Some(sealed) => self.open(key, &sealed).map(Some),
            None => Ok(None),
        }
    }

    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        self.tree.insert(key, self.seal(key, value))?;
        Ok(())
    }

    pub fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        self.tree.remove(key)?;
        Ok(())
    }

    fn writable(&self) -> Result<(), StoreError> {
        self.poisoned.check()?;
        self.faults.check_write()
    }

    pub fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(key)?)
    }

    pub fn batch_insert(&self, batch: &mut SealedBatch, key: &[u8], value: &[u8]) {
        batch.batch.insert(key, self.seal(key, value));
    }

    pub fn batch_remove(&self, batch: &mut SealedBatch, key: &[u8]) {
        batch.batch.remove(key);
    }

    pub fn apply(&self, batch: SealedBatch) -> Result<(), StoreError> {
        self.writable()?;
        self.tree.apply_batch(batch.batch)?;
        Ok(())
    }

    /// Entries whose key starts with `prefix`, in key order, each opened.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Zeroizing<Vec<u8>>), StoreError>> + '_ {
        self.tree.scan_prefix(prefix).map(move |entry| {
            let (key, sealed) = entry?;
            let value = self.open(&key, &sealed)?;
            Ok((key.to_vec(), value))
        })
    }

    /// Keys starting with `prefix`, without opening values.
    pub fn keys_with_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<Vec<u8>, StoreError>> + '_ {
        self.tree
            .scan_prefix(prefix)
            .keys()
            .map(|k| k.map(|k| k.to_vec()).map_err(StoreError::from))
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    fn seal(&self, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        self.keys
            .derived
            .seal
            .seal(Binding::new(self.name.as_bytes(), key), value, nonce)
    }

    fn open(&self, key: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.keys
            .derived
            .seal
            .open(Binding::new(self.name.as_bytes(), key), sealed)
            .map_err(|source| StoreError::Corrupt {
                what: format!("value in tree `{}` at key {}", self.name, short_hex(key)),
                source,
            })
    }

    /// Test hook: the raw sealed bytes, so tests can tamper with them.
    #[cfg(test)]
    pub(crate) fn raw(&self) -> &sled::Tree {
        &self.tree
    }
}

fn short_hex(key: &[u8]) -> String {
    let hex = HEXLOWER.encode(key);
    if hex.len() > 24 {
        format!("{}…", &hex[..24])
    } else {
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestVault;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_flushes() {
        let vault = TestVault::new();
        let tree = vault.store.tree("test").unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let store = vault.store.clone();
            let tree = tree.clone();
            tasks.push(tokio::spawn(async move {
                tree.insert(&i.to_be_bytes(), b"value").unwrap();
                store.commit().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = vault.store.stats();
        let commits = stats.commits.load(Ordering::Relaxed);
        let flushes = stats.flushes.load(Ordering::Relaxed);
        assert_eq!(commits, 200);
        assert!(flushes < commits, "{flushes} flushes for {commits} commits");
        drop(tree);
        let vault = vault.reopen().await;
        let tree = vault.store.tree("test").unwrap();
        assert_eq!(tree.len(), 200);
        assert_eq!(&*tree.get(&7u32.to_be_bytes()).unwrap().unwrap(), b"value");
    }

    #[tokio::test]
    async fn a_second_open_is_refused_while_the_first_runs() {
        let vault = TestVault::new();
        let err = Store::open(&vault.home().store_dir(), vault.keys.clone())
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Locked), "{err}");
    }

    #[tokio::test]
    async fn name_keys_are_keyed_and_distinct() {
        let a = TestVault::new();
        let b = TestVault::new();
        assert_ne!(
            a.store.name_key("collection", "contacts"),
            b.store.name_key("collection", "contacts")
        );
        assert_ne!(
            a.store.name_key("collection", "contacts"),
            a.store.name_key("collection", "notes")
        );
        assert_ne!(
            a.store.name_key("collection", "x"),
            a.store.name_key("record", "x")
        );
    }
}
