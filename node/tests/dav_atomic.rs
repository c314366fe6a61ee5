//! A DAV PUT of a name that is not an id is one piece: its card and the client's name
//! for it are never apart. The name is claimed first (a compare-and-set under the
//! `_dav` collection's lock), then the card written; what a crash between leaves — a
//! name whose card does not exist — is taken over by the next PUT of that name, two
//! PUTs of one new name at once make one card, and a refused PUT leaves no name.

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

/// The id of a name record, as docs/FORMATS.md gives it: `BOOK.SIDE.HASH`, HASH the
/// first 32 hex digits of BLAKE3(`BOOK ‖ 0x00 ‖ key`).
fn name_record(book: &str, side: char, key: &str) -> RecordId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(book.as_bytes());
    hasher.update(&[0]);
    hasher.update(key.as_bytes());
    RecordId::parse(&format!(
        "{book}.{side}.{}",
        &hasher.finalize().to_hex()[..32]
    ))
    .unwrap()
}

/// An app password for a grant of `scope`.
async fn password(node: &NodeHandle, scope: Scope) -> String {
    let v = node.vault();
    let mut grant = NewGrant::new("phone", scope);
    grant.app_password = true;
    let (_, issued) = access::create_grant(v.collections(), v.keys(), grant).unwrap();
    v.store().commit().await.unwrap();
    issued.password.unwrap().to_string()
}

/// A node in `home` and the app password of a grant that reads and writes contacts.
async fn with_contacts_grant(home: &std::path::Path) -> (NodeHandle, String) {
    let node = start(home).await;
    let scope = Scope::parse(Some("contacts"), Some("contacts"), &[]).unwrap();
    let password = password(&node, scope).await;
    (node, password)
}

fn card(uid: &str, name: &str) -> String {
    format!("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:{name}\r\nN:{name};;;;\r\nEND:VCARD\r\n")
}

async fn put(
    node: &NodeHandle,
    password: &str,
    name: &str,
    text: String,
    condition: Option<(&str, &str)>,
) -> u16 {
    let mut request = reqwest::Client::new()
        .put(format!(
            "http://{}/dav/contacts/contacts/{name}",
            node.api_addr()
        ))
        .basic_auth("phone", Some(password))
        .body(text);
    if let Some((header, value)) = condition {
        request = request.header(header, value);
    }
    request.send().await.unwrap().status().as_u16()
}

fn ids(node: &NodeHandle) -> Vec<String> {
    let contacts = CollectionName::parse("contacts").unwrap();
    let records = node.vault().collections().records(&contacts).unwrap();
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_left_without_its_card_is_taken_over_by_the_next_put() {
    let dir = tempfile::tempdir().unwrap();
    let (node, password) = with_contacts_grant(dir.path()).await;
    // What a crash between a PUT's name and its card leaves: the name's two records
    // (and the book's mark), no card.
    let v = node.vault();
    let dav = CollectionName::parse(META).unwrap();
    let name = "kay@google.com.vcf";
    let pair = object(json!({"book": "contacts", "name": name, "id": "x1"}));
    v.collections()
        .put(&dav, &name_record("contacts", 'n', name), &pair)
        .unwrap();
    v.collections()
        .put(&dav, &name_record("contacts", 'i', "x1"), &pair)
        .unwrap();
    v.collections()
        .put(
            &dav,
            &RecordId::parse("contacts").unwrap(),
            &object(json!({"named": true})),
        )
        .unwrap();
    v.store().commit().await.unwrap();

    let status = put(
        &node,
        &password,
        name,
        card("kay@google.com", "Kay"),
        Some(("If-None-Match", "*")),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(ids(&node), vec!["x1"], "the name's id was taken over");
    let got = reqwest::Client::new()
        .get(format!(
            "http://{}/dav/contacts/contacts/{name}",
            node.api_addr()
        ))
        .basic_auth("phone", Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert!(got.text().await.unwrap().contains("FN:Kay"));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_puts_of_one_new_name_at_once_make_one_card() {
    let dir = tempfile::tempdir().unwrap();
    let (node, password) = with_contacts_grant(dir.path()).await;
    for round in 0..8 {
        let name = format!("p{round}@google.com.vcf");
        let (a, b) = tokio::join!(
            put(
                &node,
                &password,
                &name,
                card(&format!("p{round}"), "First"),
                None
            ),
            put(
                &node,
                &password,
                &name,
                card(&format!("p{round}"), "Second"),
                None
            ),
        );
        let mut statuses = [a, b];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [201, 204],
            "round {round}: one created, one replaced it"
        );
        // With If-None-Match: * exactly one of them creates.
        let name = format!("q{round}@google.com.vcf");
        let only_new = Some(("If-None-Match", "*"));
        let (a, b) = tokio::join!(
            put(
                &node,
                &password,
                &name,
                card(&format!("q{round}"), "First"),
                only_new
            ),
            put(
                &node,
                &password,
                &name,
                card(&format!("q{round}"), "Second"),
                only_new
            ),
        );
        let mut statuses = [a, b];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 412], "round {round}");
    }
    assert_eq!(ids(&node).len(), 16, "one card per name: {:?}", ids(&node));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_put_leaves_no_name_behind() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    // A grant that may write only cards of its own group: a card outside it is refused.
    let filter = "groups=family".to_owned();
    let password = password(
        &node,
        Scope::parse(Some("contacts"), Some("contacts"), &[filter]).unwrap(),
    )
    .await;
    let name = "stranger@google.com.vcf";
    let status = put(&node, &password, name, card("s", "Stranger"), None).await;
    assert_eq!(status, 403);
    let dav = CollectionName::parse(META).unwrap();
    let v = node.vault();
    assert!(
        v.collections()
            .get(&dav, &name_record("contacts", 'n', name))
            .unwrap()
            .is_none(),
        "the refused PUT's name stayed"
    );
    assert!(ids(&node).is_empty());
    // A card inside the group is written, under the name.
    let family =
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:f\r\nFN:Fam\r\nCATEGORIES:family\r\nEND:VCARD\r\n";
    assert_eq!(put(&node, &password, name, family.into(), None).await, 201);
    assert_eq!(ids(&node).len(), 1);
    assert!(
        v.collections()
            .get(&dav, &name_record("contacts", 'n', name))
            .unwrap()
            .is_some()
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_of_a_card_a_grant_cannot_see_is_not_taken_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let (node, everything) = with_contacts_grant(dir.path()).await;
    let family = password(
        &node,
        Scope::parse(
            Some("contacts"),
            Some("contacts"),
            &["groups=family".to_owned()],
        )
        .unwrap(),
    )
    .await;
    let name = "x@google.com.vcf";
    assert_eq!(
        put(&node, &everything, name, card("x", "Work"), None).await,
        201
    );
    let dav = CollectionName::parse(META).unwrap();
    let v = node.vault();
    let forward = name_record("contacts", 'n', name);
    let before = v.collections().get(&dav, &forward).unwrap();
    assert!(before.is_some());
    // The family grant cannot see that card: its PUT of the name changes nothing.
    let card =
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:y\r\nFN:Fam\r\nCATEGORIES:family\r\nEND:VCARD\r\n";
    assert_eq!(put(&node, &family, name, card.into(), None).await, 412);
    assert_eq!(v.collections().get(&dav, &forward).unwrap(), before);
    assert_eq!(ids(&node).len(), 1);
    node.shutdown().await.unwrap();
}
