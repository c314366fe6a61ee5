//! One device, driven as a user would: init, up, records and blobs through the CLI and
//! HTTP, a clean stop and a restart, global flags, passphrases, file modes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hearth_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Every JSON shape a record can hold, with values that break lossy encodings.
fn rich_record() -> Value {
    json!({
        "name": "Ada Lovelace",
        "age": 36,
        "neg": -7,
        "zero": 0,
        "i64_min": i64::MIN,
        "u64_max": u64::MAX,
        "pi": 3.25,
        "neg_f": -0.125,
        "tiny": 1e-7,
        "huge": 1.5e300,
        "whole_f": 3.0,
        "ok": true,
        "no": false,
        "none": null,
        "empty_s": "",
        "empty_o": {},
        "empty_a": [],
        "unicode": "héllo wörld ✓ 日本語 😀",
        "escapes": "quote\" backslash\\ newline\n tab\t nul\u{0} bell\u{7}",
        "tags": ["math", 1, -2.5, true, null, {"nested": [1, [2, [3]]]}],
        "addr": {"city": "London", "geo": {"lat": 51.5072, "lon": -0.1276}, "lines": []},
    })
}

fn with_id(record: &Value, id: &str) -> Value {
    let mut record = record.clone();
    record["id"] = json!(id);
    record
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn no_node_error(home: &Path, args: &[&str]) {
    let err = one_line_error(&cli(home, args));
    assert!(err.contains("no Hearth node is running"), "{args:?}: {err}");
    let out = cli(home, &[args, &["--json"]].concat());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["error"]["code"], "not_running", "{args:?}: {answer}");
    assert!(
        err.contains("hearth up") || err.contains(" up`"),
        "{args:?}: {err}"
    );
}

