//! Sync timings between in-process nodes on 127.0.0.1:
//! how long a change on one device takes to show on another, and how long a new device
//! takes to receive a vault of N records.
//!
//!     cargo run --release -p hearth-tests --example sync_timing [-- RECORDS]

use std::time::{Duration, Instant};

use hearth_node::mesh::{MeshConfig, pairing};
use hearth_node::{Node, NodeConfig, NodeHandle};
use hearth_protocol::{CollectionName, RecordId};
use serde_json::json;

async fn start(
    home: &std::path::Path,
    peers: Vec<hearth_node::Multiaddr>,
) -> anyhow::Result<NodeHandle> {
    let mut config = NodeConfig::new(home);
    config.api_addr = "127.0.0.1:0".parse()?;
    config.mesh = Some(MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        peers,
        mdns: false,
        relay_server: false,
    });
    Ok(Node::start(config).await?)
}

fn count(node: &NodeHandle, coll: &CollectionName) -> usize {
    node.vault()
        .collections
        .records(coll)
        .map(|r| r.len())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let records: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let a = start(&dir.path().join("a"), vec![]).await?;
    let coll = CollectionName::parse("contacts")?;
    let started = Instant::now();
    for i in 0..records {
        let record =
            json!({"name": format!("Person {i}"), "email": format!("p{i}@example.org"), "n": i});
        a.vault().collections.put(
            &coll,
            &RecordId::parse(&format!("r{i}"))?,
            record.as_object().unwrap(),
        )?;
    }
    a.vault().store.commit().await?;
    println!("wrote {records} records on A in {:.2?}", started.elapsed());

    let (code, _) = a
        .vault()
        .mesh()
        .unwrap()
        .pairing
        .invite(Duration::from_secs(60))
        .await?;
    let b_home = hearth_node::home::Home::new(dir.path().join("b"));
    pairing::join(&b_home, &code, None, "b").await?;
    let peer = a.peer_id();
    let addrs = a
        .vault()
        .mesh()
        .unwrap()
        .handle
        .listen_addrs()
        .await?
        .into_iter()
        .map(|x| x.with(libp2p_p2p(peer)))
        .collect();
    let started = Instant::now();
    let b = start(b_home.root(), addrs).await?;
    while count(&b, &coll) < records {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "initial sync did not finish"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "new device B received {records} records in {:.2?} (start of B to last record)",
        started.elapsed()
    );

    let mut latencies = Vec::new();
    for i in 0..50 {
        let id = RecordId::parse(&format!("live{i}"))?;
        let t = Instant::now();
        a.vault()
            .collections
            .put(&coll, &id, json!({"i": i}).as_object().unwrap())?;
        a.vault().store.commit().await?;
        while b.vault().collections.get(&coll, &id)?.is_none() {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "change did not arrive"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "change on A visible on B: p50 {:.2?}, p90 {:.2?}, max {:.2?} (50 changes, {records} records in the collection)",
        latencies[25], latencies[45], latencies[49]
    );
    b.shutdown().await?;
    a.shutdown().await?;
    Ok(())
}

fn libp2p_p2p(peer: hearth_node::PeerId) -> hearth_node::mesh::Protocol<'static> {
    hearth_node::mesh::Protocol::P2p(peer)
}
