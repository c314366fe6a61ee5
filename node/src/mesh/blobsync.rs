//! Blob sync: every device of the vault gets every blob, chunk by chunk.
//!
//! The system collection `_blobs` lists the vault's blobs (`{"size"}` under the blob
//! id); it syncs like any collection. This service notices blobs listed there that this
//! device lacks and fetches them from a connected member over `/hearth/blobs/1`: the
//! manifest, then each missing chunk, verified against its keyed hash before it is
//! stored. Chunks already here are skipped, so an interrupted transfer resumes. It also
//! serves other members' requests; anyone else is refused before anything is read.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hearth_protocol::BlobId;
use hearth_protocol::blob::{BLOB_PROTOCOL, BlobRequest, BlobResponse, Manifest};
use libp2p::{PeerId, StreamProtocol};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::frames::{read_frame, write_frame};
use super::{MeshHandle, devices};
use crate::Vault;
use crate::collections::{CollectionError, Collections};
use hearth_protocol::{CollectionName, RecordId};

pub const BLOBS: &str = "_blobs";
/// Peers served at once.
const MAX_SERVING: usize = 8;
/// How often missing blobs are looked for even without a change.
const RETRY_EVERY: Duration = Duration::from_secs(30);
/// A peer that does not answer one request in this time is given up for this round.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub fn collection() -> CollectionName {
    CollectionName::parse(BLOBS).expect("_blobs is a valid system collection name")
}

/// Lists a blob in `_blobs` so the other devices fetch it. Returns whether it was new
/// (then the store must commit).
pub fn announce(collections: &Collections, id: &str, size: u64) -> Result<bool, CollectionError> {
    let record_id = RecordId::parse(id).expect("a blob id in hex is a valid record id");
    if collections.get(&collection(), &record_id)?.is_some() {
        return Ok(false);
    }
    let record = json!({"size": size});
    collections.put(
        &collection(),
        &record_id,
        record.as_object().expect("a JSON object"),
    )?;
    Ok(true)
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("stream: {0}")]
    Stream(String),
    #[error("the peer does not have it")]
    NotFound,
    #[error("the peer answered nonsense: {0}")]
    Protocol(String),
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
}

pub struct BlobSync {
    vault: Arc<Vault>,
    mesh: MeshHandle,
    serving: Arc<Semaphore>,
}

impl BlobSync {
    pub(super) fn new(vault: Arc<Vault>, mesh: MeshHandle) -> Self {
        Self {
            vault,
            mesh,
            serving: Arc::new(Semaphore::new(MAX_SERVING)),
        }
    }

