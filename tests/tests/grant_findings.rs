//! The grant findings of issue 10, each attacked as an outsider would, through real
//! `hearth` processes: the CLI and the HTTP API.

use hearth_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

fn service(
    node: &NodeProcess,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let api = Api::new(node);
    let mut request = api.raw(method, path).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    api.send(request)
}

fn grant(node: &NodeProcess, args: &[&str]) -> (String, String) {
    let mut all = vec!["grant", "svc"];
    all.extend_from_slice(args);
    let g = node.json(&all);
    (
        g["id"].as_str().unwrap().to_owned(),
        g["token"].as_str().unwrap().to_owned(),
    )
}

/// Finding 1: `--read contacts.name --write contacts.note` reads only the name and
/// changes only the note; `--write contacts` lends no reading; the grants list and the
/// consent record keep them apart.
#[test]
fn read_and_write_scopes_stay_apart() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&[
        "put",
        "contacts",
        "ada",
        r#"{"name": "Ada", "note": "secret note", "email": "a@x"}"#,
    ]);
    let (_, token) = grant(
        &node,
        &["--read", "contacts.name", "--write", "contacts.note"],
    );
    let (status, view) = service(&node, &token, Method::GET, "/v1/view/contacts/ada", None);
    assert_eq!((status, view), (200, json!({"id": "ada", "name": "Ada"})));
    let (status, _) = service(
        &node,
        &token,
        Method::POST,
        "/v1/view/contacts",
        Some(json!({"id": "ada", "name": "Eve"})),
    );
    assert_eq!(status, 403, "the name is readable, not writable");
    let (status, _) = service(
        &node,
        &token,
        Method::POST,
        "/v1/view/contacts",
        Some(json!({"id": "ada", "note": "new"})),
    );
    assert_eq!(status, 200);
    assert_eq!(
        node.json(&["get", "contacts", "ada"]),
        json!({"id": "ada", "name": "Ada", "note": "new", "email": "a@x"})
    );

    let (id, token) = grant(&node, &["--read", "contacts.name", "--write", "contacts"]);
    let (_, view) = service(&node, &token, Method::GET, "/v1/view/contacts", None);
    assert_eq!(
        view,
        json!([{"id": "ada", "name": "Ada"}]),
        "writing everything reads nothing more"
    );

    let grants = node.json(&["grants"]);
    let listed = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id.as_str())
        .unwrap();
    let scope = &listed["scope"]["collections"]["contacts"];
    assert_eq!(scope["read"], json!({"only": ["name"]}));
    assert_eq!(scope["write"], json!("all"));
    let text = String::from_utf8(node.run(&["grants"]).stdout).unwrap();
    assert!(text.contains("read:  contacts.name"), "{text}");
    assert!(text.contains("write: contacts"), "{text}");
    node.stop();
}

