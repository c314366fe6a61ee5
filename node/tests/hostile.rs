//! Hostile peers: a stranger and a member that sends garbage. Each can close its own
//! streams, never harm the node or get data.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use hearth_node::NodeHandle;
use hearth_node::home::Home;
use hearth_node::mesh::pairing;
use hearth_protocol::blob::{BLOB_PROTOCOL, BlobRequest, BlobResponse};
use hearth_protocol::invite::PAIR_PROTOCOL;
use hearth_protocol::sync::{SYNC_PROTOCOL, SYNC_VERSION, SyncFrame};
use hearth_protocol::{CollectionName, RecordId};
use libp2p::identity::Keypair;
use libp2p::{PeerId, Stream, StreamProtocol};
use serde_json::json;

mod common;
use common::{listen_addrs, raw_peer, start};

async fn open(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    protocol: &'static str,
) -> Option<Stream> {
    tokio::time::timeout(
        Duration::from_secs(10),
        control.open_stream(peer, StreamProtocol::new(protocol)),
    )
    .await
    .expect("opening a stream does not hang")
    .ok()
}

/// Reads until the stream ends; returns what arrived (bounded by a timeout).
async fn drain(stream: &mut Stream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    out
}

/// A sync stream to `peer` that has sent a correct Hello.
async fn sync_stream(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    vault_id: [u8; 16],
) -> Stream {
    let mut stream = open(control, peer, SYNC_PROTOCOL).await.unwrap();
    let hello = SyncFrame::Hello {
        version: SYNC_VERSION,
        vault_id,
    };
    stream.write_all(&frame(&hello.encode())).await.unwrap();
    stream
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

async fn read_one_frame(stream: &mut Stream) -> Vec<u8> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut body).await.unwrap();
    body
}

