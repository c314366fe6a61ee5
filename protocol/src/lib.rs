//! What two Hearth parties must agree on, and nothing else.
//!
//! Wire and file formats (the sealed-value envelope, the key file, blob manifests),
//! the names users choose (collections, record ids, blob ids) and the JSON types of the
//! local HTTP API. This crate does no I/O: no tokio, no sled, no sockets, no files. Every
//! type with a wire or file format lives here, and every format carries a version.

pub mod api;
pub mod backup;
pub mod blob;
pub mod commit;
pub mod invite;
pub mod keyfile;
pub mod mail;
pub mod names;
pub mod scope;
pub mod seal;
pub mod sync;
pub mod view;

pub use names::{BlobId, CollectionName, NameError, RecordId};
