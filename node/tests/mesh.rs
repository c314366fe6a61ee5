//! Several in-process nodes on 127.0.0.1: pairing, convergence, partitions, and that
//! non-members and removed devices get nothing.

use std::path::Path;
use std::time::Duration;

use hearth_node::devices;
use hearth_node::mesh::{MeshConfig, pairing};
use hearth_node::{Node, NodeConfig, NodeHandle};
use hearth_protocol::{CollectionName, RecordId};
use libp2p::Multiaddr;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

fn mesh_config(peers: Vec<Multiaddr>) -> MeshConfig {
    MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        peers,
        mdns: false,
        relay_server: false,
    }
}

async fn start(home: &Path, peers: Vec<Multiaddr>) -> NodeHandle {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = NodeConfig::new(home);
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    config.mesh = Some(mesh_config(peers));
    Node::start(config).await.expect("node starts")
}

async fn addrs(node: &NodeHandle) -> Vec<Multiaddr> {
    let mesh = node.vault().mesh().unwrap();
    let peer = node.peer_id();
    mesh.handle
        .listen_addrs()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(peer)))
        .collect()
}

/// Pairs a new HOME with `inviter` and starts it, dialling the inviter.
async fn join(inviter: &NodeHandle, home: &Path) -> NodeHandle {
    pair(inviter, home).await;
    start(home, addrs(inviter).await).await
}

/// Makes `home` a device of `inviter`'s vault (not started).
async fn pair(inviter: &NodeHandle, home: &Path) {
    let (code, _) = inviter
        .vault()
        .mesh()
        .unwrap()
        .pairing
        .invite(Duration::from_secs(60))
        .await
        .unwrap();
    pairing::join(
        &hearth_node::home::Home::new(home),
        &code,
        None,
        "test device",
    )
    .await
    .expect("join");
}

fn coll(name: &str) -> CollectionName {
    CollectionName::parse(name).unwrap()
}

async fn put(node: &NodeHandle, collection: &str, id: &str, value: Value) {
    let v = node.vault();
    v.collections()
        .put(
            &coll(collection),
            &RecordId::parse(id).unwrap(),
            value.as_object().unwrap(),
        )
        .unwrap();
    v.store().commit().await.unwrap();
}

async fn patch(node: &NodeHandle, collection: &str, id: &str, value: Value) {
    let v = node.vault();
    v.collections()
        .patch(
            &coll(collection),
            &RecordId::parse(id).unwrap(),
            value.as_object().unwrap(),
        )
        .unwrap();
    v.store().commit().await.unwrap();
}

/// A text edit inserting `insert` at character `position`.
fn edit(position: usize, insert: &str) -> hearth_node::records::TextEdit {
    hearth_node::records::TextEdit {
        position,
        delete: 0,
        insert: insert.into(),
    }
}

fn get(node: &NodeHandle, collection: &str, id: &str) -> Option<Value> {
    node.vault()
        .collections()
        .get(&coll(collection), &RecordId::parse(id).unwrap())
        .unwrap()
}

