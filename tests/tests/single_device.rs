//! One device, driven as a user would: init, up, records through the CLI and HTTP,
//! restart, passphrases.

use std::os::unix::fs::PermissionsExt;

use hearth_tests::*;
use reqwest::Method;
use serde_json::json;

#[test]
fn records_through_cli_and_http_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("vault");
    let made = hearth_json(&home, &["init"]);
    assert_eq!(made["passphrase"], false);
    for f in ["keys", "owner.token"] {
        let mode = std::fs::metadata(home.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let node = spawn_node(&home, &[]);
    assert_eq!(node.peer_id, made["peer_id"]);
    assert_eq!(
        std::fs::read_to_string(home.join("api.addr"))
            .unwrap()
            .trim(),
        node.api_addr
    );

    // CLI: --home/--json before and after the command; HEARTH_HOME.
    let h = home.to_str().unwrap();
    let rich = json!({"name": "Ada", "age": 36, "neg": -7, "pi": 3.25, "ok": true, "none": null,
                      "tags": ["math", {"nested": [1, 2]}], "addr": {"city": "London"}});
    let put = hearth_json(&home, &["put", "contacts", "ada", &rich.to_string()]);
    assert_eq!(put, json!({"id": "ada", "created": true}));
    let mut want = rich.clone();
    want["id"] = json!("ada");
    assert_eq!(hearth_json(&home, &["get", "contacts", "ada"]), want);
    let out = hearth(&["get", "contacts", "ada", "--home", h, "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        want
    );
    let out = hearth_with_env(&["--json", "ls", "contacts"], &[("HEARTH_HOME", h)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let patched = hearth_json(
        &home,
        &[
            "patch",
            "contacts",
            "ada",
            r#"{"age": null, "email": "ada@example.org"}"#,
        ],
    );
    assert_eq!(patched["email"], "ada@example.org");
    assert!(patched.get("age").is_none());
    let generated = hearth_json(&home, &["put", "contacts", r#"{"name": "Bob"}"#]);
    let bob = generated["id"].as_str().unwrap().to_owned();
    let listed = hearth_json(&home, &["ls", "contacts"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let file = dir.path().join("carol.json");
    std::fs::write(&file, r#"{"name": "Carol"}"#).unwrap();
    hearth_json(
        &home,
        &["put", "contacts", "carol", &format!("@{}", file.display())],
    );
    assert_eq!(
        hearth_json(&home, &["rm", "contacts", &bob]),
        json!({"id": bob, "removed": true})
    );
    assert_eq!(
        hearth_json(&home, &["collections"]),
        json!([{"name": "contacts", "records": 2}])
    );

    // HTTP: the same operations.
    let api = Api::new(&node);
    let (status, body) = api.send(
        api.request(Method::PUT, "/v1/collections/notes/records/n1")
            .json(&json!({"text": "hi"})),
    );
    assert_eq!((status, body), (201, json!({"id": "n1", "created": true})));
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/collections/notes/records/n1")
            .json(&json!({"text": "hello"})),
    );
    assert_eq!(status, 200);
    let (status, body) = api.send(
        api.request(Method::POST, "/v1/collections/notes/records")
            .json(&json!({"text": "new"})),
    );
    assert_eq!(status, 201);
    let n2 = body["id"].as_str().unwrap().to_owned();
    let (status, body) = api.send(
        api.request(Method::PATCH, "/v1/collections/notes/records/n1")
            .json(&json!({"pinned": true})),
    );
    assert_eq!(
        (status, body),
        (200, json!({"id": "n1", "text": "hello", "pinned": true}))
    );
    let (status, _) = api.send(api.request(
        Method::DELETE,
        &format!("/v1/collections/notes/records/{n2}"),
    ));
    assert_eq!(status, 204);
    let (status, body) = api.send(api.request(Method::GET, "/v1/collections/notes/records"));
    assert_eq!(
        (status, body),
        (200, json!([{"id": "n1", "text": "hello", "pinned": true}]))
    );
    let (status, body) = api.send(api.request(Method::GET, "/v1/status"));
    assert_eq!(status, 200);
    assert_eq!(body["peer_id"], node.peer_id.as_str());

    // Stop cleanly, start again: everything is there.
    node.stop();
    assert!(!home.join("api.addr").exists());
    let node = spawn_node(&home, &[]);
    let mut ada = want.clone();
    ada.as_object_mut().unwrap().remove("age");
    ada["email"] = json!("ada@example.org");
    assert_eq!(node.json(&["get", "contacts", "ada"]), ada);
    assert_eq!(
        node.json(&["get", "contacts", "carol"]),
        json!({"id": "carol", "name": "Carol"})
    );
    assert_eq!(
        node.json(&["ls", "notes"]),
        json!([{"id": "n1", "text": "hello", "pinned": true}])
    );
    node.stop();
}

#[test]
fn init_refuses_an_existing_vault_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("v");
    hearth_json(&home, &["init"]);
    let before = (
        std::fs::read(home.join("keys")).unwrap(),
        std::fs::read(home.join("owner.token")).unwrap(),
    );
    let err = one_line_error(&hearth(&["--home", home.to_str().unwrap(), "init"]));
    assert!(err.contains("already holds a vault"), "{err}");
    let after = (
        std::fs::read(home.join("keys")).unwrap(),
        std::fs::read(home.join("owner.token")).unwrap(),
    );
    assert_eq!(before, after);
}

#[test]
fn a_passphrase_protects_the_vault_and_a_wrong_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("v");
    let h = home.to_str().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery\n").unwrap();
    let made = hearth_json(
        &home,
        &["init", "--passphrase-file", pass.to_str().unwrap()],
    );
    assert_eq!(made["passphrase"], true);
    assert!(
        !String::from_utf8_lossy(&std::fs::read(home.join("keys")).unwrap())
            .contains("correct horse")
    );

    let node = spawn_node(&home, &["--passphrase-file", pass.to_str().unwrap()]);
    node.json(&["put", "diary", "d1", r#"{"text": "kept"}"#]);
    node.stop();

    let wrong = hearth_with_env(
        &["--home", h, "up", "--api", "127.0.0.1:0", "--no-mesh"],
        &[("HEARTH_PASSPHRASE", "wrong")],
    );
    let err = one_line_error(&wrong);
    assert!(err.contains("passphrase"), "{err}");
    let none = hearth(&["--home", h, "up", "--api", "127.0.0.1:0", "--no-mesh"]);
    assert!(one_line_error(&none).contains("passphrase"));

    let node = spawn_node_with_env(
        &home,
        &[],
        &[("HEARTH_PASSPHRASE", "correct horse battery")],
    );
    assert_eq!(
        node.json(&["get", "diary", "d1"]),
        json!({"id": "d1", "text": "kept"})
    );
    node.stop();
}

#[test]
fn up_creates_a_vault_in_an_empty_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fresh");
    let node = spawn_node(&home, &[]);
    assert!(home.join("keys").exists());
    let status = node.json(&["status"]);
    assert_eq!(status["devices"].as_array().unwrap().len(), 1);
    assert_eq!(status["devices"][0]["this_device"], true);
    node.stop();
}
