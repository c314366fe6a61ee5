//! Makes the committed fixture vault `tests/fixtures/vault-v1/` with the current
//! `hearth` binary, and `EXPECTED.json` beside it: every record of every collection,
//! every blob's BLAKE3, the grants and the number of audit entries. The test
//! `tests/fixture_vault.rs` opens a copy with today's code and compares.
//!
//!     cargo build -p hearth-cli && cargo run -p hearth-tests --example make_fixture
//!
//! Run it only to make a new fixture for a new format version (vault-v2, ...): the
//! point of the old one is that it stays as it was written.

use std::path::Path;

use hearth_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vault-v1");
    assert!(
        !root.exists(),
        "{} exists: a fixture is never rewritten",
        root.display()
    );
    std::fs::create_dir_all(&root).expect("fixture directory");
    let home = root.join("home");
    let passphrase = root.join("passphrase");
    std::fs::write(&passphrase, "fixture passphrase, not a secret\n").expect("passphrase file");
    let pass = passphrase.to_str().expect("utf-8");
    hearth_json(&home, &["init", "--passphrase-file", pass]);
    let node = spawn_node(&home, &["--passphrase-file", pass, "--no-mesh"]);
    let api = Api::new(&node);
    let ok = |(status, body): (u16, Value)| {
        assert!((200..300).contains(&status), "{status}: {body}");
        body
    };

    ok(api.send(
        api.request(Method::PUT, "/v1/collections/contacts/records/ada")
            .json(&json!({
                "name": "Ada Lovelace", "email": "ada@example.org", "born": 1815,
                "tags": ["math", "poetry"], "address": {"city": "London", "zip": null},
                "score": 4.75, "active": true, "note": "Ünïcödé ✓ 数学",
            })),
    ));
    ok(api.send(
        api.request(Method::PUT, "/v1/collections/contacts/records/bob")
            .json(&json!({"name": "Bob", "nested": {"deep": {"list": [1, [2, 3], {"x": -1}]}}})),
    ));
    ok(api.send(
        api.request(Method::PUT, "/v1/collections/contacts/records/gone")
            .json(&json!({"name": "deleted later"})),
    ));
    ok(api.send(api.request(Method::DELETE, "/v1/collections/contacts/records/gone")));
    // Enough changes to one collection for a compacted snapshot plus changes after it.
    ok(api.send(
        api.request(Method::PUT, "/v1/collections/counters/records/c1")
            .json(&json!({"n": -1})),
    ));
    for i in 0..300 {
        ok(api.send(
            api.request(Method::PATCH, "/v1/collections/counters/records/c1")
                .json(&json!({"n": i, "last": format!("edit {i}")})),
        ));
    }
    ok(api.send(
        api.request(Method::PUT, "/v1/collections/notes/records/n1")
            .json(&json!({"body": "Hello"})),
    ));
    ok(api.send(
        api.request(Method::POST, "/v1/collections/notes/records/n1/text")
            .json(&json!({"field": "body", "edits": [{"at": 5, "insert": ", world"}]})),
    ));
    let small: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
    let large: Vec<u8> = (0..(1024 * 1024 + 4096) as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut blobs = serde_json::Map::new();
    for bytes in [small, large] {
        let body = ok(api.send(api.request(Method::POST, "/v1/blobs").body(bytes.clone())));
        blobs.insert(
            body["id"].as_str().expect("id").to_owned(),
            json!({"size": bytes.len(), "blake3": blake3::hash(&bytes).to_hex().to_string()}),
        );
    }
    let grant = ok(api
        .send(api.request(Method::POST, "/v1/grants").json(
            &json!({"service": "reader", "read": "contacts.name,notes", "expires": "never"}),
        )));
    let token = grant["token"].as_str().expect("token").to_owned();
    let seen = api.send(
        api.raw(Method::GET, "/v1/view/contacts")
            .bearer_auth(&token),
    );
    assert_eq!(seen.0, 200, "{}", seen.1);
    let revoked = ok(api.send(
        api.request(Method::POST, "/v1/grants")
            .json(&json!({"service": "gone", "read": "notes", "expires": "never"})),
    ));
    let revoked_id = revoked["id"].as_str().expect("grant id").to_owned();
    ok(api.send(api.request(Method::POST, &format!("/v1/grants/{revoked_id}/revoke"))));

    let mut collections = serde_json::Map::new();
    for name in ["contacts", "counters", "notes"] {
        collections.insert(
            name.into(),
            ok(api.send(api.request(Method::GET, &format!("/v1/collections/{name}/records")))),
        );
    }
    let grants = ok(api.send(api.request(Method::GET, "/v1/grants")));
    let audit = ok(api.send(api.request(Method::GET, "/v1/audit")));
    let expected = json!({
        "made_by": format!("hearth {}", env!("CARGO_PKG_VERSION")),
        "passphrase_file": "passphrase",
        "collections": collections,
        "blobs": blobs,
        "grants": grants.as_array().expect("grants").iter().map(|g| json!({
            "id": g["id"], "service": g["service"], "status": g["status"],
        })).collect::<Vec<_>>(),
        "grant_token": token,
        "audit_entries": audit.as_array().expect("audit").len(),
    });
    node.stop();
    std::fs::write(
        root.join("EXPECTED.json"),
        serde_json::to_string_pretty(&expected).expect("json"),
    )
    .expect("EXPECTED.json");
    println!("made {}", root.display());
}
