//! Search as a person uses it: `hearth find` and `GET /v1/search` find contacts,
//! notes and files (by name, path and what the bytes said) a moment after they are
//! written, forget what was removed, survive a restart, say clearly what is wrong
//! with a query, and leave nothing readable on disk.

use std::time::{Duration, Instant};

use hearth_tests::*;
use reqwest::Method;
use serde_json::Value;

/// `hearth find ARGS --json`'s hits as `collection/id`, once they are what `until`
/// wants (the index follows writes a moment behind), or what they are after 10 s.
fn find_until(node: &NodeProcess, args: &[&str], until: impl Fn(&[String]) -> bool) -> Vec<String> {
    let started = Instant::now();
    loop {
        let mut all = vec!["find"];
        all.extend_from_slice(args);
        let found: Vec<String> = node.json(&all)["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                format!(
                    "{}/{}",
                    h["collection"].as_str().unwrap(),
                    h["id"].as_str().unwrap()
                )
            })
            .collect();
        if until(&found) || started.elapsed() > Duration::from_secs(10) {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn find_finds_records_and_files_and_forgets_what_is_removed() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&[
        "put",
        "contacts",
        "ada",
        r#"{"name": "Ada Lovelace", "email": "ada@example.org"}"#,
    ]);
    node.json(&[
        "put",
        "contacts",
        "bob",
        r#"{"name": "Bob Babbage", "notes": "Ada's friend"}"#,
    ]);
    node.json(&[
        "put",
        "notes",
        "trip",
        r#"{"title": "Zanzibarite expedition", "body": "pack for Ada"}"#,
    ]);
    let photo = t.path().join("IMG_0001.jpg");
    std::fs::write(&photo, hearth_node::filemeta::samples::camera_jpeg()).unwrap();
    node.json(&["file", "put", photo.to_str().unwrap(), "/Photos/Zanzibar/"]);

    let ada = find_until(&node, &["ada"], |f| f.len() == 3);
    assert_eq!(ada[0], "contacts/ada", "the name first: {ada:?}");
    assert_eq!(ada.len(), 3, "{ada:?}");
    assert_eq!(
        find_until(&node, &["contacts", "ada"], |f| f.len() == 2).len(),
        2
    );
    assert_eq!(
        find_until(&node, &["ada lovelace"], |f| f.len() == 1),
        ["contacts/ada"]
    );
    // A folder and the file in it by the folder's name; the file by what its bytes
    // said (the camera).
    let zanzibar = find_until(&node, &["zanzibar"], |f| f.len() == 2);
    assert_eq!(zanzibar.len(), 2, "{zanzibar:?}");
    assert!(
        zanzibar.iter().all(|h| h.starts_with("files/")),
        "{zanzibar:?}"
    );
    let canon = find_until(&node, &["canon"], |f| !f.is_empty());
    assert_eq!(canon.len(), 1, "{canon:?}");
    assert!(zanzibar.contains(&canon[0]), "{canon:?} {zanzibar:?}");
    let out = node.run(&["find", "ada"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("contacts/ada  Ada Lovelace  (name"),
        "{text}"
    );

    // Removed: not found any more; changed: found by its new words only.
    node.json(&["rm", "contacts", "bob"]);
    assert_eq!(
        find_until(&node, &["babbage"], <[String]>::is_empty),
        Vec::<String>::new()
    );
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada King"}"#]);
    assert_eq!(
        find_until(&node, &["king"], |f| f.len() == 1),
        ["contacts/ada"]
    );
    assert!(find_until(&node, &["lovelace"], <[String]>::is_empty).is_empty());

    // Wrong asks, each said.
    let api = Api::new(&node);
    for (query, wanted) in [
        ("/v1/search?q=-", "nothing to look for"),
        ("/v1/search", "q"),
        ("/v1/search?q=ada&collection=Bad!", "collection"),
        ("/v1/search?q=ada&limit=x", "limit"),
    ] {
        let (status, body) = api.send(api.raw(Method::GET, query).bearer_auth(node.owner_token()));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.to_string().contains(wanted), "{query}: {body}");
    }
    let out = node.run(&["find", "zzzqqq"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing holds"));
    node.stop();

    // Nothing of it readable on disk.
    for file in files_under(t.path()) {
        if file.extension().is_some_and(|e| e == "jpg") {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap();
        for word in ["zanzibarite", "Zanzibarite", "lovelace", "babbage"] {
            assert!(
                !contains_bytes(&bytes, word.as_bytes()),
                "{} holds {word}",
                file.display()
            );
        }
    }
    // After a restart: found at once, nothing made again.
    let node = spawn_node(t.path(), &[]);
    let hits: Value = node.json(&["find", "zanzibarite"]);
    assert_eq!(hits["hits"][0]["id"], "trip", "{hits}");
    // `hearth check --repair` makes the index again, with the same answers.
    let out = node.run(&["check", "--repair"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("made the search index again: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: Value = node.json(&["find", "zanzibarite"]);
    assert_eq!(again, hits);
    node.stop();
}

/// A grant's search sees what its view shows and nothing more: records its filter
/// hides are not found, a word in a field it cannot read finds nothing (its search is
/// no oracle for hidden fields), a collection it does not read is not searched, hits
/// come projected, and the reads are audited.
#[test]
fn a_grants_search_stays_within_its_view() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    node.json(&[
        "put",
        "people",
        "ada",
        r#"{"name": "Ada Lovelace", "city": "London", "notes": "kumquat"}"#,
    ]);
    node.json(&[
        "put",
        "people",
        "ann",
        r#"{"name": "Ada Annex", "city": "Paris"}"#,
    ]);
    node.json(&["put", "diary", "d1", r#"{"title": "Ada's diary"}"#]);
    let token = node.json(&[
        "grant",
        "raw",
        "--read",
        "people.name,people.city",
        "--where",
        "city=London",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The owner's index has them all first.
    let owner = find_until(&node, &["ada"], |f| f.len() == 3);
    assert_eq!(owner.len(), 3, "{owner:?}");
    let search = |q: &str| {
        let (status, body) = api.send(
            api.raw(Method::GET, &format!("/v1/view/_search?q={q}"))
                .bearer_auth(&token),
        );
        assert_eq!(status, 200, "{body}");
        body["hits"].as_array().unwrap().clone()
    };
    let hits = search("ada");
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["id"], "ada");
    assert_eq!(
        hits[0]["record"],
        serde_json::json!({"id": "ada", "name": "Ada Lovelace", "city": "London"})
    );
    assert_eq!(hits[0]["fields"], serde_json::json!(["name"]));
    assert!(
        search("kumquat").is_empty(),
        "a word in a field it cannot read"
    );
    assert!(
        search("ada+kumquat").is_empty(),
        "a word in a field it cannot read, beside one in a field it can"
    );
    assert!(search("annex").is_empty(), "a record its filter hides");
    assert!(search("diary").is_empty(), "a collection it does not read");
    let audit = node.json(&["audit"]).to_string();
    assert!(audit.contains("\"ada\""), "{audit}");
    let (status, _) = api.send(api.raw(Method::GET, "/v1/view/_search?q=ada"));
    assert_eq!(status, 401);
    node.stop();
}

/// Mail is found by what its body says, not only its headers: an imported message
/// (HTML, quoted-printable) is found by `hearth find`; a grant finds it by its body only
/// if it reads the message itself (`mail.blob`).
#[test]
fn a_mail_is_found_by_its_body() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let message = "From ada@example.org Mon Dec  7 10:00:00 2026\n\
        From: Ada <ada@example.org>\n\
        Subject: Tuesday\n\
        Message-ID: <tuesday@example.org>\n\
        MIME-Version: 1.0\n\
        Content-Type: text/html; charset=utf-8\n\
        Content-Transfer-Encoding: quoted-printable\n\
        \n\
        <p>The <b>mar=C3=A9chal</b> ships the orrery on Friday.</p>\n\
        \n";
    let file = t.file("Inbox.mbox", message.as_bytes());
    let report = node.json(&["import", "mail", file.to_str().unwrap()]);
    assert_eq!(report["imported"], 1, "{report}");
    let found = find_until(&node, &["orrery marechal"], |f| !f.is_empty());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("mail/"), "{found:?}");
    let hits = node.json(&["find", "orrery"]);
    assert_eq!(
        hits["hits"][0]["fields"],
        serde_json::json!(["body"]),
        "{hits}"
    );
    // Two words unquoted: the first is read as a collection, and the person is told.
    let out = node.run(&["find", "orrery", "friday"]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no collection is called \"orrery\"")
            && said.contains("hearth find \"orrery friday\""),
        "{said}"
    );
    let api = Api::new(&node);
    let search = |read: &str| {
        let token =
            node.json(&["grant", &format!("reader-{}", read.len()), "--read", read])["token"]
                .as_str()
                .unwrap()
                .to_owned();
        let (status, body) = api.send(
            api.raw(Method::GET, "/v1/view/_search?q=tuesday+orrery")
                .bearer_auth(&token),
        );
        assert_eq!(status, 200, "{body}");
        body["hits"].as_array().unwrap().len()
    };
    assert_eq!(
        search("mail.subject"),
        0,
        "the body of a message it cannot read"
    );
    assert_eq!(search("mail.subject,mail.blob"), 1);
    node.stop();
}
