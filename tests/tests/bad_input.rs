//! Every bad input gets a clear error — the status and JSON error of DESIGN.md, or one
//! line from the CLI — and nothing stored is lost or altered.

use hearth_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

fn assert_error(api: &Api, request: reqwest::blocking::RequestBuilder, status: u16, code: &str) {
    let (got, body) = api.send(request);
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{body}"
    );
}

#[test]
fn the_api_refuses_bad_input_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    let api = Api::new(&node);
    let original = json!({"name": "Ada", "tags": ["a"]});
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/collections/contacts/records/ada")
            .json(&original),
    );
    assert_eq!(status, 201);

    let put = |path: &str| {
        api.request(Method::PUT, path)
            .header("content-type", "application/json")
    };
    assert_error(
        &api,
        put("/v1/collections/contacts/records/ada").body("{\"name\": "),
        400,
        "bad_json",
    );
    assert_error(
        &api,
        put("/v1/collections/contacts/records/ada").body("[1,2]"),
        400,
        "not_an_object",
    );
    assert_error(
        &api,
        put("/v1/collections/contacts/records/ada").body("\"x\""),
        400,
        "not_an_object",
    );
    assert_error(
        &api,
        put("/v1/collections/Bad!/records/x").body("{}"),
        400,
        "invalid_collection",
    );
    assert_error(
        &api,
        put("/v1/collections/contacts/records/a%20b").body("{}"),
        400,
        "invalid_id",
    );
    assert_error(
        &api,
        put("/v1/collections/contacts/records/ada").body(r#"{"id": "other"}"#),
        400,
        "invalid_id",
    );
    let huge = format!("{{\"x\": \"{}\"}}", "a".repeat(1024 * 1024 + 10));
    assert_error(
        &api,
        put("/v1/collections/contacts/records/ada").body(huge),
        413,
        "too_large",
    );
    assert_error(
        &api,
        put("/v1/collections/_devices/records/x").body("{}"),
        403,
        "reserved",
    );
    assert_error(
        &api,
        api.raw(Method::GET, "/v1/collections/contacts/records/ada"),
        401,
        "missing_token",
    );
    assert_error(
        &api,
        api.raw(Method::GET, "/v1/collections/contacts/records/ada")
            .bearer_auth("hearth_owner_wrong"),
        401,
        "invalid_token",
    );
    assert_error(
        &api,
        api.raw(Method::GET, "/v1/status")
            .header("authorization", "Basic abc"),
        401,
        "missing_token",
    );
    assert_error(
        &api,
        api.request(Method::GET, "/v1/collections/contacts/records/nobody"),
        404,
        "not_found",
    );
    assert_error(
        &api,
        api.request(Method::PATCH, "/v1/collections/contacts/records/nobody")
            .json(&json!({"a": 1})),
        404,
        "not_found",
    );
    assert_error(
        &api,
        api.request(Method::DELETE, "/v1/collections/contacts/records/nobody"),
        404,
        "not_found",
    );
    assert_error(
        &api,
        api.request(Method::GET, &format!("/v1/blobs/{}", "ab".repeat(32))),
        404,
        "not_found",
    );
    assert_error(
        &api,
        api.request(Method::GET, "/v1/blobs/not-a-blob-id"),
        400,
        "invalid_blob_id",
    );
    assert_error(
        &api,
        api.request(Method::GET, "/v1/nothing-here"),
        404,
        "not_found",
    );
    assert_error(
        &api,
        api.request(Method::DELETE, "/v1/collections"),
        405,
        "method_not_allowed",
    );

    // Nothing changed.
    let (status, body) = api.send(api.request(Method::GET, "/v1/collections/contacts/records/ada"));
    let mut want = original.clone();
    want["id"] = json!("ada");
    assert_eq!((status, body), (200, want));
    let (_, list) = api.send(api.request(Method::GET, "/v1/collections"));
    assert_eq!(list, json!([{"name": "contacts", "records": 1}]));
    node.stop();
}

#[test]
fn the_cli_says_what_is_wrong_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = one_line_error(&hearth(&["--home", empty.to_str().unwrap(), "status"]));
    assert!(err.contains("not a Hearth vault"), "{err}");

    let home = dir.path().join("v");
    hearth_json(&home, &["init"]);
    let err = one_line_error(&hearth(&[
        "--home",
        home.to_str().unwrap(),
        "ls",
        "contacts",
    ]));
    assert!(err.contains("no Hearth node is running"), "{err}");

    let node = spawn_node(&home, &[]);
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    for (args, needle) in [
        (
            vec!["put", "contacts", "ada", "{not json"],
            "not valid JSON",
        ),
        (vec!["put", "contacts", "ada", "[1]"], "JSON object"),
        (vec!["put", "Contacts", "ada", "{}"], "collection name"),
        (vec!["get", "contacts", ".."], "record id"),
        (vec!["get", "contacts", "nobody"], "no record"),
        (
            vec!["put", "contacts", "ada", "@/no/such/file"],
            "cannot read",
        ),
        (vec!["blob", "get", "nope"], "blob id"),
        (vec!["blob", "get", &"cd".repeat(32)], "no blob"),
        (vec!["put", "_devices", "x", "{}"], "system"),
        (vec!["devices", "remove", "not-a-peer"], "PeerId"),
    ] {
        let err = one_line_error(&node.run(&args));
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(
        node.json(&["get", "contacts", "ada"]),
        json!({"id": "ada", "name": "Ada"})
    );
    node.stop();
}

#[test]
fn a_tampered_blob_is_reported_corrupt_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("v");
    let node = spawn_node(&home, &[]);
    let api = Api::new(&node);
    let blob = b"a small blob that fits in one chunk ".repeat(100);
    let (_, info) = api.send(api.request(Method::POST, "/v1/blobs").body(blob.clone()));
    let id = info["id"].as_str().unwrap().to_owned();
    node.stop();
    let chunks: Vec<_> = files_under(&home.join("blobs"));
    assert_eq!(chunks.len(), 1);
    let mut sealed = std::fs::read(&chunks[0]).unwrap();
    let middle = sealed.len() / 2;
    sealed[middle] ^= 0x10;
    std::fs::write(&chunks[0], sealed).unwrap();

    let node = spawn_node(&home, &[]);
    let api = Api::new(&node);
    let (status, body): (u16, Value) =
        api.send(api.request(Method::GET, &format!("/v1/blobs/{id}")));
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "corrupt");
    let out = dir.path().join("out");
    let err = one_line_error(&node.run(&["blob", "get", &id, "-o", out.to_str().unwrap()]));
    assert!(err.contains("corrupt"), "{err}");
    assert!(!out.exists());
    node.stop();
}