/// Waits until `check` holds, or fails after the deadline with `what`.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_converge_and_heal_after_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), vec![]).await;
    let b = join(&a, &dir.path().join("b")).await;
    let c = join(&a, &dir.path().join("c")).await;
    assert_eq!(a.vault_id(), b.vault_id());
    assert_eq!(a.vault_id(), c.vault_id());

    put(
        &a,
        "contacts",
        "ada",
        json!({"name": "Ada", "city": "London"}),
    )
    .await;
    put(&b, "notes", "n1", json!({"text": "from b"})).await;
    put(&c, "calendar", "e1", json!({"at": "09:00"})).await;
    for node in [&a, &b, &c] {
        eventually("every record on every device", || {
            get(node, "contacts", "ada").is_some()
                && get(node, "notes", "n1").is_some()
                && get(node, "calendar", "e1").is_some()
        })
        .await;
    }
    // All three know each other.
    for node in [&a, &b, &c] {
        eventually("device lists converge", || {
            devices::members(node.vault().collections()).len() == 3
        })
        .await;
    }

    // Concurrent edits to different fields of one record both survive.
    patch(&b, "contacts", "ada", json!({"email": "ada@example.org"})).await;
    patch(&c, "contacts", "ada", json!({"city": "Paris"})).await;
    let want = json!({"id": "ada", "name": "Ada", "city": "Paris", "email": "ada@example.org"});
    for node in [&a, &b, &c] {
        eventually("concurrent field edits merge", || {
            get(node, "contacts", "ada") == Some(want.clone())
        })
        .await;
    }

    // Partition: C stops; A and B go on; C comes back and catches up, and its own
    // offline edit reaches the others.
    let c_home = c.home().to_path_buf();
    c.shutdown().await.unwrap();
    put(&a, "notes", "while-c-was-away", json!({"text": "missed"})).await;
    put(
        &b,
        "notes",
        "n1",
        json!({"text": "changed while c was away"}),
    )
    .await;
    let c = start(&c_home, addrs(&a).await).await;
    put(&c, "notes", "c-back", json!({"text": "hello again"})).await;
    for node in [&a, &b, &c] {
        eventually("partition heals", || {
            get(node, "notes", "while-c-was-away").is_some()
                && get(node, "notes", "c-back").is_some()
                && get(node, "notes", "n1")
                    == Some(json!({"id": "n1", "text": "changed while c was away"}))
        })
        .await;
    }
    for node in [a, b, c] {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_the_vault_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), vec![]).await;
    put(
        &a,
        "contacts",
        "secret",
        json!({"name": "Not for strangers"}),
    )
    .await;
    // A different vault dials A: the connection may open, but no sync session does.
    let stranger = start(&dir.path().join("stranger"), addrs(&a).await).await;
    put(
        &stranger,
        "contacts",
        "theirs",
        json!({"name": "stranger data"}),
    )
    .await;
    eventually("the stranger connects", || {
        futures::executor::block_on(stranger.vault().mesh().unwrap().handle.connected_peers())
            .unwrap()
            .contains(&a.peer_id())
    })
    .await;
    // Give a would-be sync ample time, with a positive control: a member in the same
    // time does receive A's data.
    let b = join(&a, &dir.path().join("b")).await;
    eventually("a member syncs meanwhile", || {
        get(&b, "contacts", "secret").is_some()
    })
    .await;
    assert_eq!(get(&stranger, "contacts", "secret"), None);
    assert_eq!(get(&a, "contacts", "theirs"), None);
    assert!(!devices::is_member(
        a.vault().collections(),
        &stranger.peer_id()
    ));
    for node in [a, b, stranger] {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_receives_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), vec![]).await;
    let b = join(&a, &dir.path().join("b")).await;
    let c = join(&a, &dir.path().join("c")).await;
    put(&a, "notes", "before", json!({"text": "shared"})).await;
    for node in [&b, &c] {
        eventually("first sync", || get(node, "notes", "before").is_some()).await;
    }
    assert!(devices::remove(a.vault().collections(), &c.peer_id()).unwrap());
    a.vault().store().commit().await.unwrap();
    eventually("the removal reaches B", || {
        !devices::is_member(b.vault().collections(), &c.peer_id())
    })
    .await;

    put(&a, "notes", "after", json!({"text": "not for c"})).await;
    put(&b, "notes", "after-b", json!({"text": "not for c either"})).await;
    eventually("members still sync", || {
        get(&b, "notes", "after").is_some() && get(&a, "notes", "after-b").is_some()
    })
    .await;
    // C is still running and connected or redialling; it must not get either record.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&c, "notes", "after"), None);
    assert_eq!(get(&c, "notes", "after-b"), None);
    // And what C writes now does not reach the vault.
    put(&c, "notes", "from-removed", json!({"text": "ignored"})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get(&a, "notes", "from-removed"), None);
    for node in [a, b, c] {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_works_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), vec![]).await;
    let (code, _) = a
        .vault()
        .mesh()
        .unwrap()
        .pairing
        .invite(Duration::from_secs(60))
        .await
        .unwrap();
    let home = |n: &str| hearth_node::home::Home::new(dir.path().join(n));
    pairing::join(&home("b"), &code, None, "b").await.unwrap();
    let err = pairing::join(&home("c"), &code, None, "c")
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("wrong, expired or already used"),
        "{err}"
    );
    assert!(!home("c").has_vault());
    let err = pairing::join(&home("b"), &code, None, "b")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("already holds a vault"), "{err}");
    let err = pairing::join(&home("d"), "hearth1garbage", None, "d")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("damaged"), "{err}");
    assert_eq!(devices::members(a.vault().collections()).len(), 2);
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_edited_on_two_devices_apart_keeps_a_winner_and_shows_the_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), vec![]).await;
    let b = join(&a, &dir.path().join("b")).await;
    put(
        &a,
        "contacts",
        "ada",
        json!({"name": "Ada", "city": "London"}),
    )
    .await;
    eventually("first sync", || get(&b, "contacts", "ada").is_some()).await;

    // B goes offline (no mesh) and edits the city; A edits it too.
    let b_home = b.home().to_path_buf();
    b.shutdown().await.unwrap();
    let mut offline = NodeConfig::new(&b_home);
    offline.api_addr = "127.0.0.1:0".parse().unwrap();
    offline.mesh = None;
    let b = Node::start(offline).await.unwrap();
    patch(&b, "contacts", "ada", json!({"city": "Rome"})).await;
    b.shutdown().await.unwrap();
    patch(&a, "contacts", "ada", json!({"city": "Paris"})).await;

    let b = start(&b_home, addrs(&a).await).await;
    let id = RecordId::parse("ada").unwrap();
    for node in [&a, &b] {
        eventually("the edits meet", || {
            node.vault()
                .collections()
                .conflicts(&coll("contacts"), &id)
                .unwrap()
                .unwrap()
                .fields
                .get("city")
                .is_some()
        })
        .await;
    }
    let shown = |n: &NodeHandle| get(n, "contacts", "ada").unwrap()["city"].clone();
    assert_eq!(shown(&a), shown(&b), "both devices show the same winner");
    let conflict = a
        .vault()
        .collections()
        .conflicts(&coll("contacts"), &id)
        .unwrap()
        .unwrap();
    let values = conflict.fields["city"].as_array().unwrap().clone();
    assert_eq!(values[0], shown(&a));
    assert!(values.contains(&json!("Paris")) && values.contains(&json!("Rome")));
    for node in [a, b] {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_edited_on_two_devices_apart_merges_character_by_character() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), vec![]).await;
    let b = join(&a, &dir.path().join("b")).await;
    put(&a, "notes", "n1", json!({"body": "milk"})).await;
    eventually("first sync", || get(&b, "notes", "n1").is_some()).await;
    let (notes, id) = (coll("notes"), RecordId::parse("n1").unwrap());
    a.vault()
        .collections()
        .edit_text(&notes, &id, "body", &[edit(4, " eggs")])
        .unwrap();
    a.vault().store().commit().await.unwrap();
    eventually("text sync", || {
        get(&b, "notes", "n1").is_some_and(|r| r["body"] == "milk eggs")
    })
    .await;

    // B goes offline and adds at the start; A adds at the end.
    let b_home = b.home().to_path_buf();
    b.shutdown().await.unwrap();
    let mut offline = NodeConfig::new(&b_home);
    offline.api_addr = "127.0.0.1:0".parse().unwrap();
    offline.mesh = None;
    let b = Node::start(offline).await.unwrap();
    b.vault()
        .collections()
        .edit_text(&notes, &id, "body", &[edit(0, "bread ")])
        .unwrap();
    b.vault().store().commit().await.unwrap();
    b.shutdown().await.unwrap();
    a.vault()
        .collections()
        .edit_text(&notes, &id, "body", &[edit(9, " tea")])
        .unwrap();
    a.vault().store().commit().await.unwrap();

    let b = start(&b_home, addrs(&a).await).await;
    for node in [&a, &b] {
        eventually("both edits on both devices", || {
            get(node, "notes", "n1").is_some_and(|r| r["body"] == "bread milk eggs tea")
        })
        .await;
    }
    for node in [a, b] {
        node.shutdown().await.unwrap();
    }
}

