//! A mail batch's records are decided and written as one job under the collection's
//! lock: two batches holding the same message, imported at the same moment (two
//! folders of one Maildir, or two imports), leave one record that names both folders,
//! counted once as new and once as there already.

use hearth_node::{Node, NodeConfig};
use hearth_protocol::CollectionName;
use hearth_protocol::mail::MailItem;
use serde_json::Value;

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: a{n}@example.org\r\nTo: b@example.org\r\nSubject: round {n}\r\n\
         Message-ID: <round{n}@example.org>\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

fn item(folder: &str, bytes: Vec<u8>) -> MailItem {
    MailItem {
        folder: folder.into(),
        flags: vec![],
        mbox_from: None,
        bytes,
        view: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_in_two_batches_at_once_is_one_record_in_both_folders() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path());
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    config.mesh = None;
    let node = Node::start(config).await.unwrap();
    let vault = node.vault();
    let mail = CollectionName::parse("mail").unwrap();
    const ROUNDS: usize = 30;
    for n in 0..ROUNDS {
        // Other messages beside it, so the two batches' blob writes take a while.
        let batch = |folder: &str| {
            let mut items: Vec<MailItem> = (0..20)
                .map(|k| {
                    item(
                        folder,
                        message(1_000 + n * 100 + k + usize::from(folder == "B") * 50),
                    )
                })
                .collect();
            items.push(item(folder, message(n)));
            items
        };
        let (a, b) = tokio::join!(
            hearth_node::mail::import_batch(vault, &mail, batch("A")),
            hearth_node::mail::import_batch(vault, &mail, batch("B")),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.imported + b.imported, 41, "round {n}");
        assert_eq!(a.duplicates + b.duplicates, 1, "round {n}");
    }
    let records = vault.collections().records(&mail).unwrap();
    assert_eq!(records.len(), ROUNDS * 41);
    for n in 0..ROUNDS {
        let subject = format!("round {n}");
        let found: Vec<&Value> = records
            .iter()
            .filter(|r| r["subject"] == subject.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{subject}");
        let mut folders: Vec<&str> = found[0]["folders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        folders.sort();
        assert_eq!(folders, ["A", "B"], "{subject}");
    }
    node.shutdown().await.unwrap();
}
