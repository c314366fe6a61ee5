//! Blobs at disk speed: a blob uploaded to A through the API, against sealing the same
//! bytes and writing them with as many fsyncs; and the same blob from A's upload until
//! B can read it whole, against the same bytes over one loopback TCP connection written
//! to a file with one fsync at the end. Both nodes run in this process (`nodes.rs`),
//! on 127.0.0.1, so the two ends of a transfer share the machine's cores.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use hearth_protocol::blob::CHUNK_SIZE;
use hearth_protocol::seal::{Binding, NONCE_LEN, SealKey};
use rand::RngCore;

use crate::Opts;
use crate::nodes::{http_client, join, start, until, upload_blob};
use crate::report::{Report, fig};

/// Distinct 1 MiB blocks the content is made of; each chunk also carries its index, so
/// no two chunks are equal (nothing dedups) and making one costs a memcpy.
const POOL: usize = 16;

struct Content {
    pool: Vec<Bytes>,
    chunks: u64,
}

impl Content {
    fn new(size: u64) -> Self {
        let mut rng = rand::thread_rng();
        let pool = (0..POOL)
            .map(|_| {
                let mut block = vec![0u8; CHUNK_SIZE];
                rng.fill_bytes(&mut block);
                Bytes::from(block)
            })
            .collect();
        Self {
            pool,
            chunks: size / CHUNK_SIZE as u64,
        }
    }

    fn size(&self) -> u64 {
        self.chunks * CHUNK_SIZE as u64
    }

    /// Chunk `i`: a pool block with `i` in its first 8 bytes.
    fn chunk(&self, i: u64) -> Bytes {
        let mut chunk = BytesMut::from(&self.pool[i as usize % POOL][..]);
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        chunk.freeze()
    }

    fn stream(
        &self,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let pool = self.pool.clone();
        let this = Content {
            pool,
            chunks: self.chunks,
        };
        futures::stream::iter(0..self.chunks).map(move |i| Ok(this.chunk(i)))
    }

    fn hash(&self) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new();
        for i in 0..self.chunks {
            hasher.update(&self.chunk(i));
        }
        hasher.finalize()
    }
}

pub async fn blobs(opts: &Opts) -> anyhow::Result<Vec<Report>> {
    let size: u64 = if opts.quick { 128 << 20 } else { 1 << 30 };
    let mib = (size >> 20) as f64;
    let content = Content::new(size);
    let dir = tempfile::tempdir_in(&opts.dir)?;
    let a = start(&dir.path().join("a"), true, vec![]).await?;
    let b = join(&a, &dir.path().join("b")).await?;
    // B is a member once the device list reached it; then the mesh is up both ways.
    let b_vault = b.vault().clone();
    until("B syncs with A", Duration::from_secs(60), || {
        hearth_node::devices::is_member(b_vault.collections(), &a.peer_id())
    })
    .await?;

    let http = http_client()?;
    let started = Instant::now();
    let id = upload_blob(&http, &a, reqwest::Body::wrap_stream(content.stream())).await?;
    let put = started.elapsed();
    let transfer = until("B has the blob whole", Duration::from_secs(900), || {
        b_vault.blobs().has_blob(id).unwrap_or(false)
    })
    .await?;
    let end_to_end = started.elapsed();

    // What B holds is what was sent (not timed).
    let mut reader = b_vault.blobs().open_blob(id)?;
    let mut hasher = blake3::Hasher::new();
    while let Some(chunk) = reader.next_chunk().await {
        hasher.update(&chunk?);
    }
    anyhow::ensure!(
        hasher.finalize() == content.hash(),
        "B's copy of the blob differs from what was uploaded to A"
    );
    // As many fsyncs as the upload made: one per chunk file, one per shard directory
    // it wrote into, one for the blobs directory.
    let manifest = hearth_protocol::blob::Manifest::decode(
        &a.vault()
            .blobs()
            .manifest_bytes(id)?
            .context("A has the manifest")?,
    )?;
    let shards: HashSet<u8> = manifest.chunks.iter().map(|c| c[0]).collect();
    b.shutdown().await?;
    a.shutdown().await?;

    let seal_dir = dir.path().join("baseline-seal");
    let sealed = {
        let content = Content {
            pool: content.pool.clone(),
            chunks: content.chunks,
        };
        let (dir, shards) = (seal_dir.clone(), shards.len());
        tokio::task::spawn_blocking(move || seal_and_write(&content, &dir, shards)).await??
    };
    let tcp = tcp_to_file(&content, &dir.path().join("baseline-tcp")).await?;

    let mut upload = Report::new(
        "blobs, upload",
        ">= 0.5x sealing the same bytes and writing them with as many fsyncs",
    );
    let put_rate = mib / put.as_secs_f64();
    let seal_rate = mib / sealed.as_secs_f64();
    upload.figures = vec![fig(
        format!("{mib} MiB blob put over HTTP until A answers (durable)"),
        put_rate,
        "MiB/s",
    )];
    upload.baseline = vec![fig(
        format!(
            "seal 1 MiB chunks, one thread, {} files + {} dirs fsynced",
            content.chunks,
            shards.len() + 1
        ),
        seal_rate,
        "MiB/s",
    )];
    upload.ratio = Some(("Hearth MiB/s / baseline MiB/s".into(), put_rate / seal_rate));
    upload
        .notes
        .push(format!("put: {put:.2?}; baseline: {sealed:.2?}"));
    upload.judge(&[put_rate / seal_rate >= 0.5]);

    let mut across = Report::new(
        "blobs, A to B",
        "put on A until B can read it whole <= 3x one loopback TCP connection to a file + one fsync",
    );
    across.figures = vec![
        fig(
            format!("{mib} MiB: put on A until B has it whole"),
            end_to_end.as_secs_f64(),
            "s",
        ),
        fig(
            "of which A's answer until B has it",
            transfer.as_secs_f64(),
            "s",
        ),
    ];
    across.baseline = vec![fig(
        "same bytes over one loopback TCP connection, to a file, one fsync",
        tcp.as_secs_f64(),
        "s",
    )];
    let ratio = end_to_end.as_secs_f64() / tcp.as_secs_f64();
    across.ratio = Some(("Hearth time / baseline time".into(), ratio));
    across.notes.push(
        "both nodes in this process (in-process nodes, TCP on 127.0.0.1, Noise, Yamux); \
         B's copy is read back and compared after the timing"
            .into(),
    );
    across.judge(&[ratio <= 3.0]);
    Ok(vec![upload, across])
}

