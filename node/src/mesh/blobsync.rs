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
use hearth_protocol::BlobId;
use hearth_protocol::blob::{BLOB_PROTOCOL, BlobRequest, BlobResponse, CHUNK_RESPONSE, Manifest};
use hearth_protocol::seal::{PLAINTEXT_AT, TAG_LEN};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::MeshHandle;
use super::frames::{read_frame, read_frame_with_room, write_frame};
use crate::Vault;
use crate::devices;

/// Peers served at once.
const MAX_SERVING: usize = 8;
/// How often missing blobs are looked for even without a change.
const RETRY_EVERY: Duration = Duration::from_secs(30);
/// Chunk requests sent ahead of the answers (each answer is up to one chunk).
const REQUESTS_IN_FLIGHT: usize = 4;
/// Answers a device's stream prepares ahead of the one being sent.
const ANSWERS_AHEAD: usize = 4;
/// Received chunks being verified, sealed and written at once.
const CHUNKS_BEING_WRITTEN: usize = crate::blobs::CHUNKS_IN_FLIGHT;
/// A peer that does not answer one request in this time is given up for this round.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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

    pub(super) async fn serve_loop(
        self: Arc<Self>,
        mut incoming: libp2p_stream::IncomingStreams,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut serving = JoinSet::new();
        loop {
            let Some((peer, stream)) = super::next_stream(&mut incoming, &mut stop).await else {
                break;
            };
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
        serving.shutdown().await;
    }

    /// Answers one device's requests in order, reading and opening the next chunks
    /// while the current one is being sent.
    async fn serve(&self, peer: PeerId, stream: libp2p::Stream) -> Result<(), FetchError> {
        let (mut reader, mut writer) = futures::AsyncReadExt::split(stream);
        let (answers, mut pending) = tokio::sync::mpsc::channel(ANSWERS_AHEAD);
        let vault = self.vault.clone();
        let reading = async move {
            loop {
                let frame =
                    match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut reader)).await {
                        Ok(Ok(Some(frame))) => frame,
                        Ok(Ok(None)) | Err(_) => return Ok(()),
                        Ok(Err(e)) => return Err(FetchError::Stream(e.to_string())),
                    };
                if !devices::is_member(&vault.collections, &peer) {
                    return Err(FetchError::Protocol(
                        "the peer is no longer a device of this vault".into(),
                    ));
                }
                let request =
                    BlobRequest::decode(&frame).map_err(|e| FetchError::Protocol(e.to_string()))?;
                let vault = vault.clone();
                let answer = tokio::spawn(async move { answer(&vault, request).await });
                if answers.send(answer).await.is_err() {
                    return Ok(());
                }
            }
        };
        let writing = async move {
            while let Some(answer) = pending.recv().await {
                let response = answer
                    .await
                    .map_err(|e| FetchError::Stream(format!("reading a chunk failed: {e}")))??;
                write_frame(&mut writer, &response)
                    .await
                    .map_err(|e| FetchError::Stream(e.to_string()))?;
            }
            Ok::<_, FetchError>(())
        };
        tokio::try_join!(reading, writing)?;
        Ok(())
    }

    /// Fetches missing blobs whenever `_blobs` changes by sync (at the next
    /// [`RETRY_EVERY`] when it changed here), and every [`RETRY_EVERY`] while some are
    /// still missing. The list is read again only when it changed: a vault of
    /// 100,000 listed messages is not read whole every half minute to find nothing.
    pub(super) async fn fetch_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut changes = self.vault.collections.subscribe();
        let mut retry = tokio::time::interval(RETRY_EVERY);
        // What the last reading of the list found missing, and whether the list
        // changed since (it is read at start).
        let mut missing: Vec<BlobId> = Vec::new();
        let mut changed_since = true;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                changed = changes.recv() => match changed {
                    Ok(changed) if changed.collection.as_str() == crate::blobs::BLOB_LIST => {
                        changed_since = true;
                        // What arrives may list blobs this device lacks, or remove
                        // ones it holds: the list is read now. What this device wrote
                        // lists blobs it holds (whoever removes one here frees it
                        // then): read at the next tick, not after each upload (reading
                        // it costs what the vault holds: 10,000 small files uploaded
                        // took a third of the node's time reading it).
                        if !changed.arrived {
                            continue;
                        }
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => changed_since = true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = retry.tick() => {
                    if !changed_since && missing.is_empty() {
                        continue;
                    }
                }
            }
            let reread = std::mem::take(&mut changed_since);
            let vault = self.vault.clone();
            let known = std::mem::take(&mut missing);
            // Read off the async threads: the list holds every blob of the vault.
            let found = tokio::task::spawn_blocking(move || {
                if reread {
                    let survey = vault.blobs.survey(&vault.collections)?;
                    let missing = survey.missing.into_iter().map(|(id, _)| id).collect();
                    return Ok((missing, survey.removed_here));
                }
                let missing: Vec<BlobId> = known
                    .into_iter()
                    .filter(|id| !vault.blobs.has_blob(*id).unwrap_or(true))
                    .collect();
                Ok::<_, crate::blobs::BlobError>((missing, false))
            })
            .await;
            let removed = match found {
                Ok(Ok((found, removed))) => {
                    missing = found;
                    removed
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the blob list");
                    changed_since = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the blob list failed");
                    changed_since = true;
                    continue;
                }
            };
            if !missing.is_empty() {
                tokio::select! {
                    _ = stop.changed() => return,
                    () = self.fetch_missing(&mut missing) => {}
                }
            }
            // A blob removed on another device: free its space here too.
            if removed && let Err(e) = self.vault.collect_blob_garbage().await {
                tracing::warn!(error = %e, "cannot free the space of removed blobs");
                // Tried again at the next tick.
                changed_since = true;
            }
        }
    }

    /// Fetches the blobs of `missing` from the vault's devices connected now; what
    /// could not be fetched stays in it.
    async fn fetch_missing(&self, missing: &mut Vec<BlobId>) {
        let peers: Vec<PeerId> = self
            .mesh
            .connected_peers()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|p| devices::is_member(&self.vault.collections, p))
            .collect();
        let mut left = Vec::new();
        for id in std::mem::take(missing) {
            let mut fetched = false;
            for peer in &peers {
                match self.fetch(*peer, id).await {
                    Ok(()) => {
                        fetched = true;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, blob = %id, error = %e, "cannot fetch a blob from this peer")
                    }
                }
            }
            if !fetched {
                left.push(id);
            }
        }
        *missing = left;
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
        // Safe from garbage collection until the manifest names them.
        let pinned = self.vault.blobs.pin_fetch(id, &manifest);
        let fetched = self.fetch_chunks(&mut stream, id, &manifest).await;
        self.vault.blobs.fetch_ended(id);
        fetched?;
        self.vault.blobs.store_manifest(id, &manifest).await?;
        drop(pinned);
        tracing::info!(blob = %id, "blob arrived");
        Ok(())
    }

    /// Fetches the chunks of `manifest` this device lacks, noting the progress.
    async fn fetch_chunks(
        &self,
        stream: &mut libp2p::Stream,
        id: BlobId,
        manifest: &Manifest,
    ) -> Result<(), FetchError> {
        let total = manifest.chunks.len();
        // Chunks already here (a resumed transfer, or shared content) are not asked for.
        let needed: Vec<(usize, [u8; 32])> = manifest
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, hash)| !self.vault.blobs.has_chunk(hash))
            .map(|(index, hash)| (index, *hash))
            .collect();
        let missing: u64 = needed
            .iter()
            .map(|(index, _)| manifest.chunk_len(*index) as u64)
            .sum();
        self.vault
            .blobs
            .note_fetching(id, manifest.size.saturating_sub(missing), manifest.size);
        // Requests are pipelined (the peer answers them in order) and each chunk is
        // sealed and written while the next ones travel: a round trip and a write per
        // chunk in series would leave the link idle most of the time.
        let mut asked = 0;
        while asked < needed.len().min(REQUESTS_IN_FLIGHT) {
            send(stream, BlobRequest::GetChunk(needed[asked].1)).await?;
            asked += 1;
        }
        let writing = Arc::new(Semaphore::new(CHUNKS_BEING_WRITTEN));
        let mut writes = JoinSet::new();
        for (done, &(index, hash)) in needed.iter().enumerate() {
            let chunk = receive_chunk(stream, index, manifest.chunk_len(index)).await?;
            if asked < needed.len() {
                send(stream, BlobRequest::GetChunk(needed[asked].1)).await?;
                asked += 1;
            }
            let permit = writing
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let vault = self.vault.clone();
            let len = (chunk.len() - PLAINTEXT_AT) as u64;
            writes.spawn(async move {
                let stored = vault.blobs.store_chunk(hash, chunk).await;
                drop(permit);
                if stored.is_ok() {
                    vault.blobs.note_received(id, len);
                }
                stored
            });
            while let Some(written) = writes.try_join_next() {
                written.map_err(|e| FetchError::Stream(format!("a chunk write failed: {e}")))??;
            }
            tracing::debug!(blob = %id, done = done + 1, needed = needed.len(), total, "blob chunk received");
        }
        while let Some(written) = writes.join_next().await {
            written.map_err(|e| FetchError::Stream(format!("a chunk write failed: {e}")))??;
        }
        Ok(())
    }
}

