//! What the mesh tests share: a node listening on loopback, and a bare libp2p peer
//! that talks to it as any stranger could.

use std::time::Duration;

use futures::StreamExt;
use hearth_node::mesh::MeshConfig;
use hearth_node::{Node, NodeConfig, NodeHandle};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};

/// A node in `home` with its API and mesh on 127.0.0.1, port 0.
pub async fn start(home: &std::path::Path) -> NodeHandle {
    let mut config = NodeConfig::new(home);
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    config.mesh = Some(MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        peers: vec![],
        mdns: false,
        relay_server: false,
    });
    Node::start(config).await.unwrap()
}

/// The addresses `node`'s mesh listens on.
pub async fn listen_addrs(node: &NodeHandle) -> Vec<Multiaddr> {
    node.vault()
        .mesh()
        .unwrap()
        .handle
        .listen_addrs()
        .await
        .unwrap()
}

/// A bare libp2p peer with `identity`, connected to `target`, that can open any
/// stream to it: its stream control, the target's PeerId, and the task driving it.
pub async fn raw_peer(
    identity: Keypair,
    target: &NodeHandle,
) -> (libp2p_stream::Control, PeerId, tokio::task::JoinHandle<()>) {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let control = swarm.behaviour().new_control();
    let addrs = listen_addrs(target).await;
    let peer = target.peer_id();
    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
        .addresses(addrs)
        .build();
    swarm.dial(opts).unwrap();
    // Connected before any stream is asked for: one asked for while this dial is in
    // flight races libp2p-stream's own dial (which has no address) and can wait for
    // ever.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match swarm.select_next_some().await {
                libp2p::swarm::SwarmEvent::ConnectionEstablished { peer_id, .. }
                    if peer_id == peer =>
                {
                    return;
                }
                libp2p::swarm::SwarmEvent::OutgoingConnectionError { error, .. } => {
                    panic!("cannot connect to the node: {error}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("connected to the node within 10 s");
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (control, peer, task)
}
