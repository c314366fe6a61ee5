//! Formats that last: a vault written by an earlier build (`tests/fixtures/vault-v1`,
//! made by `examples/make_fixture.rs`, passphrase-protected) opens with today's code,
//! every record, blob, grant and audit entry reads back as it was written, and the
//! vault keeps working (a write, a restart). Changing an on-disk format must keep this
//! test passing or migrate the old format (the record index, which this vault predates,
//! is built from its documents on first use; its collections, kept in one document
//! each, are split into parts at the first start).

use std::path::Path;

use hearth_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

#[test]
fn a_vault_written_by_an_earlier_version_opens_and_reads_whole() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vault-v1");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("EXPECTED.json")).unwrap()).unwrap();
    // Never opened in place: sled writes to its files.
    let t = TestHome::new();
    let home = t.dir().join("vault");
    copy_dir(&fixture.join("home"), &home);
    let pass = fixture.join("passphrase");
    let pass = pass.to_str().unwrap();

    let node = spawn_node_with_env(
        &home,
        &["--passphrase-file", pass, "--no-mesh"],
        &[("RUST_LOG", "info")],
    );
    // Its collections were kept in one document each: they are split into parts at
    // this first start, before the API answers.
    eventually("the first start's log says a collection was split", || {
        node.stderr()
            .contains("kept a collection in parts from now on")
            .then_some(())
    });
    let api = Api::new(&node);
    for (name, records) in expected["collections"].as_object().unwrap() {
        let (status, body) =
            api.send(api.request(Method::GET, &format!("/v1/collections/{name}/records")));
        assert_eq!(status, 200);
        assert_eq!(
            &body, records,
            "collection {name} differs from what was written"
        );
    }
    let (_, listed) = api.send(api.request(Method::GET, "/v1/blobs"));
    assert_eq!(
        listed.as_array().unwrap().len(),
        expected["blobs"].as_object().unwrap().len()
    );
    for (id, blob) in expected["blobs"].as_object().unwrap() {
        let answer = api.send_raw(api.request(Method::GET, &format!("/v1/blobs/{id}")));
        assert_eq!(answer.status, 200, "blob {id}");
        assert_eq!(answer.body.len() as u64, blob["size"].as_u64().unwrap());
        assert_eq!(
            blake3::hash(&answer.body).to_hex().to_string(),
            blob["blake3"].as_str().unwrap(),
            "blob {id} differs"
        );
    }
    let (_, grants) = api.send(api.request(Method::GET, "/v1/grants"));
    let grants: Vec<Value> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| json!({"id": g["id"], "service": g["service"], "status": g["status"]}))
        .collect();
    // Grants made before tokens were bound to their grant are no longer in force: a
    // removed device could forge their tokens. They read back, marked as unbound.
    let mut expected_grants = expected["grants"].clone();
    for g in expected_grants.as_array_mut().unwrap() {
        if g["status"] == "active" {
            g["status"] = json!("unbound");
        }
    }
    assert_eq!(Value::Array(grants), expected_grants);
    let (_, audit) = api.send(api.request(Method::GET, "/v1/audit"));
    assert_eq!(
        audit.as_array().unwrap().len() as u64,
        expected["audit_entries"].as_u64().unwrap()
    );
    let (_, verify) = api.send(api.request(Method::GET, "/v1/audit/verify"));
    assert_eq!(verify["ok"], true, "{verify}");

    // The old token is refused, saying why and what to do; the vault takes new writes
    // that survive a restart.
    let token = expected["grant_token"].as_str().unwrap();
    let (status, refused) = api.send(api.raw(Method::GET, "/v1/view/notes").bearer_auth(token));
    assert_eq!(status, 401, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_token");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("grant it again"),
        "{refused}"
    );
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/collections/contacts/records/new")
            .json(&json!({"name": "written today"})),
    );
    assert_eq!(status, 201);
    // Its key file (version 1) got this device an exchange key, under the same
    // passphrase; the keys rotate, and what is written under the new epoch reads back
    // after a restart (the epoch key is kept in the store, under this device's key).
    assert!(node.stderr().contains("gave this device an exchange key"));
    let (status, rotated) = api.send(api.request(Method::POST, "/v1/keys/rotate"));
    assert_eq!((status, &rotated["epoch"]), (200, &json!(1)), "{rotated}");
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/collections/contacts/records/later")
            .json(&json!({"name": "written under epoch 1"})),
    );
    assert_eq!(status, 201);
    node.stop();
    let node = spawn_node(&home, &["--passphrase-file", pass, "--no-mesh"]);
    let api = Api::new(&node);
    let (_, new) = api.send(api.request(Method::GET, "/v1/collections/contacts/records/new"));
    assert_eq!(new["name"], "written today");
    let (_, later) = api.send(api.request(Method::GET, "/v1/collections/contacts/records/later"));
    assert_eq!(later["name"], "written under epoch 1");
    let (_, keys) = api.send(api.request(Method::GET, "/v1/keys"));
    assert_eq!((&keys["epoch"], &keys["held"]), (&json!(1), &json!(true)));
    // Every value opens, under whichever key sealed it (the kept epoch key included).
    let (_, check) = api.send(api.request(Method::GET, "/v1/check"));
    assert_eq!(check["ok"], true, "{check}");
    // The record index (made after this vault was written) was built on the first
    // run; read from it now, every collection still reads as it was written.
    for (name, records) in expected["collections"].as_object().unwrap() {
        let (status, mut body) =
            api.send(api.request(Method::GET, &format!("/v1/collections/{name}/records")));
        assert_eq!(status, 200);
        if name == "contacts" {
            body.as_array_mut()
                .unwrap()
                .retain(|r| r["id"] != "new" && r["id"] != "later");
        }
        assert_eq!(
            &body, records,
            "collection {name} differs after the restart"
        );
    }
    let (_, verify) = api.send(api.request(Method::GET, "/v1/audit/verify"));
    assert_eq!(verify["ok"], true, "{verify}");
    node.stop();
}