#[test]
fn init_creates_a_vault_with_private_key_files() {
    let t = TestHome::new();
    let made = cli_json(t.path(), &["init"]);
    assert_eq!(made["passphrase"], false, "{made}");
    for field in ["home", "peer_id", "vault_id"] {
        assert!(
            made[field].as_str().is_some_and(|s| !s.is_empty()),
            "init --json lacks {field}: {made}"
        );
    }
    assert_eq!(
        Path::new(made["home"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        t.path().canonicalize().unwrap()
    );
    for f in ["keys", "owner.token"] {
        assert!(t.path().join(f).is_file(), "{f} is missing");
        assert_eq!(mode(&t.path().join(f)), 0o600, "{f}");
    }
    assert!(t.path().join("store").is_dir(), "store/ is missing");
    assert!(t.path().join("blobs").is_dir(), "blobs/ is missing");
    let token = std::fs::read_to_string(t.path().join("owner.token")).unwrap();
    assert!(!token.trim().is_empty());

    // The node runs the vault init made.
    let node = spawn_node(t.path(), &[]);
    assert_eq!(node.peer_id, made["peer_id"]);
    let status = node.json(&["status"]);
    assert_eq!(status["vault_id"], made["vault_id"], "{status}");
    assert_eq!(status["peer_id"], made["peer_id"], "{status}");
    node.stop();
}

#[test]
fn records_and_blobs_through_the_cli_survive_a_restart() {
    let t = TestHome::new();
    let home = t.path();
    cli_json(home, &["init"]);
    let node = spawn_node(home, &[]);
    assert_eq!(
        std::fs::read_to_string(home.join("api.addr"))
            .unwrap()
            .trim(),
        node.api_addr
    );

    // put with an id, get it back exactly.
    let rich = rich_record();
    let put = cli_json(home, &["put", "contacts", "ada", &rich.to_string()]);
    assert_eq!(put, json!({"id": "ada", "created": true}));
    assert_eq!(
        cli_json(home, &["get", "contacts", "ada"]),
        with_id(&rich, "ada"),
        "the record does not round-trip exactly through put/get"
    );
    // Replacing says so.
    let put = cli_json(home, &["put", "contacts", "ada", &rich.to_string()]);
    assert_eq!(put, json!({"id": "ada", "created": false}));

    // The id from the body; a generated id; @FILE; stdin; human output prints the id.
    let put = cli_json(home, &["put", "contacts", r#"{"id": "from-body", "n": 1}"#]);
    assert_eq!(put["id"], "from-body");
    assert_eq!(
        cli_json(home, &["get", "contacts", "from-body"]),
        json!({"id": "from-body", "n": 1})
    );
    let generated = cli_json(home, &["put", "contacts", r#"{"name": "Bob"}"#]);
    assert_eq!(generated["created"], true);
    let bob = generated["id"].as_str().expect("a generated id").to_owned();
    assert!(!bob.is_empty());
    assert_eq!(
        cli_json(home, &["get", "contacts", &bob]),
        json!({"id": bob, "name": "Bob"})
    );
    let file = t.file("carol.json", r#"{"name": "Carol", "tags": ["x"]}"#);
    cli_json(
        home,
        &["put", "contacts", "carol", &format!("@{}", file.display())],
    );
    let out = hearth_with_stdin(
        &["--home", t.as_str(), "put", "contacts", "dave", "-"],
        br#"{"name": "Dave"}"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dave"),
        "human put prints the id: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        cli_json(home, &["get", "contacts", "dave"]),
        json!({"id": "dave", "name": "Dave"})
    );

    // patch: merge patch, nested, null removes, arrays replaced; --json prints the result.
    let patched = cli_json(
        home,
        &[
            "patch",
            "contacts",
            "ada",
            r#"{"age": null, "email": "ada@example.org", "addr": {"city": null, "zip": "N1"}, "tags": [0]}"#,
        ],
    );
    let mut ada = with_id(&rich, "ada");
    ada.as_object_mut().unwrap().remove("age");
    ada["email"] = json!("ada@example.org");
    ada["addr"].as_object_mut().unwrap().remove("city");
    ada["addr"]["zip"] = json!("N1");
    ada["tags"] = json!([0]);
    assert_eq!(patched, ada);
    assert_eq!(cli_json(home, &["get", "contacts", "ada"]), ada);
    let patch_file = t.file("patch.json", r#"{"tags": ["y", "z"]}"#);
    let carol = cli_json(
        home,
        &[
            "patch",
            "contacts",
            "carol",
            &format!("@{}", patch_file.display()),
        ],
    );
    assert_eq!(
        carol,
        json!({"id": "carol", "name": "Carol", "tags": ["y", "z"]})
    );

    // ls is sorted by id; rm; collections.
    for id in ["zeta", "m9", "alpha", "m10"] {
        cli_json(home, &["put", "sorted", id, &format!(r#"{{"v": "{id}"}}"#)]);
    }
    let ids: Vec<_> = cli_json(home, &["ls", "sorted"])
        .as_array()
        .expect("ls --json prints an array")
        .iter()
        .map(|r| r["id"].as_str().expect("each record has its id").to_owned())
        .collect();
    assert_eq!(ids, ["alpha", "m10", "m9", "zeta"]);
    assert_eq!(
        cli_json(home, &["rm", "contacts", &bob]),
        json!({"id": bob, "removed": true})
    );
    one_line_error(&cli(home, &["get", "contacts", &bob]));
    assert_eq!(cli_json(home, &["ls", "nothing-here"]), json!([]));
    assert_eq!(
        cli_json(home, &["collections"]),
        json!([{"name": "contacts", "records": 4}, {"name": "sorted", "records": 4}])
    );

    // Blobs: put a file, get it to a file and to stdout.
    let blob: Vec<u8> = (0..1_300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let blob_file = t.file("photo.bin", &blob);
    let stored = cli_json(home, &["blob", "put", blob_file.to_str().unwrap()]);
    let blob_id = stored["id"].as_str().expect("blob id").to_owned();
    assert_eq!(blob_id.len(), 64, "{stored}");
    assert!(
        blob_id
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{stored}"
    );
    assert_eq!(stored["size"], blob.len() as u64);
    let again = cli_json(home, &["blob", "put", blob_file.to_str().unwrap()]);
    assert_eq!(again["id"], blob_id.as_str(), "same content, same id");
    let out_file = t.dir().join("photo.out");
    let got = cli_json(
        home,
        &["blob", "get", &blob_id, "-o", out_file.to_str().unwrap()],
    );
    assert_eq!(got["id"], blob_id.as_str(), "{got}");
    assert_eq!(got["size"], blob.len() as u64, "{got}");
    assert!(got["path"].is_string(), "{got}");
    assert!(std::fs::read(&out_file).unwrap() == blob);
    let out = cli(home, &["blob", "get", &blob_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == blob, "blob get to stdout: wrong bytes");

    let status = cli_json(home, &["status"]);
    for field in ["peer_id", "vault_id", "api_addr", "collections", "blobs"] {
        assert!(
            status.get(field).is_some(),
            "status lacks {field}: {status}"
        );
    }
    assert_eq!(status["api_addr"], node.api_addr.as_str());
    assert_eq!(status["collections"], cli_json(home, &["collections"]));
    assert_eq!(status["blobs"], 1, "{status}");

    // A clean stop: exit 0, one line on stdout in all, api.addr gone, clients say so.
    let exited = node.stop();
    assert_eq!(
        exited.stdout_rest.trim(),
        "",
        "hearth up --json printed more than its ready line"
    );
    assert!(!home.join("api.addr").exists());
    no_node_error(home, &["ls", "contacts"]);

    // Start again: everything is there.
    let node = spawn_node(home, &[]);
    assert_eq!(cli_json(home, &["get", "contacts", "ada"]), ada);
    assert_eq!(cli_json(home, &["get", "contacts", "carol"]), carol);
    assert_eq!(
        cli_json(home, &["ls", "contacts"]),
        json!([
            ada,
            carol,
            {"id": "dave", "name": "Dave"},
            {"id": "from-body", "n": 1},
        ])
    );
    assert_eq!(
        cli_json(home, &["collections"]),
        json!([{"name": "contacts", "records": 4}, {"name": "sorted", "records": 4}])
    );
    let out = cli(home, &["blob", "get", &blob_id]);
    assert!(
        out.status.success() && out.stdout == blob,
        "the blob after a restart"
    );
    node.stop();
}

#[test]
fn records_and_blobs_through_http_follow_the_api() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    let rich = rich_record();

    let (status, body) = api.send(
        api.request(Method::PUT, "/v1/collections/notes/records/n1")
            .json(&json!({"text": "hi"})),
    );
    assert_eq!((status, body), (201, json!({"id": "n1", "created": true})));
    let (status, body) = api.send(
        api.request(Method::PUT, "/v1/collections/notes/records/n1")
            .json(&json!({"text": "hello", "id": "n1"})),
    );
    assert_eq!((status, body), (200, json!({"id": "n1", "created": false})));
    let (status, body) = api.send(api.request(Method::GET, "/v1/collections/notes/records/n1"));
    assert_eq!((status, body), (200, json!({"id": "n1", "text": "hello"})));

    let (status, body) = api.send(
        api.request(Method::PUT, "/v1/collections/notes/records/rich")
            .json(&rich),
    );
    assert_eq!(
        (status, body),
        (201, json!({"id": "rich", "created": true}))
    );
    let (status, body) = api.send(api.request(Method::GET, "/v1/collections/notes/records/rich"));
    assert_eq!(status, 200);
    assert_eq!(
        body,
        with_id(&rich, "rich"),
        "the record does not round-trip exactly over HTTP"
    );

    // POST: a new random id, or the body's.
    let (status, body) = api.send(
        api.request(Method::POST, "/v1/collections/notes/records")
            .json(&json!({"text": "new"})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], true);
    let n2 = body["id"].as_str().expect("an id").to_owned();
    let (status, body) = api.send(
        api.request(Method::POST, "/v1/collections/notes/records")
            .json(&json!({"id": "chosen", "text": "mine"})),
    );
    assert_eq!(
        (status, body),
        (201, json!({"id": "chosen", "created": true}))
    );
    let (status, body) =
        api.send(api.request(Method::GET, &format!("/v1/collections/notes/records/{n2}")));
    assert_eq!((status, body), (200, json!({"id": n2, "text": "new"})));

    // PATCH: RFC 7396.
    let (status, body) = api.send(
        api.request(Method::PATCH, "/v1/collections/notes/records/n1")
            .json(&json!({"pinned": true, "meta": {"a": 1, "b": {"c": 2}}})),
    );
    assert_eq!(
        (status, body),
        (
            200,
            json!({"id": "n1", "text": "hello", "pinned": true, "meta": {"a": 1, "b": {"c": 2}}})
        )
    );
    let (status, body) = api.send(
        api.request(Method::PATCH, "/v1/collections/notes/records/n1")
            .json(&json!({"pinned": null, "meta": {"b": {"c": null, "d": [1]}}})),
    );
    let n1 = json!({"id": "n1", "text": "hello", "meta": {"a": 1, "b": {"d": [1]}}});
    assert_eq!((status, body), (200, n1.clone()));

    // DELETE, then the list and the counts.
    let answer = api.send_raw(api.request(
        Method::DELETE,
        &format!("/v1/collections/notes/records/{n2}"),
    ));
    assert_eq!(answer.status, 204);
    assert!(answer.body.is_empty(), "204 has no body");
    let (status, _) =
        api.send(api.request(Method::GET, &format!("/v1/collections/notes/records/{n2}")));
    assert_eq!(status, 404);
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/collections/amber/records/a")
            .json(&json!({})),
    );
    assert_eq!(status, 201);
    let listed = json!([
        {"id": "chosen", "text": "mine"},
        n1,
        with_id(&rich, "rich"),
    ]);
    let (status, body) = api.send(api.request(Method::GET, "/v1/collections/notes/records"));
    assert_eq!((status, body), (200, listed.clone()));
    let (status, body) = api.send(api.request(Method::GET, "/v1/collections/unknown/records"));
    assert_eq!((status, body), (200, json!([])));
    let collections = json!([{"name": "amber", "records": 1}, {"name": "notes", "records": 3}]);
    let (status, body) = api.send(api.request(Method::GET, "/v1/collections"));
    assert_eq!((status, body), (200, collections.clone()));

    // Blobs.
    let blob: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    let (status, info) = api.send(api.request(Method::POST, "/v1/blobs").body(blob.clone()));
    assert_eq!(status, 201, "{info}");
    assert_eq!(info["size"], blob.len() as u64);
    let blob_id = info["id"].as_str().expect("blob id").to_owned();
    assert_eq!(blob_id.len(), 64);
    let (status, again) = api.send(api.request(Method::POST, "/v1/blobs").body(blob.clone()));
    assert!(status == 201 || status == 200, "{status}");
    assert_eq!(again["id"], blob_id.as_str(), "same content, same id");
    let response = api
        .request(Method::GET, &format!("/v1/blobs/{blob_id}"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(
        response.headers()["content-length"],
        blob.len().to_string().as_str()
    );
    assert_eq!(response.headers()["accept-ranges"], "bytes");
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    // 128 bits of the id: its bytes never change.
    assert_eq!(etag, format!("\"{}\"", &blob_id[..32]));
    assert!(response.bytes().unwrap().as_ref() == blob.as_slice());
    // Ranges (music, video, a resumed download): across a chunk edge, the tail, past
    // the end, under If-Range, and a conditional GET.
    let ranged = |range: &str, extra: Option<(&str, &str)>| {
        let mut request = api
            .request(Method::GET, &format!("/v1/blobs/{blob_id}"))
            .header("Range", range);
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let content_range = response
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, content_range, response.bytes().unwrap().to_vec())
    };
    let size = blob.len();
    let edge = 1_048_570;
    let (status, content_range, bytes) = ranged(&format!("bytes={edge}-{}", edge + 99), None);
    assert_eq!(status, 206);
    assert_eq!(
        content_range.unwrap(),
        format!("bytes {edge}-{}/{size}", edge + 99)
    );
    assert_eq!(bytes, blob[edge..edge + 100]);
    let (status, content_range, bytes) = ranged("bytes=-10", None);
    assert_eq!(
        (status, content_range.unwrap()),
        (206, format!("bytes {}-{}/{size}", size - 10, size - 1))
    );
    assert_eq!(bytes, blob[size - 10..]);
    let (status, content_range, _) = ranged(&format!("bytes={size}-"), None);
    assert_eq!(
        (status, content_range.unwrap()),
        (416, format!("bytes */{size}"))
    );
    let (status, _, bytes) = ranged("bytes=0-9", Some(("If-Range", "\"another\"")));
    assert_eq!(
        (status, bytes.len()),
        (200, size),
        "another version: the whole"
    );
    let (status, _, bytes) = ranged("bytes=0-9", Some(("If-Range", &etag)));
    assert_eq!((status, bytes), (206, blob[..10].to_vec()));
    let unchanged = api
        .request(Method::GET, &format!("/v1/blobs/{blob_id}"))
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(unchanged.status().as_u16(), 304);
    let (status, mut body) = api.send(api.request(Method::GET, "/v1/blobs"));
    assert_eq!(status, 200);
    assert!(body[0]["added"].as_u64().is_some(), "{body}");
    body[0].as_object_mut().unwrap().remove("added");
    // No name and no type: the upload gave none.
    assert_eq!(
        body,
        json!([{"id": blob_id, "size": blob.len(), "here": true}])
    );

    let (status, body) = api.send(api.request(Method::GET, "/v1/status"));
    assert_eq!(status, 200);
    for field in [
        "version",
        "vault_id",
        "peer_id",
        "home",
        "api_addr",
        "collections",
        "blobs",
        "devices",
    ] {
        assert!(body.get(field).is_some(), "status lacks {field}: {body}");
    }
    assert_eq!(body["peer_id"], node.peer_id.as_str());
    assert_eq!(body["api_addr"], node.api_addr.as_str());
    assert_eq!(body["collections"], collections);
    assert_eq!(body["blobs"], 1);

    // Stop, start: the same answers.
    node.stop();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    let (status, body) = api.send(api.request(Method::GET, "/v1/collections/notes/records"));
    assert_eq!((status, body), (200, listed));
    let (status, body) = api.send(api.request(Method::GET, "/v1/collections"));
    assert_eq!((status, body), (200, collections));
    let answer = api.send_raw(api.request(Method::GET, &format!("/v1/blobs/{blob_id}")));
    assert_eq!(answer.status, 200);
    assert!(answer.body == blob, "the blob after a restart");
    node.stop();
}

#[test]
fn home_and_json_work_before_and_after_the_command_and_from_the_environment() {
    let t = TestHome::new();
    let h = t.as_str();
    let node = spawn_node(t.path(), &[]);
    cli_json(t.path(), &["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    let want = json!({"id": "ada", "name": "Ada"});

    let placements: [&[&str]; 4] = [
        &["--home", h, "--json", "get", "contacts", "ada"],
        &["get", "contacts", "ada", "--home", h, "--json"],
        &["--home", h, "get", "contacts", "ada", "--json"],
        &["--json", "get", "--home", h, "contacts", "ada"],
    ];
    for args in placements {
        assert_eq!(parse_json_output(args, &hearth(args)), want, "{args:?}");
    }
    let args = [
        "put",
        "--json",
        "contacts",
        "bob",
        r#"{"name": "Bob"}"#,
        "--home",
        h,
    ];
    assert_eq!(
        parse_json_output(&args, &hearth(&args)),
        json!({"id": "bob", "created": true})
    );

    // HEARTH_HOME when there is no --home; --home wins over it.
    let args = ["--json", "get", "contacts", "ada"];
    let out = hearth_with_env(&args, &[("HEARTH_HOME", h)]);
    assert_eq!(parse_json_output(&args, &out), want);
    let args = ["ls", "contacts", "--json"];
    let out = hearth_with_env(&args, &[("HEARTH_HOME", h)]);
    assert_eq!(
        parse_json_output(&args, &out),
        json!([want, {"id": "bob", "name": "Bob"}])
    );
    let elsewhere = t.dir().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let args = ["--json", "--home", h, "get", "contacts", "ada"];
    let out = hearth_with_env(&args, &[("HEARTH_HOME", elsewhere.to_str().unwrap())]);
    assert_eq!(
        parse_json_output(&args, &out),
        want,
        "--home beats HEARTH_HOME"
    );

    // Without --json the output is not required to be JSON, but it succeeds.
    let out = cli(t.path(), &["get", "contacts", "ada"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Ada"));
    node.stop();
}

#[test]
fn init_refuses_an_existing_vault_and_changes_nothing() {
    let t = TestHome::new();
    let home = t.path();
    cli_json(home, &["init"]);
    let snapshot = || {
        (
            std::fs::read(home.join("keys")).unwrap(),
            std::fs::read(home.join("owner.token")).unwrap(),
        )
    };
    let before = snapshot();
    let err = one_line_error(&cli(home, &["init"]));
    assert!(err.contains("already"), "{err}");
    let pass = t.file("pass", "a new passphrase\n");
    one_line_error(&cli(
        home,
        &[
            "--json",
            "init",
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
    ));
    one_line_error(&hearth_with_env(
        &["--home", t.as_str(), "init"],
        &[("HEARTH_PASSPHRASE", "another")],
    ));
    assert!(
        before == snapshot(),
        "a refused init changed keys or owner.token"
    );
    assert_eq!(mode(&home.join("keys")), 0o600);
    assert_eq!(mode(&home.join("owner.token")), 0o600);

    // And the vault still works with no passphrase.
    let node = spawn_node(home, &[]);
    node.json(&["put", "c", "x", "{}"]);
    node.stop();
    assert!(before == snapshot());
}

#[test]
fn a_passphrase_protects_the_vault_and_a_wrong_one_is_refused() {
    let t = TestHome::new();
    let home = t.path();
    let h = t.as_str();
    let pass = t.file("pass", "correct horse battery\n");
    let made = cli_json(home, &["init", "--passphrase-file", pass.to_str().unwrap()]);
    assert_eq!(made["passphrase"], true);
    assert_eq!(mode(&home.join("keys")), 0o600);
    assert_eq!(mode(&home.join("owner.token")), 0o600);
    for file in files_under(home) {
        assert!(
            !contains_bytes(&std::fs::read(&file).unwrap(), b"correct horse"),
            "{} holds the passphrase",
            file.display()
        );
    }

    let node = spawn_node(home, &["--passphrase-file", pass.to_str().unwrap()]);
    node.json(&["put", "diary", "d1", r#"{"text": "kept", "n": [1, 2.5]}"#]);
    node.stop();
    let keys_before = std::fs::read(home.join("keys")).unwrap();

    // Wrong passphrases, every way they can come: each fails and names the passphrase.
    // (These runs must fail fast; a node that started anyway would hit the deadline.)
    let up = [
        "--home",
        h,
        "up",
        "--api",
        "127.0.0.1:0",
        "--no-mdns",
        "--no-mesh",
    ];
    let err = one_line_error(&hearth_with_env(&up, &[("HEARTH_PASSPHRASE", "wrong")]));
    assert!(err.contains("passphrase"), "{err}");
    let wrong_file = t.file("wrong", "correct horse battery staple\n");
    let mut with_file = up.to_vec();
    with_file.extend(["--passphrase-file", wrong_file.to_str().unwrap()]);
    let err = one_line_error(&hearth(&with_file));
    assert!(err.contains("passphrase"), "{err}");
    let err = one_line_error(&hearth(&up));
    assert!(err.contains("passphrase"), "no passphrase given: {err}");
    assert!(!home.join("api.addr").exists());
    assert!(
        keys_before == std::fs::read(home.join("keys")).unwrap(),
        "a failed unlock changed the keys"
    );

    // The right one, from the environment this time: the data is intact.
    let node = spawn_node_with_env(home, &[], &[("HEARTH_PASSPHRASE", "correct horse battery")]);
    assert_eq!(
        node.json(&["get", "diary", "d1"]),
        json!({"id": "d1", "text": "kept", "n": [1, 2.5]})
    );
    node.stop();
}

#[test]
fn init_reads_the_passphrase_from_the_environment() {
    let t = TestHome::new();
    let out = hearth_with_env(
        &["--home", t.as_str(), "--json", "init"],
        &[("HEARTH_PASSPHRASE", "from the environment")],
    );
    assert_eq!(parse_json_output(&["init"], &out)["passphrase"], true);
    let err = one_line_error(&hearth(&[
        "--home",
        t.as_str(),
        "up",
        "--api",
        "127.0.0.1:0",
        "--no-mdns",
        "--no-mesh",
    ]));
    assert!(err.contains("passphrase"), "{err}");
    let pass = t.file("pass", "from the environment");
    let node = spawn_node(t.path(), &["--passphrase-file", pass.to_str().unwrap()]);
    node.stop();
}

#[test]
fn up_creates_a_vault_in_an_empty_home() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    assert!(t.path().join("keys").exists());
    assert_eq!(mode(&t.path().join("keys")), 0o600);
    assert_eq!(mode(&t.path().join("owner.token")), 0o600);
    let status = node.json(&["status"]);
    assert_eq!(status["peer_id"], node.peer_id.as_str());
    assert_eq!(status["devices"].as_array().unwrap().len(), 1);
    assert_eq!(status["devices"][0]["this_device"], true);
    node.stop();
    // It is a vault now: init refuses it.
    one_line_error(&cli(t.path(), &["init"]));
}

#[test]
fn text_edits_through_http_apply_in_order_and_bad_ones_change_nothing() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    let path = "/v1/collections/notes/records/n1/text";
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/collections/notes/records/n1")
            .json(&json!({"body": "Hello", "pinned": true})),
    );
    assert_eq!(status, 201);
    let (status, body) = api.send(api.request(Method::POST, path).json(&json!({
        "field": "body",
        "edits": [{"at": 5, "insert": " world"}, {"at": 0, "delete": 1, "insert": "J"}],
    })));
    assert_eq!(
        (status, body),
        (
            200,
            json!({"id": "n1", "body": "Jello world", "pinned": true})
        )
    );
    for (bad, code, says) in [
        (
            json!({"field": "body", "edits": [{"at": 99, "delete": 1}]}),
            "bad_request",
            "out of range",
        ),
        (
            json!({"field": "pinned", "edits": [{"at": 0, "insert": "x"}]}),
            "bad_request",
            "not text",
        ),
        (json!({"field": "id", "edits": []}), "bad_request", "field"),
        (
            json!({"field": "body", "edits": [{"at": -1}]}),
            "bad_request",
            "edits",
        ),
        (
            json!({"field": "body", "edits": "x"}),
            "bad_request",
            "edits",
        ),
        (json!([1, 2]), "not_an_object", "object"),
    ] {
        let (status, body) = api.send(api.request(Method::POST, path).json(&bad));
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], code, "{bad}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{bad}: {message}");
    }
    let (status, body) = api.send(
        api.request(Method::POST, "/v1/collections/notes/records/nope/text")
            .json(&json!({"field": "body", "edits": []})),
    );
    assert_eq!(status, 404, "{body}");
    let (_, body) = api.send(api.request(Method::GET, "/v1/collections/notes/records/n1"));
    assert_eq!(
        body,
        json!({"id": "n1", "body": "Jello world", "pinned": true})
    );
    node.stop();
}

/// A photo inside an imported vCard becomes a blob that is listed (so every device
/// fetches it) once the card naming it is written, and reads back as the photo's
/// bytes; importing the file again changes nothing and lists it still.
#[test]
fn an_imported_photo_is_a_listed_blob_named_by_its_card() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pim/apple.vcf");
    let imported = node.json(&["import", "contacts", file.to_str().unwrap()]);
    assert!(imported["imported"].as_u64().unwrap() >= 1, "{imported}");
    let records = node.json(&["ls", "contacts"]);
    let with_photo: Vec<&serde_json::Value> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["photo"]["blob"].is_string())
        .collect();
    assert_eq!(with_photo.len(), 1, "{records}");
    let blob = with_photo[0]["photo"]["blob"].as_str().unwrap().to_owned();
    let listed = node.json(&["blob", "ls"]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == blob.as_str())
        .unwrap_or_else(|| panic!("{blob} is not listed: {listed}"));
    assert_eq!(entry["type"], "image/png", "{entry}");
    let bytes = node.run(&["blob", "get", &blob]);
    assert!(bytes.status.success());
    assert!(
        bytes.stdout.starts_with(b"\x89PNG"),
        "{:?}",
        &bytes.stdout[..8]
    );
    let again = node.json(&["import", "contacts", file.to_str().unwrap()]);
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(node.json(&["blob", "ls"]), listed);

    // The card names the photo: removing it is refused with the card named, and
    // nothing is removed; a unique start of the id is enough.
    let card = with_photo[0]["id"].as_str().unwrap();
    let out = node.run(&["blob", "rm", &blob[..8]]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        said.contains(&format!("named by 1 record: contacts/{card}")) && said.contains("--force"),
        "{said}"
    );
    assert_eq!(node.json(&["blob", "ls"]), listed);
    assert!(node.run(&["blob", "get", &blob[..8]]).status.success());
    let out = node.run(&["--json", "blob", "get", "zz"]);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("\"code\":\"invalid_blob_id\""), "{said}");
    // Forced, it goes, and `check` names the card left without its photo.
    let removed = node.json(&["blob", "rm", "--force", &blob[..8]]);
    assert_eq!(removed["id"], blob.as_str());
    let out = node.run(&["check"]);
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(card) && said.contains(&blob), "{said}");
    node.stop();
}

/// A text edit of a contact's vCard that leaves the card unreadable is refused (400)
/// and nothing of it is kept — not in the record, not after a restart — while a good
/// edit moves the fields with the text; an edit of another text field moves the text.
#[test]
fn a_text_edit_that_breaks_a_card_is_refused_whole() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    let card = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:u-ada\r\nFN:Ada\r\nNOTE:Analyst\r\nEND:VCARD\r\n";
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/collections/contacts/records/ada")
            .json(&json!({ "vcard": card })),
    );
    assert_eq!(status, 201);
    let path = "/v1/collections/contacts/records/ada/text";
    let fn_at = card.find("FN:Ada").unwrap() + "FN:Ada".len();
    let (status, body) = api.send(api.request(Method::POST, path).json(&json!({
        "field": "vcard", "edits": [{"at": fn_at, "insert": " Lovelace"}],
    })));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Ada Lovelace", "{body}");
    let (status, body) = api.send(api.request(Method::POST, path).json(&json!({
        "field": "notes", "edits": [{"at": 0, "insert": "The first "}],
    })));
    assert_eq!(status, 200, "{body}");
    assert!(
        body["vcard"]
            .as_str()
            .unwrap()
            .contains("NOTE:The first Analyst"),
        "{body}"
    );
    let (_, before) = api.send(api.request(Method::GET, "/v1/collections/contacts/records/ada"));
    let text = before["vcard"].as_str().unwrap().to_owned();
    let end = text.find("END:VCARD").unwrap();
    let (status, body) = api.send(api.request(Method::POST, path).json(&json!({
        "field": "vcard", "edits": [{"at": end, "delete": "END:VCARD".len()}],
    })));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    let (_, after) = api.send(api.request(Method::GET, "/v1/collections/contacts/records/ada"));
    assert_eq!(after, before, "the refused edit was kept");
    let home = node.home.clone();
    node.stop();
    let node = spawn_node(&home, &[]);
    let api = Api::new(&node);
    let (_, again) = api.send(api.request(Method::GET, "/v1/collections/contacts/records/ada"));
    assert_eq!(again, before, "the refused edit came back after a restart");
    node.stop();
}

/// `hearth devices rename` finds a device by a unique start of its PeerId or by its
/// name, trims the new name, and refuses an empty, over-long or control-character name
/// (changing nothing).
#[test]
fn a_device_is_renamed_by_a_start_of_its_peer_id_or_by_its_name() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let name = || node.json(&["devices"])[0]["name"].clone();
    node.json(&["devices", "rename", &node.peer_id[..12], "home server"]);
    assert_eq!(name(), "home server");
    node.json(&["devices", "rename", "home server", "  attic  "]);
    assert_eq!(name(), "attic");
    let long = "x".repeat(65);
    for (args, needle) in [
        (vec!["devices", "rename", "attic", " "], "empty"),
        (vec!["devices", "rename", "attic", long.as_str()], "64"),
        (vec!["devices", "rename", "attic", "a\u{7}b"], "control"),
        (vec!["devices", "rename", "cellar", "x"], "no device"),
    ] {
        let out = node.run(&args);
        assert!(!out.status.success(), "{args:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(needle), "{args:?}: {said}");
    }
    assert_eq!(name(), "attic");
    node.stop();
}

/// SIGHUP never stops the node: it reads hearth.toml again and applies the log level
/// (a bad file changes nothing and says so). SIGTERM still stops it cleanly: api.addr
/// is gone, never left pointing at nothing.
#[test]
fn a_hangup_reloads_the_log_level_and_does_not_stop_the_node() {
    let t = TestHome::new();
    std::fs::create_dir_all(t.path()).unwrap();
    let file = t.path().join("hearth.toml");
    std::fs::write(&file, "log = \"error\"\n").unwrap();
    // No RUST_LOG: the file's level applies.
    let node = spawn_node_with_env(t.path(), &[], &[("RUST_LOG", "")]);
    let hangup = || node.signal("HUP");
    hangup();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(node.json(&["status"])["peer_id"], node.peer_id.as_str());
    assert!(
        !node.stderr().contains("SIGHUP"),
        "at level error: {}",
        node.stderr()
    );

    std::fs::write(&file, "log = \"info\"\npeers = []\n").unwrap();
    hangup();
    eventually("the reload in the log", || {
        node.stderr()
            .contains("SIGHUP: reloaded log = \"info\"")
            .then_some(())
    });
    std::fs::write(&file, "log = 3\n").unwrap();
    hangup();
    eventually("the bad file in the log", || {
        let said = node.stderr();
        (said.contains("line 1") && said.contains("keeps its settings")).then_some(())
    });
    assert_eq!(node.json(&["status"])["peer_id"], node.peer_id.as_str());
    assert!(t.path().join("api.addr").exists());
    node.stop();
    assert!(
        !t.path().join("api.addr").exists(),
        "api.addr left behind after SIGTERM"
    );
}

/// `HOME/hearth.toml` sets what `up` takes as flags, a flag overrides it, and a bad file
/// stops `up` with the file, the line and what was wrong.
#[test]
fn hearth_toml_configures_up_and_a_bad_one_names_its_line() {
    let t = TestHome::new();
    std::fs::create_dir_all(t.path()).unwrap();
    let file = t.path().join("hearth.toml");
    // Port 1 cannot be bound by a test: the flag the harness passes must win.
    std::fs::write(
        &file,
        "api = \"127.0.0.1:1\"\nname = \"attic\"\nmdns = false\nlog = \"info\"\n",
    )
    .unwrap();
    let node = spawn_node(t.path(), &[]);
    let devices = node.json(&["devices"]);
    assert_eq!(devices[0]["name"], "attic", "{devices}");
    node.stop();

    std::fs::write(&file, "name = \"attic\"\nmdns = \"yes\"\n").unwrap();
    let out = hearth(&["--home", t.as_str(), "up", "--api", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = one_line_error(&out);
    assert!(
        err.contains("hearth.toml") && err.contains("line 2") && err.contains("bool"),
        "{err}"
    );
    std::fs::write(&file, "apii = \"127.0.0.1:0\"\n").unwrap();
    let err = one_line_error(&hearth(&["--home", t.as_str(), "up"]));
    assert!(err.contains("line 1") && err.contains("apii"), "{err}");
}

/// Under a service manager (`NOTIFY_SOCKET`), the node says READY=1 once its API answers
/// and STOPPING=1 when it stops.
#[test]
fn the_node_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let t = TestHome::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let node = spawn_node_with_env(t.path(), &[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 1024];
    let n = socket.recv(&mut buf).expect("a READY message");
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.lines().any(|l| l == "READY=1"), "{said}");
    assert!(said.contains(&node.api_addr), "{said}");
    assert_eq!(node.json(&["status"])["peer_id"], node.peer_id.as_str());
    node.stop();
    let n = socket.recv(&mut buf).expect("a STOPPING message");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

/// `blob get -o FILE` does not replace an existing file without `--force`.
#[test]
fn blob_get_does_not_overwrite_a_file_without_force() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let input = t.path().join("in.bin");
    std::fs::write(&input, b"the blob's bytes").unwrap();
    let id = node.json(&["blob", "put", input.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = t.path().join("out.bin");
    std::fs::write(&out, b"precious").unwrap();
    let err = one_line_error(&node.run(&["blob", "get", &id, "-o", out.to_str().unwrap()]));
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    node.json(&["blob", "get", &id, "-o", out.to_str().unwrap(), "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"the blob's bytes");
    // Never renamed onto something that is not a regular file, even with --force.
    for path in ["/dev/null", t.path().to_str().unwrap()] {
        let err = one_line_error(&node.run(&["blob", "get", &id, "-o", path, "--force"]));
        assert!(err.contains("not a regular file"), "{path}: {err}");
    }
    node.stop();
}

/// `hearth completions bash` loads in bash and completes commands; the man page is roff.
#[test]
fn completions_load_in_bash_and_the_man_page_renders() {
    let out = hearth(&["completions", "bash"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hearth.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // Complete `hearth bl` and `hearth blob ` the way bash's programmable completion does.
    let probe = format!(
        "source {}\n\
         COMP_WORDS=(hearth bl); COMP_CWORD=1; COMP_LINE='hearth bl'; COMP_POINT=9\n\
         _hearth hearth bl hearth; echo \"one:${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(hearth blob ''); COMP_CWORD=2; COMP_LINE='hearth blob '; COMP_POINT=12\n\
         _hearth hearth '' blob; echo \"two:${{COMPREPLY[*]}}\"\n",
        script.display()
    );
    let run = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &probe])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(said.contains("one:blob"), "{said}");
    let two = said.lines().find(|l| l.starts_with("two:")).unwrap();
    for sub in ["put", "get", "ls", "rm"] {
        assert!(
            two.split_whitespace().any(|w| w.ends_with(sub)),
            "{sub}: {two}"
        );
    }
    for shell in ["zsh", "fish"] {
        let out = hearth(&["completions", shell]);
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
    }
    let err = one_line_error(&hearth(&["completions", "tcsh"]));
    assert!(err.contains("tcsh"), "{err}");

    let man = hearth(&["man"]);
    assert!(man.status.success());
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH hearth"),
        "{}",
        &man[..200]
    );
    assert!(man.contains("completions") && man.contains("grant"));
}

/// With `--json`, a failure prints `{"error": {"code", "message"}}` on stdout as well as
/// its one line on stderr; the node's code is kept; the API takes a port alone.
#[test]
fn json_errors_and_a_port_alone_for_the_api() {
    let t = TestHome::new();
    // A port alone, and localhost:PORT, are addresses on 127.0.0.1.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = spawn_node(t.path(), &["--api", &port.to_string()]);
    assert_eq!(node.api_addr, format!("127.0.0.1:{port}"));
    node.stop();
    let node = spawn_node(t.path(), &["--api", &format!("localhost:{port}")]);
    assert_eq!(node.api_addr, format!("127.0.0.1:{port}"));
    let err = one_line_error(&hearth(&[
        "--home",
        t.as_str(),
        "up",
        "--api",
        "localhost:web",
    ]));
    assert!(
        err.contains("localhost:web") && err.contains("port"),
        "{err}"
    );

    let out = node.run(&["--json", "get", "contacts", "nobody"]);
    let line = one_line_error(&out);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["error"]["code"], "not_found", "{answer}");
    assert!(
        line.contains(answer["error"]["message"].as_str().unwrap()),
        "{line} {answer}"
    );
    // A failure of the CLI itself, not the node's.
    let fresh = TestHome::new();
    let out = cli(
        fresh.path(),
        &["init", "--passphrase-file", "/nonexistent/file", "--json"],
    );
    let line = one_line_error(&out);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Its cause names the code: a file that is not there.
    assert_eq!(answer["error"]["code"], "not_found", "{answer}");
    // The code is said once, not repeated in the message.
    let out = node.run(&["--json", "get", "contacts", "nobody"]);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(!message.contains("not_found"), "{answer}");
    // Without a node, or a vault, or with a wrong option: each its own code.
    for (home, args, code) in [
        (fresh.path(), vec!["ls", "contacts"], "no_vault"),
        (
            node.home.as_path(),
            vec!["ls", "contacts", "--nonsense"],
            "usage",
        ),
    ] {
        let out = cli(home, &[&args[..], &["--json"]].concat());
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["error"]["code"], code, "{args:?}: {answer}");
    }
    // The OS's reason once, not twice.
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "{line}"
    );
    // Without --json, nothing on stdout.
    let out = node.run(&["get", "contacts", "nobody"]);
    one_line_error(&out);
    assert!(out.stdout.is_empty());
    // The OpenAPI document, for anyone on the API (it holds no data).
    let api = Api::new(&node);
    let (status, doc) = api.send(api.raw(Method::GET, "/v1/openapi.json"));
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert!(doc["paths"]["/v1/view/{collection}"]["get"].is_object());
    node.stop();
}

/// `hearth check` reads everything back: a healthy vault passes; one flipped bit in a
/// blob chunk on disk is found and named, and the command fails.
#[test]
fn check_finds_a_damaged_chunk() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&["put", "notes", "n1", r#"{"text":"kept"}"#]);
    let file = t.file("photo.bin", vec![7u8; 300_000]);
    let id = node.json(&["blob", "put", file.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let report = node.json(&["check"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["blobs"], 1);
    assert!(report["values"].as_u64().unwrap() > 0);
    let chunk = files_under(&t.path().join("blobs"))
        .into_iter()
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&chunk).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&chunk, bytes).unwrap();
    let out = node.run(&["check"]);
    let err = one_line_error(&out);
    assert!(err.contains("1 problem") && err.contains(&id), "{err}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("blob {id}")), "{said}");
    // With --json: the report, not an error object, on stdout.
    let out = node.run(&["check", "--json"]);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"].as_array().unwrap().len(), 1);
    node.stop();
}

/// A vault with something of everything, exported with `export --all`: returns the
/// export's directory and each blob's file there with the content it must have (two
/// blobs share a name: `blobs.json` says which file is which).
fn exported_vault(
    t: &TestHome,
    node: &NodeProcess,
) -> (std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    node.json(&["put", "notes", "n1", r#"{"text":"first", "tags":["a"]}"#]);
    node.json(&["put", "notes", "n2", r#"{"text":"second ✓"}"#]);
    let vcf = t.file(
        "people.vcf",
        "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:ada\r\nFN:Ada Lovelace\r\nEMAIL:ada@example.org\r\nEND:VCARD\r\n",
    );
    node.json(&["import", "contacts", vcf.to_str().unwrap()]);
    let ics = t.file(
        "events.ics",
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:e1\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20261224T180000Z\r\nSUMMARY:Dinner\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    );
    node.json(&["import", "calendar", ics.to_str().unwrap()]);
    let mut stored = Vec::new();
    for (name, content) in [
        ("photo.jpg", vec![1u8; 200_000]),
        (
            "report.pdf",
            (0..3_000_000u32).map(|i| (i % 251) as u8).collect(),
        ),
    ] {
        let file = t.file(name, &content);
        let id = node.json(&["blob", "put", file.to_str().unwrap()])["id"].clone();
        stored.push((id, content));
    }
    // The same name again, other content: kept apart in the export.
    let other = t.dir().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let again = other.join("photo.jpg");
    std::fs::write(&again, b"another photo").unwrap();
    let id = node.json(&["blob", "put", again.to_str().unwrap()])["id"].clone();
    stored.push((id, b"another photo".to_vec()));
    let token = node.json(&["grant", "reader", "--read", "notes"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let api = Api::new(node);
    let (status, _) = api.send(api.raw(Method::GET, "/v1/view/notes").bearer_auth(&token));
    assert_eq!(status, 200);

    let dir = t.dir().join("export");
    let summary = node.json(&["export", "--all", "-o", dir.to_str().unwrap()]);
    assert_eq!(summary["records"], 4, "{summary}");
    assert_eq!(summary["blobs"], 3, "{summary}");
    let listed: Value =
        serde_json::from_slice(&std::fs::read(dir.join("blobs.json")).unwrap()).unwrap();
    let blobs = stored
        .into_iter()
        .map(|(id, content)| {
            let entry = listed
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["id"] == id)
                .unwrap_or_else(|| panic!("{id} not in blobs.json: {listed}"));
            (entry["file"].as_str().unwrap().to_owned(), content)
        })
        .collect::<Vec<_>>();
    let mut files: Vec<&str> = blobs.iter().map(|(f, _)| f.as_str()).collect();
    files.sort_unstable();
    assert_eq!(files, ["photo (2).jpg", "photo.jpg", "report.pdf"]);
    (dir, blobs)
}

/// `hearth export --all -o DIR` writes everything in open formats: JSON, vCard,
/// iCalendar, blobs as files under their names; into a new or empty directory only.
#[test]
fn export_all_writes_everything_in_open_formats() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let (dir, blobs) = exported_vault(&t, &node);
    let read = |p: &str| std::fs::read(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let json = |p: &str| -> Value { serde_json::from_slice(&read(p)).unwrap() };
    let notes = json("records/notes.json");
    assert_eq!(notes.as_array().unwrap().len(), 2);
    assert_eq!(notes[1]["text"], "second ✓");
    let vcf = String::from_utf8(read("vcard/contacts.vcf")).unwrap();
    assert!(
        vcf.contains("FN:Ada Lovelace") && vcf.contains("UID:ada"),
        "{vcf}"
    );
    let ics = String::from_utf8(read("icalendar/calendar.ics")).unwrap();
    assert!(ics.contains("SUMMARY:Dinner"), "{ics}");
    for (name, content) in &blobs {
        assert!(read(&format!("blobs/{name}")) == *content, "{name} differs");
    }
    let listed = json("blobs.json");
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "application/pdf")
    );
    let grants = json("grants.json");
    assert_eq!(grants[0]["service"], "reader");
    assert!(!String::from_utf8_lossy(&read("grants.json")).contains("token"));
    let audit = json("audit.json");
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["service"] == "reader")
    );
    assert_eq!(json("devices.json").as_array().unwrap().len(), 1);
    assert_eq!(json("export.json")["format"], "hearth-export-1");
    assert!(!t.dir().join("export.partial").exists());
    // Never into a directory that holds something.
    let err = one_line_error(&node.run(&["export", "--all", "-o", dir.to_str().unwrap()]));
    assert!(err.contains("not empty"), "{err}");
    let err = one_line_error(&node.run(&["export", "--all"]));
    assert!(err.contains("--output"), "{err}");
    node.stop();
}

/// The export is readable by plain tools: jq and Python read every JSON file, `cmp`
/// finds each blob equal to what was stored. Needs jq, python3 and cmp (`.ci/run`
/// installs jq when missing).
#[test]
#[ignore = "needs jq and python3; run by .ci/run"]
fn export_all_is_readable_by_plain_tools() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let (dir, blobs) = exported_vault(&t, &node);
    node.stop();
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{program} cannot run ({e}): install it"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for file in files_under(&dir)
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
    {
        run("python3", &["-m", "json.tool", file.to_str().unwrap()]);
    }
    assert_eq!(
        run("jq", &["-r", ".[1].text", "records/notes.json"]).trim(),
        "second ✓"
    );
    assert_eq!(
        run("jq", &["-r", ".[0].service", "grants.json"]).trim(),
        "reader"
    );
    assert_eq!(
        run(
            "jq",
            &[
                "-r",
                "[.[] | select(.type == \"application/pdf\") | .file][0]",
                "blobs.json"
            ]
        )
        .trim(),
        "report.pdf"
    );
    for (name, content) in &blobs {
        let original = t.dir().join("original.bin");
        std::fs::write(&original, content).unwrap();
        run(
            "cmp",
            &[original.to_str().unwrap(), &format!("blobs/{name}")],
        );
    }
}

/// Names that point at nothing get a warning: `ls` of an unknown collection, a grant
/// on a field no record has (the README's old `tag` for `tags`). An emptied collection
/// can be removed; one with records cannot.
#[test]
fn unknown_names_are_warned_about_and_an_empty_collection_can_be_removed() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&[
        "put",
        "contacts",
        "c1",
        r#"{"name":"Ada","tags":["friend"]}"#,
    ]);
    let out = node.run(&["ls", "contact"]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("did you mean contacts?"), "{said}");
    let out = node.run(&[
        "grant",
        "app",
        "--read",
        "contacts.name",
        "--where",
        "tag=friend",
    ]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("\"tag\"") && said.contains("did you mean tags?"),
        "{said}"
    );
    let created = node.json(&["grant", "app", "--read", "contacs"]);
    assert!(
        created["warnings"][0]
            .as_str()
            .unwrap()
            .contains("contacts"),
        "{created}"
    );
    // A right grant says nothing.
    let out = node.run(&[
        "grant",
        "app",
        "--read",
        "contacts.name",
        "--where",
        "tags=friend",
    ]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));

    let err = one_line_error(&node.run(&["rm", "contacts"]));
    assert!(err.contains("still holds records"), "{err}");
    node.json(&["rm", "contacts", "c1"]);
    node.json(&["rm", "contacts"]);
    let listed = node.json(&["collections"]);
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "contacts"),
        "{listed}"
    );
    let err = one_line_error(&node.run(&["rm", "nothing-here"]));
    assert!(err.contains("no collection"), "{err}");
    node.json(&["put", "contacts", "c2", r#"{"name":"Bob"}"#]);
    let listed = node.json(&["collections"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "contacts"),
        "{listed}"
    );
    node.stop();
}

/// Every command that writes a file takes a bare file name, written in the current
/// directory (its parent is "", which once failed the directory's fsync after the
/// file was written, so the command exited 1).
#[test]
fn commands_that_write_a_file_take_a_bare_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let node = spawn_node(&home, &[]);
    node.run(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(hearth_bin())
            .current_dir(&work)
            .args(["--home", home.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["export", "contacts", "-o", "backup.vcf"]);
    assert!(
        std::fs::read_to_string(work.join("backup.vcf"))
            .unwrap()
            .contains("Ada")
    );
    run(&["recovery-kit", "-o", "kit.json"]);
    assert!(work.join("kit.json").is_file() && work.join("kit.json.svg").is_file());
    let source = dir.path().join("photo.bin");
    std::fs::write(&source, b"some bytes of a photo").unwrap();
    let id = node.json(&["blob", "put", source.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    run(&["blob", "get", &id, "-o", "photo.out"]);
    assert_eq!(
        std::fs::read(work.join("photo.out")).unwrap(),
        b"some bytes of a photo"
    );
    run(&["export", "--all", "-o", "everything"]);
    assert!(work.join("everything").is_dir());
    node.stop();
}

/// An old vCard in Latin-1 that says so (Outlook, Nokia) is imported as its text reads;
/// one that does not say is refused with the command that converts it.
#[test]
fn an_old_latin1_vcard_is_imported_and_an_undeclared_one_refused_with_the_fix() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let file = t.path().join("old.vcf");
    std::fs::write(
        &file,
        b"BEGIN:VCARD\r\nVERSION:2.1\r\nUID:jose\r\nFN;CHARSET=ISO-8859-1:Jos\xe9 Mart\xednez\r\nEND:VCARD\r\n",
    )
    .unwrap();
    let report = node.json(&["import", "contacts", file.to_str().unwrap()]);
    assert_eq!(report["imported"], 1, "{report}");
    assert_eq!(
        node.json(&["get", "contacts", "jose"])["name"],
        "Jos\u{e9} Mart\u{ed}nez"
    );
    std::fs::write(
        &file,
        b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Jos\xe9\r\nEND:VCARD\r\n",
    )
    .unwrap();
    let out = node.run(&["import", "contacts", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("iconv -f WINDOWS-1252 -t UTF-8"), "{said}");
}

/// A card without a UID gets a readable id made from its name and content; the same
/// file imported again finds it, and so does a vault where an earlier version named
/// it `hearth-import-<hash>`: no duplicate either way.
#[test]
fn a_card_without_uid_gets_a_readable_id_and_is_found_again() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let card =
        "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:José Martínez\r\nN:Martínez;José;;;\r\nEND:VCARD\r\n";
    let file = t.path().join("nouid.vcf");
    std::fs::write(&file, card).unwrap();
    let first = node.json(&["import", "contacts", file.to_str().unwrap()]);
    assert_eq!(first["imported"], 1, "{first}");
    let listed = node.json(&["ls", "contacts"]);
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("jose-martinez-"), "{id}");
    let again = node.json(&["import", "contacts", file.to_str().unwrap()]);
    assert_eq!(
        (again["imported"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(1)),
        "{again}"
    );
    // A vault imported by an earlier version holds it as hearth-import-<hash>.
    let other = TestHome::new();
    let old_node = spawn_node(other.path(), &[]);
    let legacy = format!("hearth-import-{}", blake3::hash(card.as_bytes()).to_hex());
    // (Put from fields: a text without its UID line would be given a new UID.)
    let record = serde_json::json!({"uid": legacy, "name": "José Martínez"});
    old_node.json(&["put", "contacts", &legacy, &record.to_string()]);
    let report = old_node.json(&["import", "contacts", file.to_str().unwrap()]);
    assert_eq!(report["imported"], 0, "{report}");
    let all = old_node.json(&["ls", "contacts"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all[0]["id"], legacy.as_str());
    assert_eq!(all[0]["uid"], legacy.as_str());
}