/// A note longer than `records::LONG` (kept out of the record index, read from its
/// document) syncs whole, reads whole on the device that received it, and edits to
/// it from either side reach the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_note_syncs_and_reads_whole_on_the_other_device() {
    use hearth_node::records::LONG;
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), vec![]).await;
    let b = join(&a, &dir.path().join("b")).await;
    let (notes, id) = (coll("notes"), RecordId::parse("long").unwrap());
    put(&a, "notes", "long", json!({"title": "long"})).await;
    let line = "The quick brown fox jumps over the lazy dog. ";
    let mut body = String::new();
    while body.chars().count() <= LONG {
        a.vault()
            .collections()
            .edit_text(&notes, &id, "body", &[edit(body.chars().count(), line)])
            .unwrap();
        body.push_str(line);
    }
    a.vault().store().commit().await.unwrap();
    eventually("the long note on B", || {
        get(&b, "notes", "long").is_some_and(|r| r["body"] == body.as_str())
    })
    .await;
    // B edits it; A sees the edit.
    b.vault()
        .collections()
        .edit_text(&notes, &id, "body", &[edit(0, "Draft. ")])
        .unwrap();
    b.vault().store().commit().await.unwrap();
    body.insert_str(0, "Draft. ");
    eventually("B's edit on A", || {
        get(&a, "notes", "long").is_some_and(|r| r["body"] == body.as_str())
    })
    .await;
    let all = b.vault().collections().records(&notes).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["title"], "long");
    assert_eq!(all[0]["body"], body.as_str());
    for node in [a, b] {
        node.shutdown().await.unwrap();
    }
}

