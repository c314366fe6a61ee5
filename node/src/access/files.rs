//! The door's side of the file share (`/files/`, WebDAV): the `files` collection as a
//! tree of files and folders (docs/SCHEMA.md, "Files") for a caller the door admitted.
//! The WebDAV front end (`crate::dav::files`) only speaks HTTP and XML; what a grant may
//! do with files is decided here.
//!
//! A grant reaches files when it reads the `files` collection whole (`--read files`);
//! it changes them when it also writes it whole (`--write files`). Its filter may only
//! be a folder (`--where 'path^=/Photos'`): that folder is then the share's root, so
//! the service sees neither the folders above it nor their names. Every request is
//! audited: a listing as one read of what is listed, a file's bytes as a read of its
//! blob, each change with the records it touched. A service never writes a file record
//! through the generic view routes (which could name any blob it learned the id of, or
//! leave a file outside its folder's entries): a file's bytes are always what the
//! service uploaded or a copy of a file it may read.

use hearth_protocol::scope::{CollectionScope, Fields};
use hearth_protocol::{BlobId, CollectionName};

use super::AccessError;
use super::audit::{AuditEvent, Operation};
use super::door::{Caller, Door};
use crate::files::{self, Content, Entry, FileError, FilePath};

/// A folder's entries to read a page at a time, made by [`Door::file_listing`] once
/// their read is audited (only that makes one).
#[derive(Debug)]
pub struct FileListing {
    folder: FilePath,
    names: std::vec::IntoIter<String>,
    left: usize,
}

impl FileListing {
    /// How many names are still to be read.
    pub fn left(&self) -> usize {
        self.left
    }
}

/// What a grant makes of the files.
#[derive(Debug, Clone)]
pub struct Share {
    /// The folder that is the share's root (`/` unless the grant is limited to one).
    pub root: FilePath,
    pub write: bool,
}

impl Share {
    /// The vault's path of a path in the share (`/2026/a.jpg` in a share of
    /// `/Photos` is `/Photos/2026/a.jpg`).
    pub fn inside(&self, path: &FilePath) -> Result<FilePath, AccessError> {
        if self.root.is_root() {
            return Ok(path.clone());
        }
        FilePath::parse(&format!(
            "{}{}",
            self.root,
            path.as_str().trim_end_matches('/')
        ))
        .map_err(|e| AccessError::BadRequest(e.to_string()))
    }

    /// The share's path of a vault path inside it.
    pub fn outside<'a>(&self, path: &'a FilePath) -> &'a str {
        if self.root.is_root() {
            return path.as_str();
        }
        match path.as_str().strip_prefix(self.root.as_str()) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }
}

impl From<FileError> for AccessError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::NotFound(_) => AccessError::NotFound {
                collection: files::COLLECTION.into(),
                id: String::new(),
            },
            FileError::Collection(e) => e.into(),
            FileError::BadPath(m) => AccessError::BadRequest(m),
            other => AccessError::File(other),
        }
    }
}

/// The fields of a file's record a listing reads (the audit names them).
const LISTED: [&str; 6] = ["path", "kind", "size", "type", "modified", "entries"];

fn whole(fields: &Option<Fields>) -> bool {
    matches!(fields, Some(Fields::All))
}

impl Door {
    /// Whether a grant still counts (neither revoked nor expired, nor gone): a file
    /// lock another grant holds ends with that grant (`dav::locks`).
    pub async fn grant_active(&self, id: &str) -> Result<bool, AccessError> {
        let id = id.to_owned();
        self.blocking(move |inner| {
            Ok(
                super::grants::get_grant(&inner.collections, &id)?.is_some_and(|g| {
                    g.status(crate::clock::now_unix()) == hearth_protocol::api::GrantStatus::Active
                }),
            )
        })
        .await
    }

