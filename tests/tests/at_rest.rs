//! Nothing the user wrote is readable on disk: not values, field names, collection
//! names, record ids, blob content, nor the owner token outside its own file — whether
//! the node stopped cleanly, was killed, or is still running.

use std::path::Path;

use hearth_tests::*;
use reqwest::Method;
use serde_json::json;

const SECRETS: [&str; 8] = [
    "zanzibar_field_q7",
    "Distinctive-Value-8c1f",
    "secretcoll",
    "rec-wombat-42",
    "Marker-Blob-Text-55aa",
    "Patched-Secret-77de",
    "Deleted-Secret-3b0c",
    "cli_only_field_k2",
];

const BLOB_MARKER: &str = "Marker-Blob-Text-55aa ";

/// Writes everything distinctive through HTTP and the CLI; returns the blob's id.
fn write_secrets(node: &NodeProcess, scratch: &Path) -> (String, Vec<u8>) {
    let api = Api::new(node);
    for i in 0..50 {
        let record = json!({
            "zanzibar_field_q7": format!("Distinctive-Value-8c1f {i}"),
            "n": i,
            "nested": {"zanzibar_field_q7": ["Distinctive-Value-8c1f"]},
        });
        let (status, body) = api.send(
            api.request(
                Method::PUT,
                &format!("/v1/collections/secretcoll/records/rec-wombat-{i}"),
            )
            .json(&record),
        );
        assert_eq!(status, 201, "{body}");
    }
    let (status, _) = api.send(
        api.request(
            Method::PATCH,
            "/v1/collections/secretcoll/records/rec-wombat-42",
        )
        .json(&json!({"patched": "Patched-Secret-77de"})),
    );
    assert_eq!(status, 200);
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/collections/secretcoll/records/gone")
            .json(&json!({"text": "Deleted-Secret-3b0c"})),
    );
    assert_eq!(status, 201);
    let (status, _) =
        api.send(api.request(Method::DELETE, "/v1/collections/secretcoll/records/gone"));
    assert_eq!(status, 204);
    node.json(&[
        "put",
        "secretcoll",
        "rec-wombat-cli",
        r#"{"cli_only_field_k2": "Distinctive-Value-8c1f via the CLI"}"#,
    ]);

    // A few hundred KiB (more than one chunk) of a repeated marker.
    let blob = BLOB_MARKER.repeat(60_000).into_bytes();
    let file = scratch.join("marker.txt");
    std::fs::write(&file, &blob).unwrap();
    let info = node.json(&["blob", "put", file.to_str().unwrap()]);
    (info["id"].as_str().expect("blob id").to_owned(), blob)
}

/// Fails naming the file if any file under `home` holds a secret (in its bytes or in
/// its name), or the owner token outside owner.token.
fn assert_nothing_readable(home: &Path, token: &str, when: &str) {
    let files = files_under(home);
    assert!(files.len() > 3, "{when}: only {files:?}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file
            .strip_prefix(home)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for needle in SECRETS {
            assert!(
                !contains_bytes(&bytes, needle.as_bytes()),
                "{when}: {} contains {needle:?}",
                file.display()
            );
            assert!(!name.contains(needle), "{when}: a file is named {name}");
        }
        if file.file_name().unwrap() == "owner.token" {
            // The scan reads real bytes: it finds the token where it belongs.
            assert!(
                contains_bytes(&bytes, token.as_bytes()),
                "{when}: owner.token"
            );
        } else {
            assert!(
                !contains_bytes(&bytes, token.as_bytes()),
                "{when}: {} contains the owner token",
                file.display()
            );
        }
    }
}

fn assert_reads_back(home: &Path, scratch: &Path, blob_id: &str, blob: &[u8]) {
    let node = spawn_node(home, &[]);
    let rec = node.json(&["get", "secretcoll", "rec-wombat-42"]);
    assert_eq!(rec["zanzibar_field_q7"], "Distinctive-Value-8c1f 42");
    assert_eq!(rec["patched"], "Patched-Secret-77de");
    assert_eq!(
        node.json(&["ls", "secretcoll"]).as_array().unwrap().len(),
        51
    );
    let out_file = scratch.join("blob.out");
    let _ = std::fs::remove_file(&out_file);
    node.json(&["blob", "get", blob_id, "-o", out_file.to_str().unwrap()]);
    assert!(
        std::fs::read(&out_file).unwrap() == blob,
        "the blob reads back"
    );
    node.stop();
}

#[test]
fn no_file_under_home_contains_what_was_written_after_a_clean_stop() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let (blob_id, blob) = write_secrets(&node, t.dir());
    let token = node.owner_token();
    node.stop();
    assert_nothing_readable(t.path(), &token, "after a clean stop");
    assert_reads_back(t.path(), t.dir(), &blob_id, &blob);
}

#[test]
fn no_file_under_home_contains_what_was_written_while_running_or_after_sigkill() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let (blob_id, blob) = write_secrets(&node, t.dir());
    let token = node.owner_token();
    // Every write above was acknowledged, so it is on disk now: look at it there.
    assert_nothing_readable(t.path(), &token, "while the node runs");
    node.kill9();
    assert_nothing_readable(t.path(), &token, "after SIGKILL");
    assert_reads_back(t.path(), t.dir(), &blob_id, &blob);
    assert_nothing_readable(t.path(), &token, "after a restart");
}