/// Finding 2: a filter bounds writes as it bounds reads, and a hidden id answers
/// exactly like a missing one.
#[test]
fn writes_stay_inside_the_filter_and_hidden_ids_look_missing() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&["put", "notes", "w", r#"{"tag": "work", "text": "shared"}"#]);
    node.json(&["put", "notes", "h", r#"{"tag": "home", "text": "private"}"#]);
    let (_, token) = grant(
        &node,
        &["--read", "notes", "--write", "notes", "--where", "tag=work"],
    );
    let write = |body: Value| service(&node, &token, Method::POST, "/v1/view/notes", Some(body));

    // Into a hidden record, or pulling it into the view: as if it did not exist.
    let hidden = write(json!({"id": "h", "text": "overwritten"}));
    let missing = write(json!({"id": "nope", "text": "overwritten"}));
    assert_eq!(hidden.0, 404);
    assert_eq!(
        hidden.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace("record h ", "record X "),
        missing.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace("record nope ", "record X "),
        "a hidden id answers exactly like a missing one"
    );
    assert_eq!(missing.0, 404);
    assert_eq!(write(json!({"id": "h", "tag": "work"})).0, 404);
    assert_eq!(
        node.json(&["get", "notes", "h"]),
        json!({"id": "h", "tag": "home", "text": "private"})
    );
    assert!(
        one_line_error(&node.run(&["get", "notes", "nope"])).contains("no record"),
        "nothing was created under the missing id"
    );

    // Out of the view, or a new record that does not match: refused.
    assert_eq!(write(json!({"id": "w", "tag": "home"})).0, 403);
    assert_eq!(write(json!({"text": "no tag"})).0, 403);
    assert_eq!(node.json(&["get", "notes", "w"])["tag"], "work");
    // Inside: fine.
    assert_eq!(write(json!({"id": "w", "text": "edited"})).0, 200);
    let (status, created) = write(json!({"tag": "work", "text": "new"}));
    assert_eq!(status, 201);
    assert_eq!(
        node.json(&["get", "notes", created["id"].as_str().unwrap()])["text"],
        "new"
    );
    node.stop();
}

/// Finding 4: with only `notes.meta.color` writable, a write cannot replace an
/// ungranted value stored in `meta`.
#[test]
fn a_nested_write_grant_cannot_replace_its_parent() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&["put", "notes", "n1", r#"{"meta": "keep me"}"#]);
    node.json(&["put", "notes", "n2", r#"{"meta": {"size": 3}}"#]);
    let (_, token) = grant(&node, &["--write", "notes.meta.color"]);
    let write = |id: &str| {
        service(
            &node,
            &token,
            Method::POST,
            "/v1/view/notes",
            Some(json!({"id": id, "meta": {"color": "x"}})),
        )
    };
    let (status, body) = write("n1");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("out_of_scope")),
        "{body}"
    );
    assert_eq!(
        node.json(&["get", "notes", "n1"]),
        json!({"id": "n1", "meta": "keep me"})
    );
    assert_eq!(write("n2").0, 200);
    assert_eq!(
        node.json(&["get", "notes", "n2"])["meta"],
        json!({"size": 3, "color": "x"})
    );
    node.stop();
}

/// Finding 6: refused attempts of a known grant are audited; writes name the records
/// they touched; the revocation report counts reads, deliveries and writes.
#[test]
fn the_audit_log_shows_refusals_writes_and_what_was_seen() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&["put", "notes", "n1", r#"{"title": "a", "body": "b"}"#]);
    let (id, token) = grant(
        &node,
        &[
            "--read",
            "notes.title",
            "--write",
            "notes.title",
            "--rate",
            "5/min",
        ],
    );
    assert_eq!(
        service(&node, &token, Method::GET, "/v1/view/notes", None).0,
        200
    );
    assert_eq!(
        service(&node, &token, Method::GET, "/v1/view/contacts", None).0,
        403
    );
    assert_eq!(
        service(
            &node,
            &token,
            Method::POST,
            "/v1/view/notes",
            Some(json!({"id": "n1", "title": "z"}))
        )
        .0,
        200
    );
    // Over the rate: refused (and counted, not one entry each).
    let statuses: Vec<u16> = (0..6)
        .map(|_| service(&node, &token, Method::GET, "/v1/view/notes", None).0)
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");

    let audit = node.json(&["audit", "--grant", &id]);
    let entries = audit.as_array().unwrap();
    let write = entries
        .iter()
        .find(|e| e["operation"] == "write")
        .expect("the write is audited");
    assert_eq!(write["ids"], json!(["n1"]));
    assert_eq!(write["fields"], json!(["title"]));
    let refused: Vec<&Value> = entries
        .iter()
        .filter(|e| e["operation"] == "refused")
        .collect();
    assert!(
        refused
            .iter()
            .any(|e| e["reason"] == "out_of_scope" && e["collection"] == "contacts"),
        "{audit}"
    );
    node.json(&["audit", "--verify"]);

    let revoked = node.json(&["revoke", &id]);
    let notes = &revoked["seen"]["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["collection"] == "notes")
        .cloned()
        .unwrap();
    assert!(notes["record_reads"].as_u64().unwrap() >= 1);
    assert_eq!(notes["writes"], 1);
    assert_eq!(notes["written_ids"], json!(["n1"]));
    assert!(revoked["seen"]["refused"].as_u64().unwrap() >= 1);
    // After the revocation, its attempts are still seen.
    assert_eq!(
        service(&node, &token, Method::GET, "/v1/view/notes", None).0,
        403
    );
    let audit = node.json(&["audit", "--grant", &id]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "revoked"),
        "{audit}"
    );
    node.stop();
}

/// Finding 10 (smaller ones, at the process level).
#[test]
fn smaller_findings_hold() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);

    // An expired attenuated token says `expired`.
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada", "tag": "3"}"#]);
    let (_, token) = grant(&node, &["--read", "contacts"]);
    let narrowed = hearth_json(
        t.path(),
        &[
            "token",
            "attenuate",
            &token,
            "--read",
            "contacts.name",
            "--expires",
            "1s",
        ],
    );
    let narrowed = narrowed["token"].as_str().unwrap();
    assert_eq!(
        service(&node, narrowed, Method::GET, "/v1/view/contacts", None).1,
        json!([{"id": "ada", "name": "Ada"}])
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (status, body) = service(&node, narrowed, Method::GET, "/v1/view/contacts", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("expired")),
        "{body}"
    );

    // `--where tag=3` matches the text "3"; a quoted value matches only text.
    let (_, typed) = grant(&node, &["--read", "contacts.name", "--where", "tag=3"]);
    assert_eq!(
        service(&node, &typed, Method::GET, "/v1/view/contacts", None).1,
        json!([{"id": "ada", "name": "Ada"}])
    );

    // HOME and what holds the data are readable by this user only.
    use std::os::unix::fs::PermissionsExt;
    for dir in [
        t.path().to_path_buf(),
        t.path().join("store"),
        t.path().join("blobs"),
    ] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }

    // A page that made its own name resolve to 127.0.0.1 gets nothing.
    let api = Api::new(&node);
    let answer = api.send(api.request(Method::GET, "/v1/status").header(
        "host",
        format!("evil.example:{}", node.api_addr.rsplit(':').next().unwrap()),
    ));
    assert_eq!(
        (answer.0, answer.1["error"]["code"].as_str()),
        (421, Some("bad_host"))
    );

    // A closed stdout is a clean exit, and `grant` prints its token first.
    let out = run_piped_to_head(t.path(), &["grant", "reader", "--read", "contacts"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(first.starts_with("token: "), "{first}");
    for _ in 0..200 {
        node.json(&[
            "put",
            "notes",
            &format!("n{}", rand_suffix()),
            r#"{"x": 1}"#,
        ]);
    }
    let (_, reader) = grant(&node, &["--read", "notes"]);
    for _ in 0..40 {
        service(&node, &reader, Method::GET, "/v1/view/notes", None);
    }
    let out = run_piped_to_head(t.path(), &["audit"]);
    assert!(
        out.status.success(),
        "hearth audit | head: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    node.stop();
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs `hearth --home HOME ARGS | head -1`-style: stdout is read for one line, then
/// closed while the command may still write.
fn run_piped_to_head(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(hearth_bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("HEARTH_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = std::io::BufReader::new(stdout);
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    drop(reader);
    let output = child.wait_with_output().unwrap();
    std::process::Output {
        status: output.status,
        stdout: first.into_bytes(),
        stderr: output.stderr,
    }
}