/// Seals the content in 1 MiB chunks on one thread, each into its own file, fsynced,
/// spread over `shards` directories, then fsyncs the directories and `dir`.
fn seal_and_write(content: &Content, dir: &Path, shards: usize) -> anyhow::Result<Duration> {
    let key = SealKey::from_bytes(rand::random());
    let shards = shards.max(1);
    let started = Instant::now();
    std::fs::create_dir_all(dir)?;
    for s in 0..shards {
        std::fs::create_dir(dir.join(format!("{s:02x}")))?;
    }
    for i in 0..content.chunks {
        let chunk = content.chunk(i);
        let name = i.to_le_bytes();
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = key.seal(Binding::new(b"bench", &name), &chunk, nonce);
        let path = dir
            .join(format!("{:02x}", i as usize % shards))
            .join(format!("{i}"));
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&sealed)?;
        file.sync_all()?;
    }
    for s in 0..shards {
        std::fs::File::open(dir.join(format!("{s:02x}")))?.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(started.elapsed())
}

/// Sends the content over one TCP connection on 127.0.0.1; the receiver writes it to a
/// file and fsyncs it once at the end. Plain blocking sockets and files, one thread
/// each end. The time until that fsync returns.
async fn tcp_to_file(content: &Content, path: &Path) -> anyhow::Result<Duration> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let path = path.to_path_buf();
    let size = content.size();
    let receiver = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept()?;
        let mut file = std::fs::File::create(&path)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = socket.read(&mut buf)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])?;
            got += n as u64;
        }
        file.sync_all()?;
        anyhow::ensure!(got == size, "the baseline received {got} of {size} bytes");
        Ok::<_, anyhow::Error>(Instant::now())
    });
    let content = Content {
        pool: content.pool.clone(),
        chunks: content.chunks,
    };
    let sender = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut socket = std::net::TcpStream::connect(addr)?;
        for i in 0..content.chunks {
            socket.write_all(&content.chunk(i))?;
        }
        socket.shutdown(std::net::Shutdown::Write)?;
        Ok::<_, anyhow::Error>(started)
    });
    let started = sender.await??;
    let finished = tokio::task::spawn_blocking(move || receiver.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the baseline's receiver panicked"))??;
    Ok(finished - started)
}