    /// What the caller's grant makes of the files, or why it reaches none.
    pub fn file_share(&self, caller: &Caller) -> Result<Share, AccessError> {
        let refuse = |why: String| {
            self.refused(
                &caller.grant,
                files::COLLECTION,
                AccessError::OutOfScope(why),
            )
        };
        let Some(scope) = caller.scope.collection(files::COLLECTION) else {
            return Err(refuse(
                "the grant does not include files (it needs --read files)".into(),
            ));
        };
        if !whole(&scope.read) {
            return Err(refuse(
                "the grant does not read files whole (it needs --read files, not fields of it)"
                    .into(),
            ));
        }
        let root = share_root(&scope).map_err(refuse)?;
        Ok(Share {
            root,
            write: whole(&scope.write),
        })
    }

    /// Refuses a change by a grant that only reads (audited).
    pub fn file_changing(&self, caller: &Caller, share: &Share) -> Result<(), AccessError> {
        if share.write {
            Ok(())
        } else {
            Err(self.refused(
                &caller.grant,
                files::COLLECTION,
                AccessError::OutOfScope(
                    "the grant only reads files (changing them needs --write files)".into(),
                ),
            ))
        }
    }

    /// The entry at `path` (a vault path inside the share) and, with `depth`, what it
    /// holds if it is a folder, all read at once ([`Door::file_listing`] for a long
    /// answer). Audited as one read of the entry and everything the folder names.
    pub async fn file_list(
        &self,
        caller: &Caller,
        share: &Share,
        path: &FilePath,
        depth: bool,
    ) -> Result<(Entry, Vec<Entry>), AccessError> {
        let (entry, mut listing) = self.file_listing(caller, share, path, depth).await?;
        let mut inside = Vec::with_capacity(listing.left());
        while let Some(page) = self.next_entries(caller, &mut listing, 1024).await? {
            inside.extend(page);
        }
        Ok((entry, inside))
    }

    /// The entry at `path` and, with `depth`, a listing of what it holds to read a page
    /// at a time ([`Door::next_entries`]): how a long answer (a PROPFIND of a folder of
    /// thousands of files) is sent while it is read, never held whole. Audited first,
    /// as one read of the entry and everything the folder names.
    pub async fn file_listing(
        &self,
        caller: &Caller,
        share: &Share,
        path: &FilePath,
        depth: bool,
    ) -> Result<(Entry, FileListing), AccessError> {
        let entry = self
            .file_entry(caller, share, path, Operation::Read)
            .await?;
        let names: Vec<String> = if depth && entry.folder {
            entry.entries().into_keys().collect()
        } else {
            Vec::new()
        };
        let event = AuditEvent {
            records: 1 + names.len(),
            fields: LISTED.iter().map(|f| (*f).to_owned()).collect(),
            ..caller.grant.event(Operation::Read, files::COLLECTION)
        };
        self.audited(vec![event]).await?;
        let listing = FileListing {
            folder: entry.path.clone(),
            left: names.len(),
            names: names.into_iter(),
        };
        Ok((entry, listing))
    }

    /// The next entries of a listing, at most `n` (fewer where one was removed since
    /// it was listed); `None` once every one was read. A grant revoked or expired
    /// since the listing began reads no further page: a long answer still being sent
    /// stops there.
    pub async fn next_entries(
        &self,
        caller: &Caller,
        listing: &mut FileListing,
        n: usize,
    ) -> Result<Option<Vec<Entry>>, AccessError> {
        let page: Vec<String> = listing.names.by_ref().take(n.max(1)).collect();
        if page.is_empty() {
            return Ok(None);
        }
        self.recheck(caller)?;
        listing.left -= page.len();
        let folder = listing.folder.clone();
        self.blocking(move |inner| {
            let mut out = Vec::with_capacity(page.len());
            for name in page {
                let Ok(child) = folder.join(&name) else {
                    continue;
                };
                if let Some(entry) = files::stat(&inner.collections, &child)? {
                    out.push(entry);
                }
            }
            Ok(Some(out))
        })
        .await
    }

