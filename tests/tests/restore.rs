//! `hearth import --all DIR`: an `export --all` directory brought back into a new vault
//! (the house burned, the export survived) and into the vault it came from, with real
//! `hearth` processes. Blob ids are keyed per vault, so every reference to a blob must
//! be rewritten to the blob restored; `hearth check` finds records naming a blob the
//! vault does not have.

use std::collections::BTreeMap;
use std::path::Path;

use hearth_tests::*;
use serde_json::Value;

/// A small JPEG-like photo, base64 in a vCard 3 `PHOTO` line: Hearth keeps it as a blob.
const PHOTO_B64: &str = "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAP//////////////////////////////////////////////////////////////////////////////////////2Q==";

fn mbox() -> Vec<u8> {
    let mut out = Vec::new();
    for n in 0..3 {
        out.extend_from_slice(
            format!(
                "From sender{n}@example.org Mon Jan  1 10:00:00 2024\nFrom: Sender {n} <sender{n}@example.org>\nTo: ada@example.org\nSubject: message {n}\nDate: Mon, 1 Jan 2024 10:0{n}:00 +0100\nMessage-ID: <r{n}@example.org>\n\nBody {n}, kept byte for byte.\n\n"
            )
            .as_bytes(),
        );
    }
    out
}

/// A vault with notes, contacts (one with a photo), a calendar, mail, and a note that
/// names a blob in a `blob` field; exported whole into `DIR/export`.
fn vault_with_everything(t: &TestHome, node: &NodeProcess) -> std::path::PathBuf {
    node.json(&["put", "notes", "n1", r#"{"text":"first", "tags":["a"]}"#]);
    node.json(&["put", "notes", "n2", r#"{"text":"second ✓"}"#]);
    let vcf = t.file(
        "people.vcf",
        format!(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:ada\r\nFN:Ada Lovelace\r\nEMAIL:ada@example.org\r\nPHOTO;ENCODING=b;TYPE=JPEG:{PHOTO_B64}\r\nEND:VCARD\r\nBEGIN:VCARD\r\nVERSION:4.0\r\nUID:bob\r\nFN:Bob\r\nEND:VCARD\r\n"
        ),
    );
    node.json(&["import", "contacts", vcf.to_str().unwrap()]);
    let ics = t.file(
        "events.ics",
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:e1\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20261224T180000Z\r\nSUMMARY:Dinner\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    );
    node.json(&["import", "calendar", ics.to_str().unwrap()]);
    let report: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let report = node.blob_put(t.dir(), "report.pdf", &report);
    node.json(&[
        "put",
        "notes",
        "n3",
        &format!(r#"{{"text":"see the report", "attachment": {{"blob": "{report}"}}}}"#),
    ]);
    let mbox = t.file("inbox.mbox", mbox());
    node.json(&["import", "mail", mbox.to_str().unwrap()]);
    let dir = t.dir().join("export");
    node.json(&["export", "--all", "-o", dir.to_str().unwrap()]);
    dir
}

/// An export's records (and vCard / iCalendar texts), every blob id replaced by the
/// SHA-256 of the blob's file: what must be equal between two vaults' exports.
fn by_content(dir: &Path) -> BTreeMap<String, Value> {
    use sha2::Digest;
    let blobs: Vec<Value> =
        serde_json::from_slice(&std::fs::read(dir.join("blobs.json")).unwrap()).unwrap();
    let content: BTreeMap<String, String> = blobs
        .iter()
        .map(|b| {
            let file = dir.join("blobs").join(b["file"].as_str().unwrap());
            let digest = sha2::Sha256::digest(std::fs::read(file).unwrap());
            (b["id"].as_str().unwrap().to_owned(), format!("{digest:x}"))
        })
        .collect();
    fn replace(value: &mut Value, content: &BTreeMap<String, String>) {
        match value {
            Value::String(s) => {
                if let Some(digest) = content.get(s.as_str()) {
                    *s = format!("blob with sha256 {digest}");
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| replace(v, content)),
            Value::Object(map) => map.values_mut().for_each(|v| replace(v, content)),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for file in files_under(dir) {
        let relative = file.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
        if relative.starts_with("records/") {
            let mut records: Value =
                serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            replace(&mut records, &content);
            out.insert(relative, records);
        } else if relative.starts_with("vcard/") || relative.starts_with("icalendar/") {
            let text = String::from_utf8(std::fs::read(&file).unwrap()).unwrap();
            out.insert(relative, Value::String(text));
        }
    }
    out
}

fn records_in(dir: &Path) -> u64 {
    by_content(dir)
        .iter()
        .filter(|(name, _)| name.starts_with("records/"))
        .map(|(_, records)| records.as_array().unwrap().len() as u64)
        .sum()
}

/// The house burned; the export survived. A new vault gets every record, contact,
/// event, message and blob back, each reference pointing at its restored blob: its own
/// export equals the first one blob for blob, its mail exports byte for byte, and
/// `hearth check` finds nothing wrong. Run again, it adds nothing; a record changed
/// since is kept as the vault has it, and named.
#[test]
fn an_export_restores_into_a_new_vault_with_every_blob_reference_kept() {
    let t = TestHome::new();
    let a = spawn_node(&t.path().join("a"), &[]);
    let export = vault_with_everything(&t, &a);
    let mail_a = t.dir().join("a.mbox");
    a.json(&["export", "mail", "-o", mail_a.to_str().unwrap()]);
    a.stop();
    let total = records_in(&export);
    assert_eq!(total, 3 + 2 + 1 + 3, "notes, contacts, calendar, mail");

    let b = spawn_node(&t.path().join("b"), &[]);
    let restored = b.json(&["import", "--all", export.to_str().unwrap()]);
    assert_eq!(restored["created"], total, "{restored}");
    assert_eq!(restored["unchanged"], 0, "{restored}");
    assert_eq!(restored["collections"], 4, "{restored}");
    // The report, the photo and three messages.
    assert_eq!(restored["blobs"], 5, "{restored}");
    assert_eq!(
        restored["missing_blobs"],
        Value::Array(vec![]),
        "{restored}"
    );

    let again = t.dir().join("again");
    b.json(&["export", "--all", "-o", again.to_str().unwrap()]);
    assert_eq!(by_content(&again), by_content(&export));
    // The blob ids did change (a new vault's key), and the records follow them.
    let ids = |dir: &Path| std::fs::read_to_string(dir.join("blobs.json")).unwrap();
    assert_ne!(ids(&again), ids(&export));
    let mail_b = t.dir().join("b.mbox");
    b.json(&["export", "mail", "-o", mail_b.to_str().unwrap()]);
    assert!(std::fs::read(&mail_a).unwrap() == std::fs::read(&mail_b).unwrap());
    assert_eq!(b.json(&["check"])["ok"], true);
    let ada = b.json(&["ls", "contacts"]);
    let photo = ada
        .as_array()
        .unwrap()
        .iter()
        .find_map(|c| c["photo"]["blob"].as_str())
        .expect("the photo survived as a blob")
        .to_owned();
    let out = t.dir().join("photo.jpg");
    b.json(&["blob", "get", &photo, "-o", out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out)
            .unwrap()
            .starts_with(&[0xff, 0xd8, 0xff])
    );

    // Again: nothing new. A note changed since is kept, and named.
    b.json(&["put", "notes", "n1", r#"{"text":"changed after the loss"}"#]);
    let twice = b.json(&["import", "--all", export.to_str().unwrap()]);
    assert_eq!(twice["created"], 0, "{twice}");
    assert_eq!(twice["unchanged"], total - 1, "{twice}");
    assert_eq!(
        twice["differing"],
        serde_json::json!([{"collection": "notes", "id": "n1"}])
    );
    assert_eq!(
        b.json(&["get", "notes", "n1"])["text"],
        "changed after the loss"
    );
    // A record removed since comes back.
    b.json(&["rm", "notes", "n2"]);
    let back = b.json(&["import", "--all", export.to_str().unwrap()]);
    assert_eq!(back["created"], 1, "{back}");
    assert_eq!(b.json(&["get", "notes", "n2"])["text"], "second ✓");
    b.stop();
}

/// A damaged export is refused or reported, never half-read in silence: a blob file
/// gone (the restore says which, fails, and `hearth check` then names the record that
/// points at nothing), a file name that leads out of `blobs/`, a file of the wrong size,
/// a records file that is not JSON, a directory that is no export, a record the node
/// refuses (named; the others restored).
#[test]
fn a_damaged_export_is_refused_or_reported_and_check_names_what_points_at_nothing() {
    let t = TestHome::new();
    let a = spawn_node(&t.path().join("a"), &[]);
    let export = vault_with_everything(&t, &a);
    a.stop();
    let blobs: Vec<Value> =
        serde_json::from_slice(&std::fs::read(export.join("blobs.json")).unwrap()).unwrap();
    let report = blobs
        .iter()
        .find(|b| b["name"] == "report.pdf")
        .unwrap()
        .clone();

    // The report's file is gone: everything else is restored, the exit says what is not.
    let lost = t.dir().join("lost");
    copy_dir(&export, &lost);
    std::fs::remove_file(lost.join("blobs").join(report["file"].as_str().unwrap())).unwrap();
    let b = spawn_node(&t.path().join("b"), &[]);
    let out = b.run(&["import", "--all", lost.to_str().unwrap()]);
    let err = one_line_error(&out);
    assert!(
        err.contains("1 blob(s)") && err.contains(report["id"].as_str().unwrap()),
        "{err}"
    );
    assert_eq!(b.json(&["get", "notes", "n2"])["text"], "second ✓");
    let out = b.run(&["check", "--json"]);
    assert!(!out.status.success());
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = check["problems"].to_string();
    assert!(
        problems.contains("record n3 of collection notes names blob"),
        "{problems}"
    );
    // Only the record that names it in a `blob` field: nothing else is a problem.
    assert_eq!(check["problems"].as_array().unwrap().len(), 1, "{problems}");

    let damaged = |name: &str, change: &dyn Fn(&Path)| {
        let dir = t.dir().join(name);
        copy_dir(&export, &dir);
        change(&dir);
        let before = b.json(&["ls", "notes"]);
        let err = one_line_error(&b.run(&["import", "--all", dir.to_str().unwrap()]));
        assert_eq!(b.json(&["ls", "notes"]), before, "{name}: nothing changed");
        err
    };
    let err = damaged("escape", &|dir| {
        let mut listed = blobs.clone();
        listed[0]["file"] = Value::String("../../a/keys/device.key".into());
        std::fs::write(dir.join("blobs.json"), serde_json::to_vec(&listed).unwrap()).unwrap();
    });
    assert!(err.contains("not a plain file name"), "{err}");
    let err = damaged("short", &|dir| {
        let file = dir.join("blobs").join(report["file"].as_str().unwrap());
        std::fs::write(file, b"not the report").unwrap();
    });
    assert!(err.contains("the export is damaged"), "{err}");
    let err = damaged("format", &|dir| {
        std::fs::write(dir.join("export.json"), br#"{"format": "hearth-export-9"}"#).unwrap();
    });
    assert!(err.contains("hearth-export-9"), "{err}");
    let err = damaged("noexport", &|dir| {
        std::fs::remove_file(dir.join("export.json")).unwrap();
    });
    assert!(
        err.contains("is not a `hearth export --all` directory"),
        "{err}"
    );
    let err = damaged("badjson", &|dir| {
        std::fs::write(
            dir.join("records").join("notes.json"),
            b"[{\"id\": \"n9\"},",
        )
        .unwrap();
    });
    assert!(err.contains("notes.json") && err.contains("JSON"), "{err}");
    // A record the node refuses (an id that is no record id) is named, and the record
    // beside it in the same batch is restored all the same.
    let bad = t.dir().join("badid");
    copy_dir(&export, &bad);
    std::fs::write(
        bad.join("records").join("notes.json"),
        br#"[{"id": "n9", "text": "fine"}, {"id": "no spaces / here", "text": "x"}]"#,
    )
    .unwrap();
    let out = b.run(&["import", "--all", bad.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["refused"][0]["id"], "no spaces / here", "{said}");
    assert!(
        said["refused"][0]["reason"]
            .to_string()
            .contains("record 0 of the array"),
        "{said}"
    );
    assert_eq!(b.json(&["get", "notes", "n9"])["text"], "fine");
    b.stop();
}

/// The restore route, attacked directly: no owner token, a system collection, a body
/// that is no JSON or no array, too many records, a record over 4 times the record limit, an
/// id twice, a vCard that does not read: each refused with its reason, and nothing of
/// the batch written (the good record beside the bad one included).
#[test]
fn the_restore_route_refuses_what_is_wrong_and_writes_nothing_of_it() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&["put", "notes", "kept", r#"{"text": "as it was"}"#]);
    let api = Api::new(&node);
    let post = |path: &str, body: Vec<u8>| {
        api.send(
            api.request(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .body(body),
        )
    };
    let json = |v: Value| serde_json::to_vec(&v).unwrap();
    let good = serde_json::json!({"id": "fresh", "text": "new"});

    let (status, _) = api.send(
        api.raw(reqwest::Method::POST, "/v1/restore/notes")
            .body(json(serde_json::json!([good]))),
    );
    assert_eq!(status, 401, "no owner token");
    let (status, body) = post("/v1/restore/_devices", json(serde_json::json!([good])));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("reserved")),
        "{body}"
    );
    let (status, body) = post("/v1/restore/notes", b"[{\"id\": ".to_vec());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_json")),
        "{body}"
    );
    let (status, body) = post("/v1/restore/notes", json(good.clone()));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("JSON array"), "{body}");
    let many: Vec<Value> = (0..5_001)
        .map(|i| serde_json::json!({"id": format!("m{i}")}))
        .collect();
    let (status, body) = post("/v1/restore/notes", json(Value::Array(many)));
    assert_eq!(status, 413, "{body}");
    let big = serde_json::json!({"id": "big", "text": "x".repeat(4_300_000)});
    let (status, body) = post("/v1/restore/notes", json(serde_json::json!([good, big])));
    assert_eq!(status, 413, "{body}");
    assert!(body.to_string().contains("record big"), "{body}");
    let twice = serde_json::json!([good, {"id": "fresh", "text": "other"}]);
    let (status, body) = post("/v1/restore/notes", json(twice));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("twice"), "{body}");
    let (status, body) = post(
        "/v1/restore/notes",
        json(serde_json::json!([good, {"id": "kept", "text": "overwritten?"}, 7])),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("record 2 of the array"), "{body}");
    let card = serde_json::json!({"id": "c1", "vcard": "BEGIN:VCARD\r\nFN:no end"});
    let (status, body) = post("/v1/restore/contacts", json(serde_json::json!([card])));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("record c1"), "{body}");

    assert_eq!(node.json(&["get", "notes", "kept"])["text"], "as it was");
    assert!(!node.run(&["get", "notes", "fresh"]).status.success());
    assert!(!node.run(&["get", "contacts", "c1"]).status.success());
    // And a good batch goes through, leaving what was there.
    let (status, body) = post(
        "/v1/restore/notes",
        json(serde_json::json!([good, {"id": "kept", "text": "other"}])),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"created": 1, "unchanged": 0, "differing": ["kept"]})
    );
    assert_eq!(node.json(&["get", "notes", "kept"])["text"], "as it was");
    node.stop();
}
