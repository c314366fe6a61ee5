//! Findings of the third trust round, each written as the attack that found it: a
//! write grant naming a blob to read it, event streams shutting the owner out, reads
//! of hidden or missing ids leaving no trace, and an import ignoring the record limit.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hearth_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

fn token_of(grant: &Value) -> String {
    grant["token"].as_str().unwrap().to_owned()
}

fn id_of(grant: &Value) -> String {
    grant["id"].as_str().unwrap().to_owned()
}

/// A service that may write a collection names a blob in a record of its own and
/// then asks for it: a blob it was never shown, and one whose record left its filter
/// after it copied the reference. Neither is served, each answered word for word like
/// a blob that does not exist; namings the service did not make still count.
#[test]
fn a_write_grant_cannot_reach_a_blob_by_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    let blob = |name: &str, bytes: &[u8]| node.blob_put(dir.path(), name, bytes);
    let beach = blob("beach.jpg", b"the beach photo");
    let private = blob("private.jpg", b"a private photo");
    let unnamed = blob("scan.pdf", b"no record names this");
    let put = |id: &str, record: Value| {
        node.json(&["put", "photos", id, &record.to_string()]);
    };
    put(
        "p1",
        json!({"album": "holiday", "title": "Beach", "file": {"blob": beach}}),
    );
    put(
        "p2",
        json!({"album": "private", "title": "Me", "file": {"blob": private}}),
    );
    let gallery = node.json(&[
        "grant",
        "gallery",
        "--read",
        "photos",
        "--write",
        "photos",
        "--where",
        "album=holiday",
    ]);
    let token = token_of(&gallery);
    let api = Api::new(&node);
    let get = |id: &str| {
        api.send_raw(
            api.raw(Method::GET, &format!("/v1/view/_blobs/{id}"))
                .bearer_auth(&token),
        )
    };
    let write = |record: Value| {
        api.send(
            api.raw(Method::POST, "/v1/view/photos")
                .bearer_auth(&token)
                .json(&record),
        )
    };
    let nothing = "0".repeat(64);
    let missing = String::from_utf8(get(&nothing).body).unwrap();
    let refused_like_missing = |id: &str| {
        let answer = get(id);
        assert_eq!(answer.status, 404, "{id} was served");
        assert_eq!(
            String::from_utf8(answer.body).unwrap(),
            missing.replace(&nothing, id),
            "answered unlike a missing blob"
        );
    };

    // Blobs it was never shown, named in records of its own (new, and one it may
    // change): the writes are taken, the blobs are not served.
    for hidden in [&private, &unnamed] {
        let (status, body) =
            write(json!({"album": "holiday", "title": "mine", "file": {"blob": hidden}}));
        assert_eq!(status, 201, "{body}");
        refused_like_missing(hidden);
    }
    let (status, body) = write(json!({"id": "p1", "cover": {"blob": private}}));
    assert_eq!(status, 200, "{body}");
    refused_like_missing(&private);

    // A naming it did not make counts, also in a record it has changed since.
    let (status, body) = write(json!({"id": "p1", "title": "Beach at noon"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&beach).status, 200);
    assert_eq!(get(&beach).body, b"the beach photo");

    // It copies the reference it can see into a record of its own; then the owner
    // moves the photo out of the filter. The copy is its own doing: not served.
    let (status, body) =
        write(json!({"album": "holiday", "title": "copy", "file": {"blob": beach}}));
    assert_eq!(status, 201, "{body}");
    node.json(&["patch", "photos", "p1", r#"{"album": "archive"}"#]);
    refused_like_missing(&beach);

    // The owner naming the blob again in a visible record makes it readable again.
    put(
        "p4",
        json!({"album": "holiday", "title": "Again", "file": {"blob": beach}}),
    );
    assert_eq!(get(&beach).status, 200);

    // Every refusal is in the log as the probe it was, under `_blobs` (those within
    // one second as one entry with their count, once the second is over).
    let grant = id_of(&gallery);
    eventually("every refused blob read is in the log", || {
        let audit = node.json(&["audit", "--grant", &grant]);
        let probes: u64 = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["operation"] == "read_blob"
                    && e["reason"] == "not_found"
                    && e["collection"] == "_blobs"
            })
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum();
        // The missing blob, the two never shown, the one named as a cover, and the
        // copied one.
        (probes == 5).then_some(())
    });
}

/// Sends a GET for the event stream on a connection of its own and reads the answer's
/// head: the status and the connection, left open.
fn open_stream(addr: &str, token: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET /v1/view/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("no answer head: {other:?}"),
        }
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, stream)
}

