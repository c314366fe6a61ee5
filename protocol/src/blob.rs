//! Blob manifests: which chunks, in which order, make a blob.
//!
//! A blob's content is split into chunks of [`CHUNK_SIZE`] bytes (the last may be
//! shorter, an empty blob has none). Each chunk is named by its keyed hash and stored
//! sealed on its own; the manifest, stored sealed under the blob id, lists them:
//!
//! ```text
//! 0        version (1)
//! 1..9     total size in bytes, u64 big-endian
//! 9..13    chunk size in bytes, u32 big-endian
//! 13..     32-byte chunk hashes, ceil(size / chunk size) of them
//! ```

pub const MANIFEST_VERSION: u8 = 1;
pub const CHUNK_SIZE: usize = 1024 * 1024;
const HEADER_LEN: usize = 13;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("blob manifest is truncated")]
    Truncated,
    #[error("blob manifest has unknown version {0}")]
    Version(u8),
    #[error("blob manifest is inconsistent: {0}")]
    Inconsistent(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: Vec<[u8; 32]>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 32 * self.chunks.len());
        out.push(MANIFEST_VERSION);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() < HEADER_LEN {
            return Err(ManifestError::Truncated);
        }
        if bytes[0] != MANIFEST_VERSION {
            return Err(ManifestError::Version(bytes[0]));
        }
        let size = u64::from_be_bytes(bytes[1..9].try_into().expect("slice of 8"));
        let chunk_size = u32::from_be_bytes(bytes[9..13].try_into().expect("slice of 4"));
        let body = &bytes[HEADER_LEN..];
        if chunk_size == 0 || !body.len().is_multiple_of(32) {
            return Err(ManifestError::Inconsistent(format!(
                "chunk size {chunk_size}, {} bytes of hashes",
                body.len()
            )));
        }
        let expected = size.div_ceil(u64::from(chunk_size));
        if expected != (body.len() / 32) as u64 {
            return Err(ManifestError::Inconsistent(format!(
                "{} chunks listed, {expected} needed for {size} bytes",
                body.len() / 32
            )));
        }
        let chunks = body
            .chunks_exact(32)
            .map(|c| c.try_into().expect("chunks_exact(32)"))
            .collect();
        Ok(Self {
            size,
            chunk_size,
            chunks,
        })
    }

    /// Length of chunk `index`, from the total size.
    pub fn chunk_len(&self, index: usize) -> usize {
        let start = index as u64 * u64::from(self.chunk_size);
        (self.size - start).min(u64::from(self.chunk_size)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(size in 0u64..10_000, chunk_size in 1u32..3000) {
            let n = size.div_ceil(u64::from(chunk_size)) as usize;
            let m = Manifest { size, chunk_size, chunks: (0..n).map(|i| [i as u8; 32]).collect() };
            let back = Manifest::decode(&m.encode()).unwrap();
            prop_assert_eq!(&back, &m);
            let total: u64 = (0..n).map(|i| back.chunk_len(i) as u64).sum();
            prop_assert_eq!(total, size);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Manifest::decode(&bytes);
        }
    }

    #[test]
    fn rejects_inconsistent() {
        let m = Manifest {
            size: 10,
            chunk_size: 4,
            chunks: vec![[0; 32]; 3],
        };
        let mut bytes = m.encode();
        bytes.truncate(bytes.len() - 32);
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Inconsistent(_))
        ));
        let mut zero = m.encode();
        zero[9..13].copy_from_slice(&0u32.to_be_bytes());
        assert!(Manifest::decode(&zero).is_err());
    }
}

/// The blob protocol, `/hearth/blobs/1`: a device asks a member for what it lacks, one
/// request at a time on a stream, each frame as in [`crate::sync`]:
///
/// ```text
/// 0x01 GetManifest ‖ blob id (32)      ->  0x11 Manifest ‖ manifest  |  0x13 NotFound
/// 0x02 GetChunk ‖ chunk hash (32)      ->  0x12 Chunk ‖ plaintext    |  0x13 NotFound
/// ```
///
/// The receiver checks every chunk against its keyed hash (the same on every device
/// of the vault) before storing it; chunks it already has are not asked for again, so
/// an interrupted transfer resumes where it stopped.
pub const BLOB_PROTOCOL: &str = "/hearth/blobs/1";

/// The first byte of a [`BlobResponse::Chunk`] frame (a receiver can read the chunk
/// behind it where it lies, without decoding).
pub const CHUNK_RESPONSE: u8 = 0x12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobRequest {
    GetManifest([u8; 32]),
    GetChunk([u8; 32]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobResponse {
    Manifest(Vec<u8>),
    Chunk(Vec<u8>),
    NotFound,
}

impl BlobRequest {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, id) = match self {
            BlobRequest::GetManifest(id) => (1, id),
            BlobRequest::GetChunk(hash) => (2, hash),
        };
        let mut out = vec![tag];
        out.extend_from_slice(id);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() != 33 {
            return Err(ManifestError::Truncated);
        }
        let id: [u8; 32] = bytes[1..].try_into().expect("length checked");
        match bytes[0] {
            1 => Ok(BlobRequest::GetManifest(id)),
            2 => Ok(BlobRequest::GetChunk(id)),
            other => Err(ManifestError::Inconsistent(format!(
                "unknown blob request {other}"
            ))),
        }
    }
}

impl BlobResponse {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            BlobResponse::Manifest(bytes) => [&[0x11][..], bytes].concat(),
            BlobResponse::Chunk(bytes) => [&[CHUNK_RESPONSE][..], bytes].concat(),
            BlobResponse::NotFound => vec![0x13],
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let (&tag, rest) = bytes.split_first().ok_or(ManifestError::Truncated)?;
        match tag {
            0x11 => Ok(BlobResponse::Manifest(rest.to_vec())),
            CHUNK_RESPONSE => Ok(BlobResponse::Chunk(rest.to_vec())),
            0x13 if rest.is_empty() => Ok(BlobResponse::NotFound),
            other => Err(ManifestError::Inconsistent(format!(
                "unknown blob response {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod protocol_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn messages_round_trip(id in any::<[u8; 32]>(), body in proptest::collection::vec(any::<u8>(), 0..100)) {
            for r in [BlobRequest::GetManifest(id), BlobRequest::GetChunk(id)] {
                prop_assert_eq!(BlobRequest::decode(&r.encode()).unwrap(), r);
            }
            for r in [BlobResponse::Manifest(body.clone()), BlobResponse::Chunk(body), BlobResponse::NotFound] {
                prop_assert_eq!(BlobResponse::decode(&r.encode()).unwrap(), r);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = BlobRequest::decode(&bytes);
            let _ = BlobResponse::decode(&bytes);
        }
    }
}