/// A device that crashed after another device received its last change (but before
/// that change reached its own disk) goes on writing, and both keep syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_lost_a_change_the_other_has_keeps_syncing() {
    let dir = tempfile::tempdir().unwrap();
    let a_home = dir.path().join("a");
    let a = start(&a_home, vec![]).await;
    let b = join(&a, &dir.path().join("b")).await;
    put(&a, "notes", "n1", json!({"v": 1})).await;
    eventually("first sync", || get(&b, "notes", "n1").is_some()).await;

    // A's disk as it is now; then a change that B receives; then A "loses" it by
    // going back to the copy (what a crash before the fsync does).
    a.shutdown().await.unwrap();
    let saved = dir.path().join("a-saved");
    copy_dir(&a_home, &saved);
    let a = start(&a_home, addrs(&b).await).await;
    put(&a, "notes", "n2", json!({"v": "lost on A"})).await;
    eventually("B has A's change", || get(&b, "notes", "n2").is_some()).await;
    a.shutdown().await.unwrap();
    std::fs::remove_dir_all(&a_home).unwrap();
    copy_dir(&saved, &a_home);

    // A writes again before hearing from B, then they meet.
    let mut offline = NodeConfig::new(&a_home);
    offline.api_addr = "127.0.0.1:0".parse().unwrap();
    offline.mesh = None;
    let a = Node::start(offline).await.unwrap();
    put(&a, "notes", "n3", json!({"v": "after the crash"})).await;
    a.shutdown().await.unwrap();
    let a = start(&a_home, addrs(&b).await).await;
    put(&b, "notes", "n4", json!({"v": "from B"})).await;
    for node in [&a, &b] {
        eventually("all four records on both devices", || {
            ["n1", "n2", "n3", "n4"]
                .iter()
                .all(|id| get(node, "notes", id).is_some())
        })
        .await;
    }
    for node in [a, b] {
        node.shutdown().await.unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A removed device still holds the vault's signing key. It must not be able to mint a
/// token that any device accepts: a token counts only if it descends from the one
/// issued for its grant, so a fresh one for an existing grant is refused everywhere —
/// on the local API and over the mesh — and the audit log shows a refusal, not an
/// access by the innocent service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_cannot_mint_a_token() {
    use biscuit_auth::builder::Algorithm;
    use biscuit_auth::{Biscuit, KeyPair, PrivateKey};
    use hearth_node::access::{self, Credentials, NewGrant};

    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), vec![]).await;
    let b = join(&a, &dir.path().join("b")).await;
    put(
        &a,
        "contacts",
        "ada",
        json!({"name": "Ada", "email": "ada@x"}),
    )
    .await;
    let scope = hearth_protocol::scope::Scope::parse(Some("contacts"), None, &[]).unwrap();
    let (grant, token) = access::create_grant(
        a.vault().collections(),
        a.vault().keys(),
        NewGrant::new("crm", scope),
    )
    .unwrap();
    let token = token.token;
    a.vault().store().commit().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while b
        .vault()
        .door()
        .admit(&Credentials::local(&token))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: the grant reaches B"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert!(devices::remove(a.vault().collections(), &b.peer_id()).unwrap());
    a.vault().store().commit().await.unwrap();

    // What B holds: the vault's signing key, and the grant record it synced.
    let secrets = b.vault().keys().shared_secrets();
    let private = PrivateKey::from_bytes(&secrets.signing_key[..], Algorithm::Ed25519).unwrap();
    let forged = Biscuit::builder()
        .fact(format!("grant({:?})", grant.id).as_str())
        .unwrap()
        .fact(format!("vault({:?})", b.vault_id()).as_str())
        .unwrap()
        .build(&KeyPair::from(&private))
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(matches!(
        a.vault().door().admit(&Credentials::local(&forged)).await,
        Err(access::AccessError::InvalidToken(_))
    ));
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    assert!(matches!(
        a.vault()
            .door()
            .admit(&Credentials::remote(&forged, stranger))
            .await,
        Err(access::AccessError::InvalidToken(_))
    ));
    let http = reqwest::Client::new();
    let reply = http
        .get(format!("http://{}/v1/view/contacts", a.api_addr()))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 401);
    // The service's own token still works, and the log blames no one for the forgery.
    let reply = http
        .get(format!("http://{}/v1/view/contacts", a.api_addr()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    let entries = access::audit_entries(a.vault().collections(), Some(&grant.id)).unwrap();
    let reads = entries.iter().filter(|e| e.operation == "read").count();
    assert_eq!(reads, 1, "only the genuine read is an access");
    assert!(
        entries
            .iter()
            .any(|e| e.operation == "refused" && e.reason.as_deref() == Some("invalid_token")),
        "the forgery is on record as refused"
    );
    for node in [a, b] {
        node.shutdown().await.unwrap();
    }
}

/// A blob another device listed but this one does not hold yet answers `503` saying it
/// is still arriving (and how much is here), not `404`; `GET /v1/status` lists it; a
/// blob nobody listed is still `404`.
#[tokio::test]
async fn a_blob_still_arriving_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path().join("a"));
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    config.mesh = None;
    let node = Node::start(config).await.unwrap();
    let vault = node.vault().clone();
    let away = hearth_protocol::BlobId([7; 32]);
    hearth_node::blobs::announce(vault.collections(), &away, 3 << 20, &Default::default()).unwrap();
    vault.store().commit().await.unwrap();
    let owner = std::fs::read_to_string(node.home().join("owner.token")).unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", node.api_addr());
    let answer = http
        .get(format!("{base}/v1/blobs/{away}"))
        .bearer_auth(owner.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    let body: Value = answer.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("still arriving") && message.contains("0 of 3145728"),
        "{message}"
    );
    let status: Value = http
        .get(format!("{base}/v1/status"))
        .bearer_auth(owner.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["arriving"],
        json!([{"id": away.to_string(), "size": 3 << 20, "received": 0}])
    );
    let nobody = hearth_protocol::BlobId([8; 32]);
    let answer = http
        .get(format!("{base}/v1/blobs/{nobody}"))
        .bearer_auth(owner.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    node.shutdown().await.unwrap();
}