/// The encoded answer to one request. A chunk answer is built in the buffer the chunk
/// was read and opened in ([`crate::blobs::Blobs::chunk_answer`]), not copied.
async fn answer(vault: &Vault, request: BlobRequest) -> Result<Bytes, FetchError> {
    Ok(match request {
        BlobRequest::GetManifest(id) => match vault.blobs.manifest_bytes(BlobId(id))? {
            Some(bytes) => BlobResponse::Manifest(bytes).encode().into(),
            None => BlobResponse::NotFound.encode().into(),
        },
        BlobRequest::GetChunk(hash) => match vault.blobs.chunk_answer(hash).await? {
            Some(frame) => frame,
            None => BlobResponse::NotFound.encode().into(),
        },
    })
}

async fn ask(
    stream: &mut libp2p::Stream,
    request: BlobRequest,
) -> Result<BlobResponse, FetchError> {
    send(stream, request).await?;
    receive(stream).await
}

async fn send(stream: &mut libp2p::Stream, request: BlobRequest) -> Result<(), FetchError> {
    write_frame(stream, &request.encode())
        .await
        .map_err(|e| FetchError::Stream(e.to_string()))
}

async fn receive(stream: &mut libp2p::Stream) -> Result<BlobResponse, FetchError> {
    let frame = tokio::time::timeout(REQUEST_TIMEOUT, read_frame(stream))
        .await
        .map_err(|_| FetchError::Stream("timed out".into()))?
        .map_err(|e| FetchError::Stream(e.to_string()))?
        .ok_or_else(|| FetchError::Stream("the peer closed the stream".into()))?;
    BlobResponse::decode(&frame).map_err(|e| FetchError::Protocol(e.to_string()))
}

