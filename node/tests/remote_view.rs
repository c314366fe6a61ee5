//! A remote service reads its view over `/hearth/view/1`; a `--to` grant works only from
//! the PeerId it names.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use hearth_node::access::{self, NewGrant};
use hearth_node::mesh::MeshConfig;
use hearth_node::{Node, NodeConfig, NodeHandle};
use hearth_protocol::scope::Scope;
use hearth_protocol::view::{VIEW_PROTOCOL, ViewRequest, ViewResponse};
use hearth_protocol::{CollectionName, RecordId};
use libp2p::identity::Keypair;
use libp2p::{PeerId, StreamProtocol, noise, tcp, yamux};
use serde_json::json;

/// Drives `swarm` until it is connected to `peer`. A stream opened before then races
/// libp2p-stream's own dial (which has no address) and could wait for ever.
async fn connected(swarm: &mut libp2p::Swarm<libp2p_stream::Behaviour>, peer: PeerId) {
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
}

async fn start(home: &std::path::Path) -> NodeHandle {
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

/// Sends one view request from a peer with `identity`.
async fn ask(identity: Keypair, node: &NodeHandle, request: ViewRequest) -> ViewResponse {
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
        .build();
    let mut control = swarm.behaviour().new_control();
    let addrs = node
        .vault()
        .mesh()
        .unwrap()
        .handle
        .listen_addrs()
        .await
        .unwrap();
    swarm
        .dial(
            libp2p::swarm::dial_opts::DialOpts::peer_id(node.peer_id())
                .addresses(addrs)
                .build(),
        )
        .unwrap();
    connected(&mut swarm, node.peer_id()).await;
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        control.open_stream(node.peer_id(), StreamProtocol::new(VIEW_PROTOCOL)),
    )
    .await
    .unwrap()
    .unwrap();
    let body = serde_json::to_vec(&request).unwrap();
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await.unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut answer).await.unwrap();
    driver.abort();
    serde_json::from_slice(&answer).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_grant_works_only_from_its_peer() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("v")).await;
    let v = node.vault();
    let contacts = CollectionName::parse("contacts").unwrap();
    v.collections
        .put(
            &contacts,
            &RecordId::parse("ada").unwrap(),
            json!({"name": "Ada", "email": "a@x"}).as_object().unwrap(),
        )
        .unwrap();
    let service = Keypair::generate_ed25519();
    let thief = Keypair::generate_ed25519();
    let scope = Scope::parse(Some("contacts.name"), None, &[]).unwrap();
    let new = NewGrant {
        to: Some(service.public().to_peer_id().to_string()),
        ..NewGrant::new("remote-crm", scope)
    };
    let (_, token) = access::create_grant(&v.collections, &v.keys, new).unwrap();
    let token = token.token;
    v.store.commit().await.unwrap();

    let request = ViewRequest {
        method: "GET".into(),
        path: "/v1/view/contacts".into(),
        token: token.clone(),
        body: None,
    };
    let answer = ask(service, &node, request.clone()).await;
    assert_eq!(
        (answer.status, answer.body),
        (200, json!([{"id": "ada", "name": "Ada"}]))
    );
    let stolen = ask(thief, &node, request).await;
    assert_eq!(stolen.status, 403);
    assert_eq!(stolen.body["error"]["code"], "out_of_scope");

    // On the local HTTP API the same token is refused too.
    let reply = reqwest::Client::new()
        .get(format!("http://{}/v1/view/contacts", node.api_addr()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 403);

    // Only view routes are served over the mesh.
    let owner_route = ViewRequest {
        method: "GET".into(),
        path: "/v1/grants".into(),
        token,
        body: None,
    };
    assert_eq!(
        ask(Keypair::generate_ed25519(), &node, owner_route)
            .await
            .status,
        400
    );
    node.shutdown().await.unwrap();
}

/// A stolen bound token cannot spend the real service's budget: the peer is checked
/// before the rate is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thief_cannot_drain_a_bound_grants_rate() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("v")).await;
    let v = node.vault();
    v.collections
        .put(
            &CollectionName::parse("contacts").unwrap(),
            &RecordId::parse("ada").unwrap(),
            json!({"name": "Ada"}).as_object().unwrap(),
        )
        .unwrap();
    let service = Keypair::generate_ed25519();
    let scope = Scope::parse(Some("contacts"), None, &[]).unwrap();
    let new = NewGrant {
        to: Some(service.public().to_peer_id().to_string()),
        rate_per_minute: Some(2),
        ..NewGrant::new("remote-crm", scope)
    };
    let (_, token) = access::create_grant(&v.collections, &v.keys, new).unwrap();
    let token = token.token;
    v.store.commit().await.unwrap();
    let request = ViewRequest {
        method: "GET".into(),
        path: "/v1/view/contacts".into(),
        token,
        body: None,
    };
    for _ in 0..4 {
        let stolen = ask(Keypair::generate_ed25519(), &node, request.clone()).await;
        assert_eq!(stolen.status, 403, "{:?}", stolen.body);
    }
    for _ in 0..2 {
        let answer = ask(service.clone(), &node, request.clone()).await;
        assert_eq!(answer.status, 200, "the service's own budget is intact");
    }
    let over = ask(service, &node, request).await;
    assert_eq!(over.status, 429);
    node.shutdown().await.unwrap();
}
