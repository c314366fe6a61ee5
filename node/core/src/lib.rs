//! The Hearth vault core: everything a vault is on one device, and nothing of how it
//! is reached.
//!
//! In: a HOME, its keys and the owner's or the door's requests as Rust calls. Out:
//! records, blobs, devices and audit entries, sealed on disk and durable when a commit
//! says so. This crate knows no HTTP, DAV, HTML or networking (its dependencies have
//! none; device identities are `libp2p-identity`'s types alone); `hearth-node` builds
//! the API, the door, the dashboard and the mesh on it. The modules, innermost first:
//!
//! - [`home`]: the files of a HOME; [`clock`]: the time, which tests can set.
//! - [`keys`]: the device's secrets; [`store`]: sealed sled trees, group commit, the
//!   ledger behind [`commits`] (the commit record that catches a store gone back in time).
//! - [`records`]: JSON ↔ Automerge; [`collections`]: documents of records, persisted
//!   and cached; [`index`]: the record index; [`recordmerge`] and [`textmerge`]: what
//!   happens after changes from another device arrive.
//! - [`blobs`]: chunked, sealed, content-addressed blobs; [`devices`]: the vault's
//!   devices; [`epochs`]: the vault keys that rotate when a device leaves; [`audit`]:
//!   the hash-chained audit log.

pub mod audit;
pub mod blobs;
pub mod clock;
pub mod collections;
pub mod commits;
pub mod devices;
pub mod epochs;
pub mod home;
pub mod index;
pub mod keys;
pub mod memory;
pub mod recordmerge;
pub mod records;
pub mod recovery;
pub mod store;
pub mod textmerge;

#[cfg(any(test, feature = "testutil"))]
#[doc(hidden)]
pub mod testutil {
    use std::sync::Arc;

    use crate::home::Home;
    use crate::keys::{self, VaultKeys};
    use crate::store::Store;

    /// A vault's keys and an open store in a fresh temporary HOME. (Fields drop in
    /// order: the store before the directory, so a commit record written as the store
    /// closes does not land in a directory being removed and keep it.)
    pub struct TestVault {
        pub store: Arc<Store>,
        pub keys: Arc<VaultKeys>,
        pub dir: tempfile::TempDir,
    }

    impl Default for TestVault {
        fn default() -> Self {
            Self::new()
        }
    }

    impl TestVault {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let home = Home::new(dir.path());
            let keys = Arc::new(keys::init(&home, None).expect("init").keys);
            let store = Arc::new(Store::open(&home.store_dir(), keys.clone()).expect("open store"));
            Self { dir, keys, store }
        }

        /// Another device of the same vault: the same keys, a store of its own in a
        /// temporary HOME of its own.
        pub fn other_device(&self) -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let home = Home::new(dir.path());
            let store =
                Arc::new(Store::open(&home.store_dir(), self.keys.clone()).expect("open store"));
            Self {
                store,
                keys: self.keys.clone(),
                dir,
            }
        }

        pub fn home(&self) -> Home {
            Home::new(self.dir.path())
        }

        /// Closes the store and opens it again, as a restart would.
        pub async fn reopen(self) -> Self {
            let TestVault {
                store,
                keys: _,
                dir,
            } = self;
            store.shutdown().await.expect("shutdown");
            drop(store);
            let home = Home::new(dir.path());
            let keys = Arc::new(keys::open(&home, None).expect("reopen keys"));
            let store =
                Arc::new(Store::open(&home.store_dir(), keys.clone()).expect("reopen store"));
            Self { dir, keys, store }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The core's boundary is its dependency list: a crate for HTTP, DAV, HTML or
    /// networking added to it fails here, before anyone builds on it.
    #[test]
    fn the_core_depends_on_no_http_dav_html_or_networking_crate() {
        let manifest = include_str!("../Cargo.toml");
        let forbidden = [
            "axum",
            "hyper",
            "http",
            "tower",
            "reqwest",
            "quick-xml",
            "askama",
            "libp2p",
            "libp2p-stream",
            "rustls",
            "tokio-rustls",
            "rcgen",
            "async-imap",
            "calcard",
            "mail-parser",
        ];
        let mut section = "";
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if !section.contains("dependencies") {
                continue;
            }
            let Some(name) = line.split(['=', '.', ' ']).next().filter(|n| !n.is_empty()) else {
                continue;
            };
            assert!(
                !forbidden.contains(&name),
                "hearth-core must not depend on {name} ({section})"
            );
        }
    }
}
