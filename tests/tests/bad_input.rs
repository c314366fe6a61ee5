//! Every bad input gets a clear error — the status and JSON error of docs/API.md, or one
//! line from the CLI — and nothing stored is lost or altered. A tampered blob is
//! reported corrupt and never served.

use hearth_tests::*;
use reqwest::Method;
use reqwest::blocking::RequestBuilder;
use serde_json::{Value, json};

/// Sends `request` and asserts the answer is `status` with the error body
/// `{"error": {"code": CODE, "message": "..."}}` and nothing else.
#[track_caller]
fn assert_error(api: &Api, request: RequestBuilder, status: u16, code: &str) {
    let answer = api.send_raw(request);
    let text = String::from_utf8_lossy(&answer.body);
    assert_eq!(
        answer.status, status,
        "expected {status} {code}, got: {text}"
    );
    let body: Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("the {status} error body is not JSON ({e}): {text:?}"));
    assert!(
        answer
            .content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("application/json")),
        "content-type of an error: {:?}",
        answer.content_type
    );
    let top = body.as_object().expect("an error is a JSON object");
    assert_eq!(top.len(), 1, "only \"error\" at the top: {body}");
    let error = body["error"].as_object().expect("\"error\" is an object");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "an error needs a message: {body}"
    );
}

#[test]
fn the_api_refuses_bad_input_and_keeps_what_it_has() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    let original = json!({"name": "Ada", "tags": ["a"], "n": 1.5});
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/collections/contacts/records/ada")
            .json(&original),
    );
    assert_eq!(status, 201);
    let blob = b"a blob that stays".to_vec();
    let (status, blob_info) = api.send(api.request(Method::POST, "/v1/blobs").body(blob.clone()));
    assert_eq!(status, 201);

    let json_body = |method: Method, path: &str, body: &str| {
        api.request(method, path)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let ada = "/v1/collections/contacts/records/ada";
    let records = "/v1/collections/contacts/records";

    // Malformed JSON and non-objects, on every write route.
    for (method, path) in [
        (Method::PUT, ada),
        (Method::POST, records),
        (Method::PATCH, ada),
    ] {
        for bad in ["{\"name\": ", "", "{name: 1}", "{\"a\":1}}", "nul"] {
            assert_error(&api, json_body(method.clone(), path, bad), 400, "bad_json");
        }
        for not_object in ["[1,2]", "\"x\"", "42", "null", "true"] {
            assert_error(
                &api,
                json_body(method.clone(), path, not_object),
                400,
                "not_an_object",
            );
        }
    }

    // Collection names.
    let long_ok = format!("c{}", "a".repeat(62));
    let too_long = format!("c{}", "a".repeat(63));
    for bad in [
        "Bad!",
        "Contacts",
        "1abc",
        "-abc",
        "a.b",
        "a%20b",
        too_long.as_str(),
        "%C3%A9t%C3%A9",
    ] {
        assert_error(
            &api,
            json_body(
                Method::PUT,
                &format!("/v1/collections/{bad}/records/x"),
                "{}",
            ),
            400,
            "invalid_collection",
        );
        assert_error(
            &api,
            api.request(Method::GET, &format!("/v1/collections/{bad}/records")),
            400,
            "invalid_collection",
        );
    }
    let (status, body) = api.send(json_body(
        Method::PUT,
        &format!("/v1/collections/{long_ok}/records/x"),
        "{}",
    ));
    assert_eq!(
        status, 201,
        "a 63-character collection name is valid: {body}"
    );
    let (status, _) = api.send(api.request(
        Method::DELETE,
        &format!("/v1/collections/{long_ok}/records/x"),
    ));
    assert_eq!(status, 204);

    // Record ids: in the path, and a body "id" that disagrees with it.
    let id_ok = "A-z_0.9~x".to_owned() + &"i".repeat(119);
    let id_too_long = "i".repeat(129);
    for bad in [
        "a%20b",
        ".hidden",
        "a%2Fb",
        "caf%C3%A9",
        "a%3Ab",
        id_too_long.as_str(),
    ] {
        assert_error(
            &api,
            json_body(Method::PUT, &format!("{records}/{bad}"), "{}"),
            400,
            "invalid_id",
        );
        assert_error(
            &api,
            api.request(Method::GET, &format!("{records}/{bad}")),
            400,
            "invalid_id",
        );
    }
    assert_error(
        &api,
        json_body(Method::PUT, ada, r#"{"id": "other"}"#),
        400,
        "invalid_id",
    );
    assert_error(
        &api,
        json_body(Method::POST, records, r#"{"id": "not ok"}"#),
        400,
        "invalid_id",
    );
    let (status, body) = api.send(json_body(Method::POST, records, r#"{"id": 7}"#));
    assert_eq!(status, 400, "a number as the id: {body}");
    assert!(
        ["invalid_id", "bad_request"].contains(&body["error"]["code"].as_str().unwrap_or("")),
        "{body}"
    );
    assert_eq!(id_ok.len(), 128);
    let (status, body) = api.send(json_body(Method::PUT, &format!("{records}/{id_ok}"), "{}"));
    assert_eq!(status, 201, "a 128-character id is valid: {body}");
    let (status, _) = api.send(api.request(Method::DELETE, &format!("{records}/{id_ok}")));
    assert_eq!(status, 204);

    // Size: just under the limit is fine, over it is 413, on PUT, POST and PATCH.
    let big_ok = json!({"x": "b".repeat(1024 * 1024 - 100)}).to_string();
    let (status, body) = api.send(json_body(Method::PUT, &format!("{records}/big"), &big_ok));
    assert_eq!(status, 201, "a record just under 1 MiB is accepted: {body}");
    let (status, body) = api.send(api.request(Method::GET, &format!("{records}/big")));
    assert_eq!(status, 200);
    assert_eq!(body["x"].as_str().map(str::len), Some(1024 * 1024 - 100));
    let (status, _) = api.send(api.request(Method::DELETE, &format!("{records}/big")));
    assert_eq!(status, 204);
    let huge = format!("{{\"x\": \"{}\"}}", "a".repeat(1024 * 1024 + 10));
    for (method, path) in [
        (Method::PUT, ada),
        (Method::POST, records),
        (Method::PATCH, ada),
    ] {
        assert_error(&api, json_body(method, path, &huge), 413, "too_large");
    }

    // System collections are not writable here, whatever the route.
    for coll in ["_devices", "_access", "_mine"] {
        let path = format!("/v1/collections/{coll}/records/x");
        assert_error(&api, json_body(Method::PUT, &path, "{}"), 403, "reserved");
        assert_error(&api, json_body(Method::PATCH, &path, "{}"), 403, "reserved");
        assert_error(&api, api.request(Method::DELETE, &path), 403, "reserved");
        assert_error(
            &api,
            json_body(
                Method::POST,
                &format!("/v1/collections/{coll}/records"),
                "{}",
            ),
            403,
            "reserved",
        );
    }

    // Tokens: on reads and writes, records, blobs and status.
    for (method, path) in [
        (Method::GET, ada),
        (Method::PUT, ada),
        (Method::GET, "/v1/status"),
        (Method::GET, "/v1/collections"),
        (Method::POST, "/v1/blobs"),
        (Method::GET, "/v1/blobs"),
    ] {
        assert_error(
            &api,
            api.raw(method.clone(), path).body("{}"),
            401,
            "missing_token",
        );
        assert_error(
            &api,
            api.raw(method.clone(), path)
                .header("authorization", "Basic abc")
                .body("{}"),
            401,
            "missing_token",
        );
        assert_error(
            &api,
            api.raw(method.clone(), path)
                .bearer_auth("hearth_owner_wrong")
                .body("{}"),
            401,
            "invalid_token",
        );
        let almost = format!("{}x", node.owner_token());
        assert_error(
            &api,
            api.raw(method, path).bearer_auth(almost).body("{}"),
            401,
            "invalid_token",
        );
    }

    // Not found.
    assert_error(
        &api,
        api.request(Method::GET, &format!("{records}/nobody")),
        404,
        "not_found",
    );
    assert_error(
        &api,
        json_body(Method::PATCH, &format!("{records}/nobody"), r#"{"a": 1}"#),
        404,
        "not_found",
    );
    assert_error(
        &api,
        api.request(Method::DELETE, &format!("{records}/nobody")),
        404,
        "not_found",
    );
    assert_error(
        &api,
        api.request(Method::GET, &format!("/v1/blobs/{}", "ab".repeat(32))),
        404,
        "not_found",
    );
    let bad_blob_ids = [
        "not-a-blob-id".to_owned(),
        "AB".repeat(32),
        "a".repeat(63),
        "a".repeat(65),
        "g".repeat(64),
    ];
    for bad in &bad_blob_ids {
        assert_error(
            &api,
            api.request(Method::GET, &format!("/v1/blobs/{bad}")),
            400,
            "invalid_blob_id",
        );
    }
    for path in [
        "/v1/nothing-here",
        "/nothing",
        "/v2/status",
        "/v1/collections/contacts/records/ada/more",
    ] {
        assert_error(&api, api.request(Method::GET, path), 404, "not_found");
    }
    assert_error(
        &api,
        api.request(Method::DELETE, "/v1/collections"),
        405,
        "method_not_allowed",
    );

    // Nothing changed.
    let (status, body) = api.send(api.request(Method::GET, ada));
    let mut want = original.clone();
    want["id"] = json!("ada");
    assert_eq!((status, body), (200, want.clone()));
    let (_, list) = api.send(api.request(Method::GET, records));
    assert_eq!(list, json!([want]));
    // (The collection made to try the longest name may stay listed, empty.)
    let (_, list) = api.send(api.request(Method::GET, "/v1/collections"));
    let list: Vec<&Value> = list
        .as_array()
        .expect("an array")
        .iter()
        .filter(|c| c["name"] != long_ok.as_str() || c["records"] != 0)
        .collect();
    assert_eq!(list, [&json!({"name": "contacts", "records": 1})]);
    let answer = api.send_raw(api.request(
        Method::GET,
        &format!("/v1/blobs/{}", blob_info["id"].as_str().unwrap()),
    ));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, blob);
    let (_, blobs) = api.send(api.request(Method::GET, "/v1/blobs"));
    assert_eq!(blobs.as_array().map(Vec::len), Some(1), "{blobs}");
    node.stop();
}

#[test]
fn the_cli_says_what_is_wrong_in_one_line() {
    let t = TestHome::new();

    // HOMEs that are not vaults.
    let empty = t.dir().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for args in [
        &["status"][..],
        &["ls", "contacts"],
        &["get", "contacts", "ada"],
    ] {
        let err = one_line_error(&cli(&empty, args));
        assert!(err.contains("not a Hearth vault"), "{args:?}: {err}");
    }
    let missing = t.dir().join("does-not-exist");
    let err = one_line_error(&cli(&missing, &["status"]));
    assert!(err.contains("not a Hearth vault"), "{err}");
    assert!(
        !missing.exists(),
        "a client command created {}",
        missing.display()
    );

    // A vault with no node: every client command says so, and how to start one.
    let home = t.path();
    cli_json(home, &["init"]);
    let blob_file = t.file("b.bin", b"bytes");
    let hex = "cd".repeat(32);
    let out_file = t.dir().join("out.bin");
    let client_commands: [&[&str]; 9] = [
        &["status"],
        &["ls", "contacts"],
        &["get", "contacts", "ada"],
        &["put", "contacts", "ada", "{}"],
        &["patch", "contacts", "ada", "{}"],
        &["rm", "contacts", "ada"],
        &["collections"],
        &["blob", "put", blob_file.to_str().unwrap()],
        &["blob", "get", &hex, "-o", out_file.to_str().unwrap()],
    ];
    let no_node = |when: &str| {
        for args in client_commands {
            for json in [false, true] {
                let mut all = args.to_vec();
                if json {
                    all.push("--json");
                }
                let err = one_line_error(&cli(home, &all));
                assert!(
                    err.contains("no Hearth node is running"),
                    "{when} {all:?}: {err}"
                );
                assert!(
                    err.contains("hearth") && err.contains("up"),
                    "{when} {all:?}: {err}"
                );
            }
        }
    };
    no_node("no api.addr");
    // An api.addr where nothing answers.
    std::fs::write(home.join("api.addr"), format!("{}\n", dead_loopback_addr())).unwrap();
    no_node("a stale api.addr");
    std::fs::remove_file(home.join("api.addr")).unwrap();

    let node = spawn_node(home, &[]);
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    let too_big = t.file(
        "big.json",
        format!("{{\"x\": \"{}\"}}", "a".repeat(1024 * 1024 + 10)),
    );
    let too_big_arg = format!("@{}", too_big.display());
    let long_id = "i".repeat(129);
    let out_arg = out_file.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["put", "contacts", "ada", "{not json"], "JSON"),
        (vec!["put", "contacts", "ada", "[1]"], "object"),
        (vec!["put", "contacts", "ada", "\"x\""], "object"),
        (vec!["put", "contacts", "ada", r#"{"id": "other"}"#], "id"),
        (vec!["put", "contacts", "ada", &too_big_arg], "large"),
        (vec!["put", "Contacts", "ada", "{}"], "collection"),
        (vec!["ls", "Bad!"], "collection"),
        (vec!["get", "contacts", ".."], "id"),
        (vec!["get", "contacts", &long_id], "id"),
        (vec!["get", "contacts", "nobody"], "nobody"),
        (vec!["patch", "contacts", "nobody", r#"{"a": 1}"#], "nobody"),
        (vec!["patch", "contacts", "ada", "{oops"], "JSON"),
        (vec!["patch", "contacts", "ada", "[]"], "object"),
        (vec!["rm", "contacts", "nobody"], "nobody"),
        (
            vec!["put", "contacts", "ada", "@/no/such/file"],
            "/no/such/file",
        ),
        (vec!["blob", "put", "/no/such/file"], "/no/such/file"),
        (vec!["blob", "get", "nope", "-o", out_arg], "blob id"),
        (vec!["blob", "get", &hex, "-o", out_arg], "blob"),
        (vec!["put", "_devices", "x", "{}"], "_devices"),
        (vec!["rm", "_devices", "x"], "_devices"),
        (vec!["devices", "remove", "not-a-peer"], "PeerId"),
    ];
    for (args, needle) in &cases {
        for json in [false, true] {
            let mut all = args.clone();
            if json {
                all.push("--json");
            }
            let err = one_line_error(&node.run(&all));
            assert!(
                err.to_lowercase().contains(&needle.to_lowercase()),
                "{all:?}: expected {needle:?} in {err:?}"
            );
        }
    }
    // Bad JSON on stdin.
    let out = hearth_with_stdin(
        &["--home", t.as_str(), "put", "contacts", "ada", "-"],
        b"{\"x\":",
    );
    let err = one_line_error(&out);
    assert!(err.contains("JSON"), "{err}");

    assert_eq!(
        node.json(&["get", "contacts", "ada"]),
        json!({"id": "ada", "name": "Ada"})
    );
    assert_eq!(
        node.json(&["collections"]),
        json!([{"name": "contacts", "records": 1}])
    );
    node.stop();
}

/// Flips one byte in the middle of `file`.
fn flip_middle_byte(file: &std::path::Path) {
    let mut sealed = std::fs::read(file).unwrap();
    let middle = sealed.len() / 2;
    sealed[middle] ^= 0x10;
    std::fs::write(file, sealed).unwrap();
}

/// Fetches a tampered blob: the only acceptable answers are an error with one of
/// `codes` before any byte, or a `200` whose body breaks off — never a whole body,
/// original or altered.
fn assert_not_served(api: &Api, id: &str, original: &[u8], codes: &[&str]) {
    let response = api
        .request(Method::GET, &format!("/v1/blobs/{id}"))
        .send()
        .expect("the node answers");
    let status = response.status().as_u16();
    let declared = response.content_length();
    let body = response.bytes();
    match (status, body) {
        (400.., Ok(body)) => {
            let body: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "{status} with a non-JSON body ({e}): {:?}",
                    String::from_utf8_lossy(&body)
                )
            });
            let code = body["error"]["code"].as_str().unwrap_or_default();
            assert!(
                codes.contains(&code),
                "{status} {body}: expected one of {codes:?}"
            );
        }
        (200, Err(_)) => {} // aborted mid-stream: the client sees a broken body
        (200, Ok(body)) => {
            assert!(
                body.as_ref() != original,
                "the tampered blob was served as the original"
            );
            panic!(
                "a tampered blob was served as a whole 200 body ({} of {} bytes, content-length {declared:?})",
                body.len(),
                original.len()
            );
        }
        (status, body) => panic!("unexpected answer {status} for a tampered blob: {body:?}"),
    }
}

#[test]
fn a_tampered_blob_is_reported_corrupt_never_served() {
    let t = TestHome::new();
    let home = t.path();
    let node = spawn_node(home, &[]);
    let api = Api::new(&node);
    let blob = b"a small blob that fits in one chunk ".repeat(100);
    let (status, info) = api.send(api.request(Method::POST, "/v1/blobs").body(blob.clone()));
    assert_eq!(status, 201, "{info}");
    let id = info["id"].as_str().unwrap().to_owned();
    node.stop();
    let chunks = files_under(&home.join("blobs"));
    assert_eq!(chunks.len(), 1, "one chunk file: {chunks:?}");
    flip_middle_byte(&chunks[0]);

    let node = spawn_node(home, &[]);
    let api = Api::new(&node);
    assert_not_served(&api, &id, &blob, &["corrupt"]);
    // A second time: the node still refuses, and still runs.
    assert_not_served(&api, &id, &blob, &["corrupt"]);
    let out = t.dir().join("out");
    let err = one_line_error(&node.run(&["blob", "get", &id, "-o", out.to_str().unwrap()]));
    assert!(err.contains("corrupt"), "{err}");
    assert!(!out.exists(), "a corrupt blob left an output file");
    let stdout = node.run(&["blob", "get", &id]);
    let err = one_line_error(&stdout);
    assert!(err.contains("corrupt"), "{err}");
    assert!(stdout.stdout != blob);
    let (status, _) = api.send(api.request(Method::GET, "/v1/status"));
    assert_eq!(status, 200);
    node.stop();
}

#[test]
fn a_tampered_chunk_of_a_large_blob_is_never_served() {
    let t = TestHome::new();
    let home = t.path();
    let node = spawn_node(home, &[]);
    let api = Api::new(&node);
    let blob: Vec<u8> = (0..2_700_000u32).map(|i| (i % 253) as u8).collect();
    let (status, info) = api.send(api.request(Method::POST, "/v1/blobs").body(blob.clone()));
    assert_eq!(status, 201, "{info}");
    let id = info["id"].as_str().unwrap().to_owned();
    node.stop();
    let chunks = files_under(&home.join("blobs"));
    assert!(
        chunks.len() >= 3,
        "a 2.7 MB blob in 1 MiB chunks: {chunks:?}"
    );
    // Tamper with the smallest chunk file, the last chunk: by then a streaming node
    // has sent the status and the first chunks, and must break the body off.
    let target = chunks
        .iter()
        .min_by_key(|c| std::fs::metadata(c).unwrap().len())
        .unwrap();
    flip_middle_byte(target);

    let node = spawn_node(home, &[]);
    let api = Api::new(&node);
    assert_not_served(&api, &id, &blob, &["corrupt"]);
    let out = t.dir().join("out");
    let err = one_line_error(&node.run(&["blob", "get", &id, "-o", out.to_str().unwrap()]));
    assert!(err.contains("corrupt"), "{err}");
    assert!(
        !out.exists(),
        "a corrupt blob left a partial output file ({} bytes)",
        std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0)
    );
    node.stop();
}

#[test]
fn a_truncated_or_missing_chunk_is_not_served() {
    let t = TestHome::new();
    let home = t.path();
    let node = spawn_node(home, &[]);
    let api = Api::new(&node);
    let one = b"first blob, one chunk".repeat(50);
    let two = b"second blob, one chunk".repeat(50);
    let (_, a) = api.send(api.request(Method::POST, "/v1/blobs").body(one.clone()));
    let before = files_under(&home.join("blobs"));
    let (_, b) = api.send(api.request(Method::POST, "/v1/blobs").body(two.clone()));
    node.stop();
    let after = files_under(&home.join("blobs"));
    assert_eq!(before.len(), 1);
    assert_eq!(after.len(), 2);
    let chunk_a = &before[0];
    let chunk_b = after.iter().find(|c| *c != chunk_a).unwrap();
    // Truncate one chunk file; delete the other.
    let sealed = std::fs::read(chunk_a).unwrap();
    std::fs::write(chunk_a, &sealed[..sealed.len() / 2]).unwrap();
    std::fs::remove_file(chunk_b).unwrap();

    let node = spawn_node(home, &[]);
    let api = Api::new(&node);
    assert_not_served(&api, a["id"].as_str().unwrap(), &one, &["corrupt"]);
    assert_not_served(
        &api,
        b["id"].as_str().unwrap(),
        &two,
        &["corrupt", "not_found", "storage"],
    );
    one_line_error(&node.run(&["blob", "get", b["id"].as_str().unwrap()]));
    node.stop();
}