/// Receives the answer to a request for chunk `index` of `len` bytes, where it can be
/// sealed without a copy: a [`crate::blobs::chunk_buffer`] holding the chunk.
async fn receive_chunk(
    stream: &mut libp2p::Stream,
    index: usize,
    len: usize,
) -> Result<Vec<u8>, FetchError> {
    // The answer's tag lands in the last byte of the seal header's room.
    let head = PLAINTEXT_AT - 1;
    let frame = tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_frame_with_room(stream, head, TAG_LEN, 1 + len),
    )
    .await
    .map_err(|_| FetchError::Stream("timed out".into()))?
    .map_err(|e| FetchError::Stream(e.to_string()))?
    .ok_or_else(|| FetchError::Stream("the peer closed the stream".into()))?;
    if frame.get(head) != Some(&CHUNK_RESPONSE) {
        return Err(
            match BlobResponse::decode(&frame[head..])
                .map_err(|e| FetchError::Protocol(e.to_string()))?
            {
                BlobResponse::NotFound => FetchError::NotFound,
                _ => FetchError::Protocol("a manifest where a chunk was due".into()),
            },
        );
    }
    if frame.len() - PLAINTEXT_AT != len {
        return Err(FetchError::Protocol(format!(
            "chunk {index} has the wrong length"
        )));
    }
    Ok(frame)
}