    /// The entry at `path` (not audited: the caller audits what it returns). The
    /// share's own folder is there for it even before anything is in it (it is made
    /// with its first file).
    /// A path that is not there is audited as a refused `op`.
    async fn file_entry(
        &self,
        caller: &Caller,
        share: &Share,
        path: &FilePath,
        op: Operation,
    ) -> Result<Entry, AccessError> {
        let at = path.clone();
        let root = share.root.clone();
        self.blocking(move |inner| match files::stat(&inner.collections, &at)? {
            Some(entry) => Ok(entry),
            None if at == root => Ok(files::unmade_folder(&at)),
            None => Err(FileError::NotFound(at.to_string()).into()),
        })
        .await
        .inspect_err(|e| {
            if matches!(e, AccessError::NotFound { .. }) {
                self.missed(caller, op, files::COLLECTION, path.as_str());
            }
        })
    }

    /// A file's entry, to serve its bytes: audited as a read of its blob before a
    /// byte is sent. A folder (the share's own, made or not, included) is
    /// [`FileError::IsAFolder`], with nothing audited: the caller lists it instead.
    pub async fn file_bytes(
        &self,
        caller: &Caller,
        share: &Share,
        path: &FilePath,
    ) -> Result<Entry, AccessError> {
        // The share's own folder, made or not, has no bytes: refused below.
        let entry = self
            .file_entry(caller, share, path, Operation::ReadBlob)
            .await?;
        let Some(blob) = entry.blob.clone() else {
            return Err(FileError::IsAFolder(path.to_string()).into());
        };
        let event = AuditEvent {
            records: 1,
            ids: vec![entry.path.id().to_string()],
            fields: vec![blob],
            ..caller.grant.event(Operation::ReadBlob, files::COLLECTION)
        };
        self.audited(vec![event]).await?;
        Ok(entry)
    }

    /// Stores a file the service uploaded (its bytes are stored: `content`, and
    /// `listing` lists them). Returns whether the file is new.
    pub async fn file_put(
        &self,
        caller: &Caller,
        share: &Share,
        path: &FilePath,
        content: Content,
        listing: Vec<(BlobId, u64, crate::blobs::Described)>,
    ) -> Result<bool, AccessError> {
        self.file_changing(caller, share)?;
        let at = path.clone();
        // The share's folder is made with its first file; any other missing folder is
        // the client's mistake (409).
        let parents = path.parent().as_ref() == Some(&share.root);
        let created = self
            .blocking(move |inner| {
                Ok(files::put_file(
                    &inner.collections,
                    &at,
                    &content,
                    parents,
                    &listing,
                )?)
            })
            .await?;
        let operation = if created {
            Operation::Create
        } else {
            Operation::Write
        };
        self.changed(caller, operation, vec![path.id().to_string()])
            .await?;
        Ok(created)
    }

    /// Makes a folder (its parent must be there).
    pub async fn file_mkdir(
        &self,
        caller: &Caller,
        share: &Share,
        path: &FilePath,
    ) -> Result<(), AccessError> {
        self.file_changing(caller, share)?;
        let at = path.clone();
        let parents = path.parent().as_ref() == Some(&share.root);
        self.blocking(move |inner| Ok(files::make_folder(&inner.collections, &at, parents)?))
            .await?;
        self.changed(caller, Operation::Create, vec![path.id().to_string()])
            .await
    }

    /// Removes a file, or a folder with all it holds.
    pub async fn file_remove(
        &self,
        caller: &Caller,
        share: &Share,
        path: &FilePath,
    ) -> Result<files::Removed, AccessError> {
        self.file_changing(caller, share)?;
        if *path == share.root {
            return Err(AccessError::Conflict(
                "the share's root folder cannot be removed".into(),
            ));
        }
        let at = path.clone();
        let removed = self
            .blocking(move |inner| Ok(files::remove(&inner.collections, &at)?))
            .await?;
        self.changed(caller, Operation::Remove, vec![path.id().to_string()])
            .await?;
        Ok(removed)
    }

