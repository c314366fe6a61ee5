//! The files of a Hearth home directory, named in one place.
//!
//! ```text
//! HOME/keys          the device's secrets (0600), see hearth_protocol::keyfile
//! HOME/owner.token   the owner's API token (0600)
//! HOME/store/        the sled database; every value sealed
//! HOME/blobs/        sealed blob chunks, named by keyed hash
//! HOME/api.addr      the API address of the running node (removed on clean exit)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn owner_token(&self) -> PathBuf {
        self.root.join("owner.token")
    }
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn api_addr(&self) -> PathBuf {
        self.root.join("api.addr")
    }

    /// A HOME holds a vault once its key file exists (it is written last by `init`).
    pub fn has_vault(&self) -> bool {
        self.keys().exists()
    }

    /// A backup host's identity (`hearth host`): a HOME is a vault's or a host's.
    pub fn host_key(&self) -> PathBuf {
        self.root.join("host.key")
    }

    pub fn is_host(&self) -> bool {
        self.host_key().exists()
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same
/// directory with `mode`, fsynced, renamed over `path`, and the directory fsynced.
/// A crash leaves either the old file or the new one, never a mix.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    // A bare file name's parent is "", which cannot be opened to sync: it is ".".
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and missing parents) readable by this user only (0700). An existing
/// directory that others can enter is narrowed to 0700: a HOME made by an earlier
/// version was 0755.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Makes a rename or create in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