    pub(super) async fn serve_loop(self: Arc<Self>, mut incoming: libp2p_stream::IncomingStreams) {
        // Dropping the set (when this loop is stopped) stops every transfer in it.
        let mut serving = JoinSet::new();
        while let Some((peer, stream)) = incoming.next().await {
            while serving.try_join_next().is_some() {}
            if !devices::is_member(&self.vault.collections, &peer) {
                tracing::info!(%peer, "refused a blob request from a peer that is not a device of this vault");
                continue;
            }
            let Ok(permit) = self.serving.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many blob transfers at once; refusing one more");
                continue;
            };
            let this = self.clone();
            serving.spawn(async move {
                if let Err(e) = this.serve(peer, stream).await {
                    tracing::info!(%peer, error = %e, "blob stream closed");
                }
                drop(permit);
            });
        }
    }

    async fn serve(&self, peer: PeerId, mut stream: libp2p::Stream) -> Result<(), FetchError> {
        loop {
            let frame = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut stream)).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) | Err(_) => return Ok(()),
                Ok(Err(e)) => return Err(FetchError::Stream(e.to_string())),
            };
            if !devices::is_member(&self.vault.collections, &peer) {
                return Err(FetchError::Protocol(
                    "the peer is no longer a device of this vault".into(),
                ));
            }
            let request =
                BlobRequest::decode(&frame).map_err(|e| FetchError::Protocol(e.to_string()))?;
            let response = match request {
                BlobRequest::GetManifest(id) => {
                    match self.vault.blobs.manifest_bytes(BlobId(id))? {
                        Some(bytes) => BlobResponse::Manifest(bytes),
                        None => BlobResponse::NotFound,
                    }
                }
                BlobRequest::GetChunk(hash) => match self.vault.blobs.read_chunk(hash).await? {
                    Some(bytes) => BlobResponse::Chunk(bytes.to_vec()),
                    None => BlobResponse::NotFound,
                },
            };
            write_frame(&mut stream, &response.encode())
                .await
                .map_err(|e| FetchError::Stream(e.to_string()))?;
        }
    }

    /// Fetches missing blobs whenever `_blobs` changes, and every [`RETRY_EVERY`].
    pub(super) async fn fetch_loop(self: Arc<Self>) {
        let mut changes = self.vault.collections.subscribe();
        let mut retry = tokio::time::interval(RETRY_EVERY);
        loop {
            tokio::select! {
                changed = changes.recv() => match changed {
                    Ok(name) if name.as_str() == BLOBS => {}
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = retry.tick() => {}
            }
            self.fetch_missing().await;
        }
    }

    async fn fetch_missing(&self) {
        let listed = match self.vault.collections.records(&collection()) {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the blob list");
                return;
            }
        };
        let missing: Vec<BlobId> = listed
            .iter()
            .filter_map(|r| {
                r.get("id")
                    .and_then(Value::as_str)
                    .and_then(|id| BlobId::parse(id).ok())
            })
            .filter(|id| !self.vault.blobs.has_blob(*id).unwrap_or(true))
            .collect();
        if missing.is_empty() {
            return;
        }
        let peers: Vec<PeerId> = self
            .mesh
            .connected_peers()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|p| devices::is_member(&self.vault.collections, p))
            .collect();
        for id in missing {
            for peer in &peers {
                match self.fetch(*peer, id).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(%peer, blob = %id, error = %e, "cannot fetch a blob from this peer")
                    }
                }
            }
        }
    }

    async fn fetch(&self, peer: PeerId, id: BlobId) -> Result<(), FetchError> {
        let mut control = self.mesh.streams();
        let mut stream = control
            .open_stream(peer, StreamProtocol::new(BLOB_PROTOCOL))
            .await
            .map_err(|e| FetchError::Stream(e.to_string()))?;
        let manifest = match ask(&mut stream, BlobRequest::GetManifest(id.0)).await? {
            BlobResponse::Manifest(bytes) => {
                Manifest::decode(&bytes).map_err(|e| FetchError::Protocol(e.to_string()))?
            }
            BlobResponse::NotFound => return Err(FetchError::NotFound),
            BlobResponse::Chunk(_) => {
                return Err(FetchError::Protocol(
                    "a chunk where a manifest was due".into(),
                ));
            }
        };
        let total = manifest.chunks.len();
        tracing::info!(blob = %id, size = manifest.size, chunks = total, %peer, "fetching a blob");
        for (index, hash) in manifest.chunks.iter().enumerate() {
            if self.vault.blobs.has_chunk(hash) {
                continue;
            }
            match ask(&mut stream, BlobRequest::GetChunk(*hash)).await? {
                BlobResponse::Chunk(bytes) => {
                    if bytes.len() != manifest.chunk_len(index) {
                        return Err(FetchError::Protocol(format!(
                            "chunk {index} has the wrong length"
                        )));
                    }
                    self.vault
                        .blobs
                        .store_chunk(*hash, Bytes::from(bytes))
                        .await?;
                }
                BlobResponse::NotFound => return Err(FetchError::NotFound),
                BlobResponse::Manifest(_) => {
                    return Err(FetchError::Protocol(
                        "a manifest where a chunk was due".into(),
                    ));
                }
            }
            tracing::debug!(blob = %id, done = index + 1, total, "blob chunk stored");
        }
        self.vault.blobs.store_manifest(id, &manifest).await?;
        tracing::info!(blob = %id, "blob arrived");
        Ok(())
    }
}

async fn ask(
    stream: &mut libp2p::Stream,
    request: BlobRequest,
) -> Result<BlobResponse, FetchError> {
    write_frame(stream, &request.encode())
        .await
        .map_err(|e| FetchError::Stream(e.to_string()))?;
    let frame = tokio::time::timeout(REQUEST_TIMEOUT, read_frame(stream))
        .await
        .map_err(|_| FetchError::Stream("timed out".into()))?
        .map_err(|e| FetchError::Stream(e.to_string()))?
        .ok_or_else(|| FetchError::Stream("the peer closed the stream".into()))?;
    BlobResponse::decode(&frame).map_err(|e| FetchError::Protocol(e.to_string()))
}
