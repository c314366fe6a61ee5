//! Nothing the user wrote is readable on disk: not values, field names, collection
//! names, record ids, blob content, nor the owner token outside its own file.

use hearth_tests::*;
use reqwest::Method;
use serde_json::json;

#[test]
fn no_file_under_home_contains_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("vault");
    let node = spawn_node(&home, &[]);
    let api = Api::new(&node);
    let secrets = [
        "zanzibar_field_q7",
        "Distinctive-Value-8c1f",
        "secretcoll",
        "rec-wombat-39",
        "Marker-Blob-Text-55aa",
    ];
    for i in 0..40 {
        let record = json!({"zanzibar_field_q7": format!("Distinctive-Value-8c1f {i}"), "n": i});
        let (status, _) = api.send(
            api.request(
                Method::PUT,
                &format!("/v1/collections/secretcoll/records/rec-wombat-{i}"),
            )
            .json(&record),
        );
        assert!(status == 201, "{status}");
    }
    let blob: Vec<u8> = "Marker-Blob-Text-55aa ".repeat(20_000).into_bytes();
    let (status, info) = api.send(api.request(Method::POST, "/v1/blobs").body(blob.clone()));
    assert_eq!(status, 201);
    let token = node.owner_token();
    node.stop();

    let files = files_under(&home);
    assert!(files.len() > 3);
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for needle in secrets {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} contains {needle:?}",
                file.display()
            );
        }
        if file.file_name().unwrap() != "owner.token" {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{} contains the owner token",
                file.display()
            );
        }
    }
    // And it all reads back.
    let node = spawn_node(&home, &[]);
    assert_eq!(
        node.json(&["get", "secretcoll", "rec-wombat-39"])["zanzibar_field_q7"],
        "Distinctive-Value-8c1f 39"
    );
    let out_file = dir.path().join("blob.out");
    node.json(&[
        "blob",
        "get",
        info["id"].as_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out_file).unwrap(), blob);
    node.stop();
}
