//! A vault written by a version that kept the names DAV clients gave in one map per
//! book: the node moves them into per-name records when it starts, and a client still
//! finds its cards under the names it gave them.

use hearth_node::access::dav::META;
use hearth_node::access::{self, NewGrant};
use hearth_node::{Node, NodeConfig, NodeHandle};
use hearth_protocol::scope::Scope;
use hearth_protocol::{CollectionName, RecordId};
use serde_json::{Value, json};

async fn start(home: &std::path::Path) -> NodeHandle {
    let mut config = NodeConfig::new(home);
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    config.mesh = None;
    Node::start(config).await.unwrap()
}

fn object(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn names_an_older_version_kept_in_one_map_survive_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let contacts = CollectionName::parse("contacts").unwrap();
    let dav = CollectionName::parse(META).unwrap();
    let book = RecordId::parse("contacts").unwrap();

    // What the older version left: a card, and its client's name in the book's map.
    let node = start(dir.path()).await;
    let v = node.vault();
    let card = object(json!({"name": "Kay", "uid": "k@google.com"}));
    v.collections()
        .put(&contacts, &RecordId::parse("r1").unwrap(), &card)
        .unwrap();
    let old = json!({"display_name": "Home", "names": {"k@google.com.vcf": "r1"}});
    v.collections().put(&dav, &book, &object(old)).unwrap();
    v.store().commit().await.unwrap();
    node.shutdown().await.unwrap();

    let node = start(dir.path()).await;
    let v = node.vault();
    let meta = v.collections().get(&dav, &book).unwrap().unwrap();
    assert!(meta.get("names").is_none(), "{meta}");
    assert_eq!(meta["display_name"], "Home");
    assert_eq!(meta["named"], true);
    let dav_records = v.collections().count(&dav).unwrap();
    assert_eq!(dav_records, 3, "the book's record and the name's two");

    let scope = Scope::parse(Some("contacts"), Some("contacts"), &[]).unwrap();
    let mut grant = NewGrant::new("phone", scope);
    grant.app_password = true;
    let (_, issued) = access::create_grant(v.collections(), v.keys(), grant).unwrap();
    let password = issued.password.unwrap().to_string();
    v.store().commit().await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}/dav/contacts/contacts/", node.api_addr());
    let listing = http
        .request(reqwest::Method::from_bytes(b"PROPFIND").unwrap(), &base)
        .basic_auth("phone", Some(&password))
        .header("Depth", "1")
        .body(r#"<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("/k@google.com.vcf</d:href>"), "{listing}");
    assert!(!listing.contains("r1.vcf"), "{listing}");
    let got = http
        .get(format!("{base}k@google.com.vcf"))
        .basic_auth("phone", Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert!(got.text().await.unwrap().contains("FN:Kay"));
    node.shutdown().await.unwrap();

    // Moved once: the next start finds nothing to move and changes nothing.
    let node = start(dir.path()).await;
    let v = node.vault();
    assert_eq!(v.collections().get(&dav, &book).unwrap().unwrap(), meta);
    assert_eq!(v.collections().count(&dav).unwrap(), dav_records);
    node.shutdown().await.unwrap();
}