async fn still_serves(node: &NodeHandle) {
    let v = node.vault();
    let coll = CollectionName::parse("contacts").unwrap();
    assert!(
        v.collections()
            .get(&coll, &RecordId::parse("ada").unwrap())
            .unwrap()
            .is_some()
    );
    v.collections()
        .put(
            &coll,
            &RecordId::parse("probe").unwrap(),
            json!({"ok": true}).as_object().unwrap(),
        )
        .unwrap();
    v.store().commit().await.unwrap();
    let reply = reqwest::Client::new()
        .get(format!("http://{}/v1/status", node.api_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 401, "the API still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_nothing_on_any_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let v = a.vault();
    v.collections()
        .put(
            &CollectionName::parse("contacts").unwrap(),
            &RecordId::parse("ada").unwrap(),
            json!({"name": "Ada"}).as_object().unwrap(),
        )
        .unwrap();
    v.store().commit().await.unwrap();
    let (mut control, peer, task) = raw_peer(Keypair::generate_ed25519(), &a).await;

    for protocol in [SYNC_PROTOCOL, BLOB_PROTOCOL] {
        if let Some(mut stream) = open(&mut control, peer, protocol).await {
            let hello = SyncFrame::Hello {
                version: SYNC_VERSION,
                vault_id: [0; 16],
            }
            .encode();
            let _ = stream.write_all(&frame(&hello)).await;
            let _ = stream
                .write_all(&frame(&BlobRequest::GetManifest([1; 32]).encode()))
                .await;
            assert!(
                drain(&mut stream).await.is_empty(),
                "{protocol} sent data to a stranger"
            );
        }
    }
    // Pairing with a made-up proof is refused and changes nothing.
    if let Some(mut stream) = open(&mut control, peer, PAIR_PROTOCOL).await {
        let request = hearth_protocol::invite::PairRequest {
            proof: [7; 32],
            device_name: "evil".into(),
        };
        let _ = stream.write_all(&frame(&request.encode())).await;
        let answer = drain(&mut stream).await;
        assert!(answer.len() > 4, "a refusal comes back");
        assert!(matches!(
            hearth_protocol::invite::PairResponse::decode(&answer[4..]),
            Ok(hearth_protocol::invite::PairResponse::Reject { .. })
        ));
    }
    assert_eq!(hearth_node::devices::members(v.collections()).len(), 1);
    still_serves(&a).await;
    task.abort();
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_garbage_only_closes_its_own_streams() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let v = a.vault();
    v.collections()
        .put(
            &CollectionName::parse("contacts").unwrap(),
            &RecordId::parse("ada").unwrap(),
            json!({"name": "Ada"}).as_object().unwrap(),
        )
        .unwrap();
    v.store().commit().await.unwrap();
    // A real member: joined with an invite; we hold its identity.
    let (code, _) = a
        .vault()
        .mesh()
        .unwrap()
        .pairing
        .invite(Duration::from_secs(60))
        .await
        .unwrap();
    let m_home = Home::new(dir.path().join("m"));
    pairing::join(&m_home, &code, None, "mallory")
        .await
        .unwrap();
    let identity = hearth_node::keys::open(&m_home, None)
        .unwrap()
        .device
        .clone();
    let vault_id = hearth_node::keys::open(&m_home, None).unwrap().vault_id;
    let (mut control, peer, task) = raw_peer(identity, &a).await;

    let attacks: Vec<Vec<u8>> = vec![
        b"definitely not a frame at all, just bytes".to_vec(),
        u32::MAX.to_be_bytes().to_vec(), // oversized length
        frame(&[9, 9, 9]),               // unknown frame type
        frame(
            &SyncFrame::Hello {
                version: 99,
                vault_id,
            }
            .encode(),
        ), // unknown version
        frame(
            &SyncFrame::Hello {
                version: SYNC_VERSION,
                vault_id: [1; 16],
            }
            .encode(),
        ), // other vault
    ];
    for attack in attacks {
        let mut stream = open(&mut control, peer, SYNC_PROTOCOL)
            .await
            .expect("a member may open a stream");
        let _ = stream.write_all(&attack).await;
        let _ = stream.flush().await;
        drain(&mut stream).await; // the node closes it
    }
    // A correct Hello followed by a garbage Automerge message, or by a message for a
    // part the collection does not have; or by a part sent whole that is not a
    // document, is one cut short, or is for a part the collection does not have.
    use automerge::sync::SyncDoc as _;
    use automerge::transaction::Transactable as _;
    let first_message = automerge::sync::Message::encode(
        automerge::AutoCommit::new()
            .sync()
            .generate_sync_message(&mut automerge::sync::State::new())
            .expect("a first message"),
    );
    let mut doc = automerge::AutoCommit::new();
    doc.put(automerge::ROOT, "mallory", "was here").unwrap();
    let saved = doc.save();
    let contacts = CollectionName::parse("contacts").unwrap();
    let bad_frames = [
        SyncFrame::Doc {
            collection: contacts.clone(),
            part: 0,
            message: vec![0x42, 0xff, 0x00],
        },
        SyncFrame::Doc {
            collection: contacts.clone(),
            part: 300,
            message: first_message,
        },
        SyncFrame::Whole {
            collection: contacts.clone(),
            part: 0,
            document: vec![0x42; 64],
        },
        SyncFrame::Whole {
            collection: contacts.clone(),
            part: 1,
            document: saved[..saved.len() - 3].to_vec(),
        },
        SyncFrame::Whole {
            collection: contacts.clone(),
            part: 300,
            document: saved,
        },
    ];
    for bad in bad_frames {
        let mut stream = sync_stream(&mut control, peer, vault_id).await;
        stream.write_all(&frame(&bad.encode())).await.unwrap();
        drain(&mut stream).await;
    }
    assert_eq!(
        v.collections().count(&contacts).unwrap(),
        1,
        "nothing of the bad frames was stored"
    );

    // Blob protocol: garbage request closes the stream; an unknown chunk is NotFound.
    let mut stream = open(&mut control, peer, BLOB_PROTOCOL).await.unwrap();
    stream
        .write_all(&frame(&BlobRequest::GetChunk([3; 32]).encode()))
        .await
        .unwrap();
    let body = read_one_frame(&mut stream).await;
    assert_eq!(BlobResponse::decode(&body).unwrap(), BlobResponse::NotFound);
    stream.write_all(&frame(b"\x07garbage")).await.unwrap();
    drain(&mut stream).await;

    // The node is unharmed: data intact, API up, and a well-behaved session still works.
    still_serves(&a).await;
    let mut stream = sync_stream(&mut control, peer, vault_id).await;
    let body = read_one_frame(&mut stream).await;
    assert!(matches!(
        SyncFrame::decode(&body).unwrap(),
        SyncFrame::Hello { .. }
    ));
    task.abort();
    a.shutdown().await.unwrap();
}

/// Idle streams cannot shut others out: a peer that opens pairing and view streams and
/// sends nothing holds only its own few, each for a few seconds, while a new device
/// still joins and a service still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_shut_no_one_out() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("a")).await;
    let v = node.vault().clone();
    v.collections()
        .put(
            &CollectionName::parse("contacts").unwrap(),
            &RecordId::parse("ada").unwrap(),
            json!({"name": "Ada"}).as_object().unwrap(),
        )
        .unwrap();
    let scope = hearth_protocol::scope::Scope::parse(Some("contacts"), None, &[]).unwrap();
    let (_, token) = hearth_node::access::create_grant(
        v.collections(),
        v.keys(),
        hearth_node::access::NewGrant::new("svc", scope),
    )
    .unwrap();
    let token = token.token;
    v.store().commit().await.unwrap();

    let (mut control, peer, task) = raw_peer(Keypair::generate_ed25519(), &node).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        if let Some(s) = open(&mut control, peer, PAIR_PROTOCOL).await {
            idle.push(s);
        }
    }
    for _ in 0..40 {
        if let Some(s) = open(&mut control, peer, hearth_protocol::view::VIEW_PROTOCOL).await {
            idle.push(s);
        }
    }
    let opened = std::time::Instant::now();

    // A new device joins while they sit there.
    let (code, _) = v
        .mesh()
        .unwrap()
        .pairing
        .invite(Duration::from_secs(60))
        .await
        .unwrap();
    let joined = tokio::time::timeout(
        Duration::from_secs(10),
        pairing::join(&Home::new(dir.path().join("b")), &code, None, "new"),
    )
    .await
    .expect("the join is not held up by idle streams");
    joined.expect("the join succeeds");
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "it did not wait for the idle streams to time out"
    );

    // A service reads its view over the mesh at the same moment.
    let (mut service, _, service_task) = raw_peer(Keypair::generate_ed25519(), &node).await;
    let mut stream = open(&mut service, peer, hearth_protocol::view::VIEW_PROTOCOL)
        .await
        .expect("a service gets a view stream");
    let request = hearth_protocol::view::ViewRequest {
        method: "GET".into(),
        path: "/v1/view/contacts".into(),
        token,
        body: None,
    };
    stream
        .write_all(&frame(&serde_json::to_vec(&request).unwrap()))
        .await
        .unwrap();
    let answer: hearth_protocol::view::ViewResponse =
        serde_json::from_slice(&read_one_frame(&mut stream).await).unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    // The idle streams are closed once their first-request time is up.
    let mut closed = 0;
    for mut s in idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            closed += 1;
        }
    }
    assert!(closed > 0, "idle streams are closed by the node");
    task.abort();
    service_task.abort();
    node.shutdown().await.unwrap();
}

/// Only Noise-encrypted connections are spoken to: a peer that asks for the sync
/// protocol in the clear gets no vault byte, and the node carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_noise_gets_nothing() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("a")).await;
    node.vault()
        .collections()
        .put(
            &CollectionName::parse("contacts").unwrap(),
            &RecordId::parse("ada").unwrap(),
            json!({"name": "a distinctive secret name"})
                .as_object()
                .unwrap(),
        )
        .unwrap();
    node.vault().store().commit().await.unwrap();
    let addr = listen_addrs(&node).await;
    let port = addr[0]
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    socket
        .write_all(b"\x13/multistream/1.0.0\n\x0f/hearth/sync/1\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut got)).await;
    assert!(
        !got.windows(8).any(|w| w == b"distinct") && !got.windows(6).any(|w| w == b"/hearth"),
        "the node spoke a Hearth protocol in the clear: {:?}",
        String::from_utf8_lossy(&got)
    );
    still_serves(&node).await;
    node.shutdown().await.unwrap();
}