    /// Moves (or, with `keep`, copies) `from` to `to`, both inside the share. Returns
    /// whether something at `to` was replaced.
    pub async fn file_relocate(
        &self,
        caller: &Caller,
        share: &Share,
        from: &FilePath,
        to: &FilePath,
        overwrite: bool,
        keep: bool,
    ) -> Result<bool, AccessError> {
        self.file_changing(caller, share)?;
        if *from == share.root || *to == share.root {
            return Err(AccessError::Conflict(
                "the share's root folder cannot be moved or replaced".into(),
            ));
        }
        let (a, b) = (from.clone(), to.clone());
        let replaced = self
            .blocking(move |inner| {
                Ok(files::relocate(
                    &inner.collections,
                    &a,
                    &b,
                    overwrite,
                    keep,
                )?)
            })
            .await?;
        let mut ids = vec![to.id().to_string()];
        if !keep {
            ids.push(from.id().to_string());
        }
        self.changed(caller, Operation::Create, ids).await?;
        Ok(replaced)
    }

    /// Sets and removes properties a client keeps on a file or folder (PROPPATCH).
    pub async fn file_set_props(
        &self,
        caller: &Caller,
        share: &Share,
        path: &FilePath,
        changes: Vec<(String, Option<String>)>,
    ) -> Result<(), AccessError> {
        self.file_changing(caller, share)?;
        let at = path.clone();
        self.blocking(move |inner| Ok(files::set_props(&inner.collections, &at, &changes)?))
            .await?;
        self.changed(caller, Operation::Write, vec![path.id().to_string()])
            .await
    }

    async fn changed(
        &self,
        caller: &Caller,
        operation: Operation,
        ids: Vec<String>,
    ) -> Result<(), AccessError> {
        let event = AuditEvent {
            records: ids.len(),
            ids,
            ..caller.grant.event(operation, files::COLLECTION)
        };
        self.audited(vec![event]).await
    }
}

/// The share's root folder from a grant's filter on files: none, or one `path^=`.
fn share_root(scope: &CollectionScope) -> Result<FilePath, String> {
    match scope.filter.as_slice() {
        [] => Ok(FilePath::root()),
        [only] if only.under && only.field.to_string() == "path" => {
            let folder = only.value.as_str().unwrap_or("/");
            FilePath::parse(folder).map_err(|e| e.to_string())
        }
        _ => Err(
            "the grant's filter on files is not a folder: files are shared whole or by one folder (--where 'path^=/FOLDER')"
                .into(),
        ),
    }
}

/// Whether generic view writes may change `collection`: not `files`, whose records
/// only the file share and the owner write.
pub(super) fn writable_by_views(collection: &CollectionName) -> Result<(), AccessError> {
    if collection.as_str() == files::COLLECTION {
        return Err(AccessError::BadRequest(
            "files are written through the file share (/files/, WebDAV), which keeps folders whole"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hearth_protocol::BlobId;

    use super::super::{AccessError, Credentials, revoke};
    use crate::collections::Collections;
    use crate::files::{self, Content, FilePath};
    use crate::testutil::TestVault;

    /// A listing read a page at a time stops at the first page after its grant is
    /// revoked: a long PROPFIND still being sent ends there.
    #[tokio::test]
    async fn a_revoked_grant_reads_no_further_page_of_a_listing() {
        let vault = TestVault::new();
        let collections =
            std::sync::Arc::new(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        for i in 0..3 {
            let content = Content {
                blob: BlobId([i; 32]),
                size: 1,
                content_type: None,
                modified: None,
                meta: None,
            };
            let path = FilePath::parse(&format!("/Many/f{i}")).unwrap();
            files::put_file(&collections, &path, &content, true, &[]).unwrap();
        }
        let (door, grant, token) =
            super::super::door_with_grant(&vault, &collections, "files", None);
        let caller = door.admit(&Credentials::local(&token)).await.unwrap();
        let share = door.file_share(&caller).unwrap();
        let folder = FilePath::parse("/Many").unwrap();
        let (_, mut listing) = door
            .file_listing(&caller, &share, &folder, true)
            .await
            .unwrap();
        let first = door.next_entries(&caller, &mut listing, 1).await.unwrap();
        assert_eq!(first.map(|page| page.len()), Some(1));
        revoke(&collections, &grant.id).unwrap();
        assert!(matches!(
            door.next_entries(&caller, &mut listing, 1).await,
            Err(AccessError::Revoked)
        ));
    }
}