/// Whether the node ended a stream: an `error` event, or the connection closed.
fn ended(mut stream: TcpStream, deadline: Instant) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains("event: error") {
                    return true;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Four read grants ask for 128 event streams each: as many connections as the node
/// serves. The services together get a bounded share (the rest a clear 503), the
/// owner's API and the CLI get through at once, and `hearth revoke` ends the streams.
#[test]
fn event_streams_never_lock_the_owner_out() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let addr = node.base_url().trim_start_matches("http://").to_owned();
    let grants: Vec<Value> = (0..4)
        .map(|i| node.json(&["grant", &format!("watcher{i}"), "--read", "notes"]))
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for grant in &grants {
        for _ in 0..128 {
            let (status, stream) = open_stream(&addr, &token_of(grant));
            match status {
                200 => open.push(stream),
                503 => refused += 1,
                other => panic!("a stream request answered {other}"),
            }
        }
    }
    assert!(
        !open.is_empty() && open.len() + refused == 512,
        "{} open, {refused} refused",
        open.len()
    );
    assert!(refused > 0, "all 512 streams were let in");
    // The owner gets through while every stream the services may hold is open.
    let api = Api::new(&node);
    let started = Instant::now();
    let (status, body) = api.send(api.request(Method::GET, "/v1/status"));
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the owner waited {:?}",
        started.elapsed()
    );
    // A service asking for one more is told why.
    let (status, _) = open_stream(&addr, &token_of(&grants[0]));
    assert!(status == 503 || status == 429, "{status}");
    // The CLI gets through and revocation ends every stream.
    let started = Instant::now();
    for grant in &grants {
        let out = node.run(&["revoke", &id_of(grant)]);
        assert!(out.status.success(), "{}", one_line_error(&out));
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "revoking took {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let still_open = open
        .into_iter()
        .filter(|s| !ended(s.try_clone().unwrap(), deadline))
        .count();
    assert_eq!(still_open, 0, "streams left open after revocation");
}

/// A service probing ids it cannot see (hidden by its filter, or missing) is in the
/// log, each read under its own collection, with the ids it asked for.
#[test]
fn reads_that_find_nothing_are_audited_under_their_own_collection() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada", "team": "a"}"#]);
    node.json(&[
        "put",
        "contacts",
        "hidden",
        r#"{"name": "Bob", "team": "b"}"#,
    ]);
    node.json(&["put", "notes", "n1", r#"{"text": "hello", "team": "a"}"#]);
    let grant = node.json(&[
        "grant",
        "prober",
        "--read",
        "contacts,notes",
        "--where",
        "team=a",
    ]);
    let token = token_of(&grant);
    let api = Api::new(&node);
    let get = |path: &str| {
        api.send(
            api.raw(Method::GET, &format!("/v1/view/{path}"))
                .bearer_auth(&token),
        )
        .0
    };
    // In one second: probes of two collections, then a read that finds its record.
    assert_eq!(get("contacts/hidden"), 404);
    assert_eq!(get("contacts/nobody"), 404);
    assert_eq!(get("contacts/nobody2"), 404);
    assert_eq!(get("notes/missing"), 404);
    assert_eq!(get("contacts/ada"), 200);
    let entries = |collection: &str| -> (u64, Vec<String>) {
        let audit = node.json(&["audit", "--grant", &id_of(&grant)]);
        let mut count = 0;
        let mut ids = Vec::new();
        for e in audit.as_array().unwrap() {
            if e["operation"] == "read"
                && e["reason"] == "not_found"
                && e["collection"] == collection
            {
                count += e["count"].as_u64().unwrap_or(1);
                for id in e["ids"].as_array().unwrap() {
                    ids.push(id.as_str().unwrap().to_owned());
                }
            }
        }
        ids.sort();
        (count, ids)
    };
    let (contacts, notes) = eventually("the probes are in the log", || {
        let (c, n) = (entries("contacts"), entries("notes"));
        (c.0 == 3 && n.0 == 1).then_some((c, n))
    });
    assert_eq!(contacts.1, ["hidden", "nobody", "nobody2"]);
    assert_eq!(notes.1, ["missing"]);
    // `hearth audit` says what a probe is.
    let out = node.run(&["audit"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("read contacts")
            && l.contains("found nothing")
            && l.contains("hidden")),
        "{text}"
    );
}

/// A card with one huge NOTE is refused by an import as a PUT refuses it, naming the
/// entry's line and UID; the import stays all or nothing.
#[test]
fn an_import_obeys_the_record_limit() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let note = "x".repeat(2 * 1024 * 1024);
    let file = t.file(
        "big.vcf",
        format!(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:small-1\r\nFN:Small\r\nEND:VCARD\r\n\
             BEGIN:VCARD\r\nVERSION:3.0\r\nUID:huge-2\r\nFN:Huge\r\nNOTE:{note}\r\nEND:VCARD\r\n"
        ),
    );
    let out = node.run(&["import", "contacts", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let error = one_line_error(&out);
    assert!(
        error.contains("line 6") && error.contains("huge-2") && error.contains("bytes"),
        "{error}"
    );
    let listed = node.json(&["ls", "contacts"]);
    assert_eq!(listed, json!([]), "nothing of the file was stored");
    // Over the API the same.
    let api = Api::new(&node);
    let (status, body) = api.send(
        api.request(Method::POST, "/v1/import/contacts")
            .header("content-type", "text/vcard")
            .body(std::fs::read(&file).unwrap()),
    );
    assert!(status == 400 || status == 413, "{status} {body}");
    assert_eq!(node.json(&["ls", "contacts"]), json!([]));
}

/// Someone trying app passwords, over DAV and as bearer tokens on the view routes:
/// each wrong one is audited, and after ten in a minute the address is told to wait,
/// even with the right password, while a token still works.
#[test]
fn wrong_app_passwords_are_throttled_and_audited_everywhere() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    let grant = node.json(&["grant", "phone", "--read", "contacts", "--app-password"]);
    let password = grant["password"].as_str().unwrap().to_owned();
    let token = token_of(&grant);
    let api = Api::new(&node);
    let view = |secret: &str| {
        api.send(
            api.raw(Method::GET, "/v1/view/contacts/ada")
                .bearer_auth(secret),
        )
        .0
    };
    let dav = |secret: &str| {
        api.send_raw(
            api.raw(Method::GET, "/dav/contacts/contacts/ada.vcf")
                .basic_auth("phone", Some(secret)),
        )
        .status
    };
    // The password works as a bearer token on the view routes, as over DAV.
    assert_eq!(view(&password), 200);
    assert_eq!(dav(&password), 200);
    let wrong = "aaaa-bbbb-cccc-dddd-eeee";
    for i in 0..10 {
        let status = if i % 2 == 0 { dav(wrong) } else { view(wrong) };
        assert_eq!(status, 401, "attempt {i}");
    }
    assert_eq!(dav(wrong), 429);
    assert_eq!(view(&password), 429, "the address waits, whatever it sends");
    assert_eq!(dav(&password), 429);
    assert_eq!(view(&token), 200, "a token is not held up");
    let audit = eventually("the wrong passwords are in the log", || {
        let audit = node.json(&["audit"]);
        let wrong: u64 = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "wrong_password")
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum();
        (wrong == 10).then_some(audit)
    });
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "wrong_password" && e["service"] == "unknown"),
        "{audit}"
    );
}