/// A free TCP port on 127.0.0.1, so a device restarts at the address the other has
/// recorded for it (a new address would be a change of `_devices` to sync).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_at(home: &Path, peers: Vec<Multiaddr>, port: u16) -> NodeHandle {
    let mut config = NodeConfig::new(home);
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    let mut mesh = mesh_config(peers);
    mesh.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    config.mesh = Some(mesh);
    Node::start(config).await.expect("node starts")
}

fn stats(node: &NodeHandle, peer: &NodeHandle) -> Option<hearth_node::mesh::sync::SessionStats> {
    node.vault()
        .mesh()
        .unwrap()
        .sync
        .session_stats(&peer.peer_id())
}

/// Two devices that hold the same changes meet again: each sends its Hello and its
/// Summary (two frames, under 1 KiB), finds the other's fingerprint equal, and syncs
/// no collection. A record written on one while the other was away: only its collection
/// is synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_in_step_compare_fingerprints_and_sync_only_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), vec![]).await;
    let b_home = dir.path().join("b");
    pair(&a, &b_home).await;
    let port = free_port();
    let b = start_at(&b_home, addrs(&a).await, port).await;
    for collection in ["contacts", "notes", "calendar"] {
        for i in 0..20 {
            put(&a, collection, &format!("r{i}"), json!({ "n": i })).await;
        }
    }
    eventually("B has everything", || {
        ["contacts", "notes", "calendar"]
            .iter()
            .all(|c| get(&b, c, "r19").is_some())
    })
    .await;
    // Everything written on both sides has settled (A records B's address too).
    tokio::time::sleep(Duration::from_secs(1)).await;

    b.shutdown().await.unwrap();
    let b = start_at(&b_home, addrs(&a).await, port).await;
    eventually("the devices find each other in step", || {
        stats(&b, &a).is_some_and(|s| s.in_step) && stats(&a, &b).is_some_and(|s| s.in_step)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (node, peer) in [(&a, &b), (&b, &a)] {
        let s = stats(node, peer).unwrap();
        assert_eq!(s.collections_synced, 0, "no document read: {s:?}");
        assert_eq!(s.frames_sent, 2, "Hello and Summary: {s:?}");
        // Hello (21 bytes) and each collection's name and digest: a few hundred bytes
        // whatever the collections hold.
        assert!(s.bytes_sent < 1024, "{s:?}");
    }

    b.shutdown().await.unwrap();
    put(&a, "notes", "while-away", json!({ "n": 99 })).await;
    let b = start_at(&b_home, addrs(&a).await, port).await;
    eventually("B has the record written while it was away", || {
        get(&b, "notes", "while-away").is_some()
    })
    .await;
    // Once the session is quiet, the devices compare fingerprints again and both
    // know they are in step (what `hearth status --until-synced` waits for).
    eventually("both devices in step after the sync", || {
        stats(&a, &b).is_some_and(|s| s.in_step) && stats(&b, &a).is_some_and(|s| s.in_step)
    })
    .await;
    for (node, peer) in [(&a, &b), (&b, &a)] {
        let s = stats(node, peer).unwrap();
        assert_eq!(s.collections_synced, 1, "only notes: {s:?}");
    }
    // A change on one side is synced, and the devices find themselves in step again.
    put(&b, "notes", "after", json!({ "n": 100 })).await;
    eventually("in step again", || {
        get(&a, "notes", "after").is_some()
            && stats(&a, &b).is_some_and(|s| s.in_step)
            && stats(&b, &a).is_some_and(|s| s.in_step)
    })
    .await;
    for node in [a, b] {
        node.shutdown().await.unwrap();
    }
}

/// A device that still speaks sync version 1, 2 or 3 is told this one's version and nothing
/// else: no collection's changes move, and the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_speaking_an_older_sync_version_is_told_to_upgrade_and_gets_nothing() {
    use futures::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), vec![]).await;
    let b = join(&a, &dir.path().join("b")).await;
    put(
        &a,
        "notes",
        "secret",
        json!({ "text": "not for old devices" }),
    )
    .await;
    eventually("B syncs with A", || get(&b, "notes", "secret").is_some()).await;

    // B, as an older Hearth would: the version 1, 2 or 3 protocol, its Hello, then it
    // listens.
    let legacy = hearth_protocol::sync::LEGACY_SYNC_PROTOCOLS;
    assert_eq!(legacy.len(), 3);
    for (protocol, version) in legacy.into_iter().zip([1, 2, 3]) {
        let mut stream = b
            .vault()
            .mesh()
            .unwrap()
            .handle
            .streams()
            .open_stream(a.peer_id(), libp2p::StreamProtocol::new(protocol))
            .await
            .expect("the old protocol is still answered");
        let hello = hearth_protocol::sync::SyncFrame::Hello {
            version,
            vault_id: b.vault().keys().vault_id,
        }
        .encode();
        stream
            .write_all(&(hello.len() as u32).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&hello).await.unwrap();
        stream.flush().await.unwrap();
        let mut everything = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut everything))
            .await
            .expect("the stream ends")
            .unwrap();
        let (len, body) = everything.split_at(4);
        assert_eq!(
            u32::from_be_bytes(len.try_into().unwrap()) as usize,
            body.len(),
            "one frame"
        );
        assert_eq!(
            hearth_protocol::sync::SyncFrame::decode(body).unwrap(),
            hearth_protocol::sync::SyncFrame::Hello {
                version: hearth_protocol::sync::SYNC_VERSION,
                vault_id: a.vault().keys().vault_id,
            }
        );
    }
    for node in [a, b] {
        node.shutdown().await.unwrap();
    }
}
