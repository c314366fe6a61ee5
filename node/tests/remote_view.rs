//! A remote service reads its view over `/hearth/view/1`; a `--to` grant works only from
//! the PeerId it names.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use hearth_node::NodeHandle;
use hearth_node::access::{self, NewGrant};
use hearth_protocol::scope::Scope;
use hearth_protocol::view::{VIEW_PROTOCOL, ViewRequest, ViewResponse};
use hearth_protocol::{CollectionName, RecordId};
use libp2p::StreamProtocol;
use libp2p::identity::Keypair;
use serde_json::json;

mod common;
use common::{raw_peer, start};

/// Sends one view request from a peer with `identity`.
async fn ask(identity: Keypair, node: &NodeHandle, request: ViewRequest) -> ViewResponse {
    let (mut control, _, driver) = raw_peer(identity, node).await;
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
    v.collections()
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
    let (_, token) = access::create_grant(v.collections(), v.keys(), new).unwrap();
    let token = token.token;
    v.store().commit().await.unwrap();

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
    v.collections()
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
    let (_, token) = access::create_grant(v.collections(), v.keys(), new).unwrap();
    let token = token.token;
    v.store().commit().await.unwrap();
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