/// A token or an invite code need not be typed on the command line (where the shell's
/// history and the process list keep it): `-` reads it from stdin, `@FILE` from a file.
#[test]
fn secrets_are_taken_from_stdin_and_files() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&["put", "notes", "n1", r#"{"text": "hello", "title": "Hi"}"#]);
    let token = token_of(&node.json(&["grant", "reader", "--read", "notes"]));
    let home = t.path().to_str().unwrap();
    let attenuate = |source: &str, input: &[u8]| {
        hearth_with_stdin(
            &[
                "--home",
                home,
                "token",
                "attenuate",
                source,
                "--read",
                "notes.title",
            ],
            input,
        )
    };
    let api = Api::new(&node);
    let narrowed_reads = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let narrowed = String::from_utf8(out.stdout.clone()).unwrap();
        let (status, body) = api.send(
            api.raw(Method::GET, "/v1/view/notes/n1")
                .bearer_auth(narrowed.trim()),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"id": "n1", "title": "Hi"}));
    };
    narrowed_reads(&attenuate("-", format!("{token}\n").as_bytes()));
    let file = t.file("token.txt", format!("{token}\n"));
    narrowed_reads(&attenuate(&format!("@{}", file.display()), b""));
    let error = one_line_error(&attenuate("-", b"  \n"));
    assert!(error.contains("the token is empty"), "{error}");
    // An invite code from a file is read as one (and refused as the garbage it is).
    let code = t.file("invite.txt", "hearth1-not-a-code\n");
    let out = hearth(&[
        "--home",
        t.dir().join("other").to_str().unwrap(),
        "join",
        &format!("@{}", code.display()),
    ]);
    let error = one_line_error(&out);
    assert!(!error.contains("cannot read"), "{error}");
    assert!(error.to_lowercase().contains("invite"), "{error}");
}

/// The dashboard's import takes up to 64 MiB: a request without a session is refused
/// before any of its body is read (the client here sends the head of a 60 MB upload
/// and a few bytes, and gets its answer without sending the rest).
#[test]
fn the_dashboard_import_refuses_a_request_without_a_session_before_its_body() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let addr = node.base_url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /data/import HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: 60000000\r\n\r\n--XYZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nBEGIN:VCARD\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    let read = stream.read_exact(&mut head);
    assert!(read.is_ok(), "no answer before the body was sent: {read:?}");
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}
