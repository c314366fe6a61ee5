//! A request that writes to several collections is all or nothing, wherever the store
//! fails. For every n, the store is made to fail after n more writes and the request
//! is sent: either it is answered and everything it wrote is there, or it is refused
//! and nothing of it is — no record naming a blob, no blob listed for the other
//! devices to fetch — in memory and again after a restart. n grows until the request
//! goes through whole.

use std::path::Path;

use hearth_node::store::Fault;
use hearth_node::{Node, NodeConfig, NodeHandle};
use hearth_protocol::CollectionName;
use hearth_protocol::mail::MailItem;
use serde_json::Value;

async fn start(home: &Path) -> NodeHandle {
    let mut config = NodeConfig::new(home);
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    config.mesh = None;
    Node::start(config).await.unwrap()
}

fn name(n: &str) -> CollectionName {
    CollectionName::parse(n).unwrap()
}

/// The ids of the blobs listed in `_blobs` (and not removed).
fn listed(node: &NodeHandle) -> Vec<String> {
    node.vault()
        .collections()
        .records(&hearth_node::blobs::blob_list())
        .unwrap()
        .into_iter()
        .filter(|l| l["removed"] != true)
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The blob ids the records of `collection` name at `pointer` (a JSON pointer).
fn named(node: &NodeHandle, collection: &str, pointer: &str) -> Vec<String> {
    node.vault()
        .collections()
        .records(&name(collection))
        .unwrap()
        .iter()
        .filter_map(|r| {
            r.pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// What a request left: the blobs its records name (one for each record naming one)
/// and the blobs listed.
fn state(node: &NodeHandle, collection: &str, pointer: &str) -> (Vec<String>, Vec<String>) {
    let mut named = named(node, collection, pointer);
    let mut listed = listed(node);
    named.sort();
    listed.sort();
    (named, listed)
}

/// Runs `request` in a new vault with the store failing after n writes, for n = 0, 1,
/// … until it goes through (a new vault each time, so each n fails the request at the
/// next of its writes); checks after each attempt, and after a restart, that it left
/// all or nothing. Returns how many attempts failed.
async fn all_or_nothing<F, Fut>(collection: &str, pointer: &str, expected: usize, request: F) -> u32
where
    F: Fn(NodeHandle) -> Fut,
    Fut: std::future::Future<Output = (NodeHandle, bool)>,
{
    for n in 0..200u32 {
        let dir = tempfile::tempdir().unwrap();
        let node = start(dir.path()).await;
        node.vault()
            .store()
            .faults()
            .inject(Fault::WriteErrorAfter(n));
        let (mut node, ok) = request(node).await;
        node.vault().store().faults().clear();
        for restarted in [false, true] {
            if restarted {
                node.shutdown().await.unwrap();
                node = start(dir.path()).await;
            }
            let (named, listed) = state(&node, collection, pointer);
            if ok {
                assert_eq!(
                    named.len(),
                    expected,
                    "after {n} writes: every record is there"
                );
                let mut distinct = named.clone();
                distinct.dedup();
                assert_eq!(
                    distinct, listed,
                    "after {n} writes: every blob named is listed"
                );
            } else {
                assert!(
                    named.is_empty() && listed.is_empty(),
                    "after {n} writes (restarted: {restarted}): a refused request left \
                     records naming {named:?} and listings {listed:?}"
                );
            }
        }
        node.shutdown().await.unwrap();
        if ok {
            return n;
        }
    }
    panic!("the request never went through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_batch_is_all_or_nothing_wherever_the_store_fails() {
    let items: Vec<MailItem> = (0..5)
        .map(|n| MailItem {
            folder: "INBOX".into(),
            flags: vec![],
            mbox_from: None,
            bytes: format!(
                "From: a{n}@example.org\r\nSubject: {n}\r\nMessage-ID: <{n}@example.org>\r\n\r\nbody {n}\r\n"
            )
            .into_bytes(),
            view: false,
        })
        .collect();
    let failed = all_or_nothing("mail", "/blob", 5, |node| {
        let items = items.clone();
        async move {
            let ok = hearth_node::mail::import_batch(node.vault(), &name("mail"), items)
                .await
                .is_ok();
            (node, ok)
        }
    })
    .await;
    assert!(failed > 0, "the store failed some attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vcard_import_with_photos_is_all_or_nothing_wherever_the_store_fails() {
    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    // Three cards with one photo: three records naming one blob.
    let text: String = (0..3)
        .map(|n| {
            format!(
                "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:card-{n}\r\nFN:Person {n}\r\n\
                 PHOTO;ENCODING=b;TYPE=PNG:{PNG}\r\nEND:VCARD\r\n"
            )
        })
        .collect();
    let failed = all_or_nothing("contacts", "/photo/blob", 3, |node| {
        let text = text.clone();
        async move {
            let ok = hearth_node::pim::import(
                node.vault(),
                &name("contacts"),
                hearth_node::pim::Kind::Contacts,
                &text,
            )
            .await
            .is_ok();
            (node, ok)
        }
    })
    .await;
    assert!(failed > 0, "the store failed some attempts");
}
