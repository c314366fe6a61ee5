//! Nodes started in this process on 127.0.0.1, and an HTTP load generator.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hearth_node::mesh::{MeshConfig, Protocol, pairing};
use hearth_node::{Node, NodeConfig, NodeHandle};

/// Starts a node on `home`, alone or on the mesh (TCP on 127.0.0.1, no mDNS).
pub async fn start(
    home: &Path,
    mesh: bool,
    peers: Vec<hearth_node::Multiaddr>,
) -> anyhow::Result<NodeHandle> {
    let listen = match mesh {
        true => Some(vec!["/ip4/127.0.0.1/tcp/0".parse()?]),
        false => None,
    };
    start_listening(home, listen, peers).await
}

/// Starts a node on `home`, on the mesh at `listen` if given, else alone.
pub async fn start_listening(
    home: &Path,
    listen: Option<Vec<hearth_node::Multiaddr>>,
    peers: Vec<hearth_node::Multiaddr>,
) -> anyhow::Result<NodeHandle> {
    let mut config = NodeConfig::new(home);
    config.api_addr = "127.0.0.1:0".parse()?;
    config.mesh = listen.map(|listen| MeshConfig {
        listen,
        peers,
        mdns: false,
        relay_server: false,
    });
    Ok(Node::start(config).await?)
}

/// Stops `node` (kept at `home`) and starts it again where it listened, so that the
/// addresses its devices recorded stay true, dialling `peers`.
pub async fn restart(
    node: NodeHandle,
    home: &Path,
    peers: Vec<hearth_node::Multiaddr>,
) -> anyhow::Result<NodeHandle> {
    let listen = (node.vault().mesh().context("the node runs the mesh")?)
        .handle
        .listen_addrs()
        .await?;
    node.shutdown().await?;
    start_listening(home, Some(listen), peers).await
}

/// Pairs a new device with `a` and starts it, dialling `a`.
pub async fn join(a: &NodeHandle, home: &Path) -> anyhow::Result<NodeHandle> {
    let mesh = a.vault().mesh().context("A runs the mesh")?;
    let (code, _) = mesh.pairing.invite(Duration::from_secs(60)).await?;
    let b_home = hearth_node::home::Home::new(home);
    pairing::join(&b_home, &code, None, "bench-b").await?;
    start(b_home.root(), true, addrs(a).await?).await
}

/// Where `a` listens, each address with its PeerId: what a device dials.
pub async fn addrs(a: &NodeHandle) -> anyhow::Result<Vec<hearth_node::Multiaddr>> {
    let mesh = a.vault().mesh().context("A runs the mesh")?;
    let peer = a.peer_id();
    Ok(mesh
        .handle
        .listen_addrs()
        .await?
        .into_iter()
        .map(|x| x.with(Protocol::P2p(peer)))
        .collect())
}

pub fn owner_token(node: &NodeHandle) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(node.home().join("owner.token"))?
        .trim()
        .to_owned())
}

/// `POST /v1/blobs` of `body` on `node`, as the owner; the stored blob's id.
pub async fn upload_blob(
    http: &reqwest::Client,
    node: &NodeHandle,
    body: reqwest::Body,
) -> anyhow::Result<hearth_protocol::BlobId> {
    let answer: serde_json::Value = http
        .post(format!("http://{}/v1/blobs", node.api_addr()))
        .bearer_auth(owner_token(node)?)
        .body(body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(hearth_protocol::BlobId::parse(
        answer["id"].as_str().context("the blob's id")?,
    )?)
}

pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()?)
}

/// What a load run measured.
pub struct Load {
    pub per_second: f64,
    /// Sorted.
    pub latencies: Vec<Duration>,
}

/// Runs `connections` clients in a loop for `duration`, each sending the request
/// `make(i)` builds; every answer must be a success.
pub async fn http_load<F>(connections: usize, duration: Duration, make: F) -> anyhow::Result<Load>
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker;
            while Instant::now() < deadline {
                let t = Instant::now();
                let answer = make(i).send().await?;
                let status = answer.status();
                let body = answer.bytes().await?;
                anyhow::ensure!(
                    status.is_success(),
                    "{status}: {}",
                    String::from_utf8_lossy(&body)
                );
                latencies.push(t.elapsed());
                i += connections;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Load {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies,
    })
}

/// Waits until `check` holds, polling every 200 µs; an error after `limit`.
pub async fn until(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !check() {
        anyhow::ensure!(start.elapsed() < limit, "{what}: not done after {limit:?}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(start.elapsed())
}
