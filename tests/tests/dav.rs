//! CardDAV/CalDAV from outside: a DAV client is a service with a grant, so it sees and
//! changes only what the grant allows, with an app password, through a real `hearth`
//! node. The test with real clients (vdirsyncer, khal, khard) is ignored by `cargo
//! test` (it needs those tools) and run by `.ci/run`, which installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use hearth_tests::*;
use reqwest::Method;
use reqwest::blocking::RequestBuilder;
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/pim")
        .join(name)
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap()
}

struct Dav {
    api: Api,
    password: String,
}

impl Dav {
    fn new(node: &NodeProcess, password: &str) -> Self {
        Dav {
            api: Api::new(node),
            password: password.to_owned(),
        }
    }

    fn request(&self, m: &str, path: &str) -> RequestBuilder {
        self.api
            .raw(method(m), path)
            .basic_auth("anyone", Some(&self.password))
    }

    fn send(&self, request: RequestBuilder) -> (u16, String, reqwest::header::HeaderMap) {
        let answer = self.api.send_raw(request);
        (
            answer.status,
            String::from_utf8(answer.body).unwrap(),
            answer.headers,
        )
    }

    fn propfind(&self, path: &str, depth: &str, props: &str) -> (u16, String) {
        let body = format!(
            r#"<?xml version="1.0"?><d:propfind xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav" xmlns:cal="urn:ietf:params:xml:ns:caldav" xmlns:cs="http://calendarserver.org/ns/"><d:prop>{props}</d:prop></d:propfind>"#
        );
        let (status, text, _) = self.send(
            self.request("PROPFIND", path)
                .header("Depth", depth)
                .body(body),
        );
        (status, text)
    }

    fn get(&self, path: &str) -> (u16, String, Option<String>) {
        let (status, text, headers) = self.send(self.request("GET", path));
        let etag = headers.get("etag").map(|v| v.to_str().unwrap().to_owned());
        (status, text, etag)
    }

    fn put(
        &self,
        path: &str,
        text: &str,
        condition: Option<(&str, &str)>,
    ) -> (u16, Option<String>) {
        let mut request = self.request("PUT", path).body(text.to_owned());
        if let Some((name, value)) = condition {
            request = request.header(name, value);
        }
        let (status, _, headers) = self.send(request);
        (
            status,
            headers.get("etag").map(|v| v.to_str().unwrap().to_owned()),
        )
    }

    /// The cards and events a book lists (PROPFIND, depth 1), percent-decoded, sorted.
    fn resources(&self, book: &str) -> Vec<String> {
        let (status, xml) = self.propfind(book, "1", "<d:getetag/>");
        assert_eq!(status, 207, "{xml}");
        let mut names: Vec<String> = hrefs(&xml)
            .into_iter()
            .filter(|h| h.ends_with(".vcf") || h.ends_with(".ics"))
            .map(|h| percent_decoded(&h))
            .collect();
        names.sort();
        names
    }

    fn sync(&self, path: &str, token: &str) -> (u16, String) {
        let body = format!(
            r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>"#
        );
        let (status, text, _) = self.send(self.request("REPORT", path).body(body));
        (status, text)
    }
}

/// `text` with its `%XX` escapes decoded.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match text.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
            Some(Ok(byte)) if bytes[i] == b'%' => {
                out.push(byte);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("hrefs are UTF-8")
}

/// The text of the first `<…name>` element (any prefix) in `xml`.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = xml.find(&format!(":{name}>"))?;
    let start = open + name.len() + 2;
    let end = xml[start..].find("</")? + start;
    Some(xml[start..end].to_owned())
}

fn hrefs(xml: &str) -> Vec<String> {
    xml.split("<d:href>")
        .skip(1)
        .map(|s| s[..s.find("</d:href>").unwrap()].to_owned())
        .collect()
}

fn grant_with_password(node: &NodeProcess, args: &[&str]) -> (String, String) {
    grant_app_password(node, "phone", args)
}

/// Whether the audit log of `grant` has an entry `is` accepts.
fn audited(node: &NodeProcess, grant: &str, is: impl Fn(&Value) -> bool) -> bool {
    let audit = node.json(&["audit", "--grant", grant]);
    audit.as_array().unwrap().iter().any(is)
}

fn vcard(uid: &str, name: &str, extra: &str) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:{name}\r\nN:{name};;;;\r\n{extra}END:VCARD\r\n"
    )
}

/// Discovery, ETags and conditions, sync tokens, and a wrong or missing password.
#[test]
fn a_dav_client_discovers_reads_writes_and_syncs_with_an_app_password() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let imported = node.json(&["import", "contacts", fixture("apple.vcf").to_str().unwrap()]);
    assert!(imported["imported"].as_u64().unwrap() >= 1, "{imported}");
    let (grant, password) = grant_with_password(
        &node,
        &[
            "--read",
            "contacts,calendar",
            "--write",
            "contacts,calendar",
        ],
    );

    // No password, a wrong one: 401 with a Basic challenge, nothing revealed.
    let anonymous = Api::new(&node);
    let answer = anonymous.send_raw(anonymous.raw(method("PROPFIND"), "/dav/"));
    assert_eq!(answer.status, 401);
    assert!(
        answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let wrong = Dav::new(&node, "aaaa-bbbb-cccc-dddd-eeee");
    assert_eq!(
        wrong
            .propfind("/dav/", "0", "<d:current-user-principal/>")
            .0,
        401
    );

    // A web page that made its own name resolve to 127.0.0.1 (DNS rebinding) is
    // refused before the password is even looked at.
    let dav = Dav::new(&node, &password);
    let (status, _, _) = dav.send(
        dav.request("PROPFIND", "/dav/")
            .header("Host", "evil.example:7780")
            .header("Depth", "0"),
    );
    assert_eq!(status, 421, "a foreign Host must be refused");

    // Discovery: well-known → principal → homes → one address book.
    let (status, text, _) = dav.send(dav.request("GET", "/.well-known/carddav"));
    assert_eq!(status, 200, "redirected to /dav/: {text}");
    assert!(text.contains("Hearth CardDAV/CalDAV for phone"), "{text}");
    let (status, xml) = dav.propfind(
        "/dav/",
        "0",
        "<d:current-user-principal/><card:addressbook-home-set/><cal:calendar-home-set/>",
    );
    assert_eq!(status, 207, "{xml}");
    assert!(
        xml.contains("<card:addressbook-home-set><d:href>/dav/contacts/</d:href>"),
        "{xml}"
    );
    assert!(
        xml.contains("<cal:calendar-home-set><d:href>/dav/calendars/</d:href>"),
        "{xml}"
    );
    let (_, xml) = dav.propfind("/dav/contacts/", "1", "<d:resourcetype/><cs:getctag/>");
    assert!(
        xml.contains("<d:href>/dav/contacts/contacts/</d:href>"),
        "{xml}"
    );
    assert!(xml.contains("<card:addressbook/>"), "{xml}");

    // The listing, and each card with a strong ETag.
    let (_, xml) = dav.propfind(
        "/dav/contacts/contacts/",
        "1",
        "<d:getetag/><d:sync-token/>",
    );
    let token = element(&xml, "sync-token").expect("a sync token");
    let cards: Vec<String> = hrefs(&xml)
        .into_iter()
        .filter(|h| h.ends_with(".vcf"))
        .collect();
    assert_eq!(cards.len() as u64, imported["imported"].as_u64().unwrap());
    let (status, text, etag) = dav.get(&cards[0]);
    assert_eq!(status, 200);
    assert!(
        text.starts_with("BEGIN:VCARD") && text.contains("UID:"),
        "{text}"
    );
    let etag = etag.expect("an ETag");
    assert!(etag.starts_with('"'), "strong ETag: {etag}");

    // Conditions: a stale If-Match and If-None-Match: * on an existing card are 412.
    let changed = text.replacen("END:VCARD", "NOTE:met at the conference\r\nEND:VCARD", 1);
    assert_eq!(
        dav.put(&cards[0], &changed, Some(("If-Match", "\"stale\"")))
            .0,
        412
    );
    assert_eq!(
        dav.put(&cards[0], &changed, Some(("If-None-Match", "*"))).0,
        412
    );
    let (status, new_etag) = dav.put(&cards[0], &changed, Some(("If-Match", &etag)));
    assert_eq!(status, 204);
    let (_, text, served) = dav.get(&cards[0]);
    assert_eq!(served, new_etag);
    assert!(text.contains("NOTE:met at the conference"), "{text}");

    // A new card under the client's own name; then the sync report names just it and
    // the changed one.
    let (status, _) = dav.put(
        "/dav/contacts/contacts/new-card.vcf",
        &vcard(
            "new-card-uid",
            "Katherine Johnson",
            "EMAIL:kj@example.org\r\n",
        ),
        Some(("If-None-Match", "*")),
    );
    assert_eq!(status, 201);
    let (status, xml) = dav.sync("/dav/contacts/contacts/", &token);
    assert_eq!(status, 207, "{xml}");
    let mut changed_hrefs = hrefs(&xml);
    changed_hrefs.sort();
    let mut expected = vec![
        cards[0].clone(),
        "/dav/contacts/contacts/new-card.vcf".to_owned(),
    ];
    expected.sort();
    assert_eq!(changed_hrefs, expected, "{xml}");
    let token = element(&xml, "sync-token").unwrap();
    let record = node.json(&["get", "contacts", "new-card"]);
    assert_eq!(record["name"], "Katherine Johnson");
    assert_eq!(record["email"], "kj@example.org");

    // The owner changes a card: the next sync shows it; a delete shows as 404.
    node.json(&[
        "patch",
        "contacts",
        "new-card",
        r#"{"title": "Mathematician"}"#,
    ]);
    let (_, xml) = dav.sync("/dav/contacts/contacts/", &token);
    assert_eq!(
        hrefs(&xml),
        vec!["/dav/contacts/contacts/new-card.vcf"],
        "{xml}"
    );
    let token = element(&xml, "sync-token").unwrap();
    let (_, text, etag) = dav.get("/dav/contacts/contacts/new-card.vcf");
    assert!(text.contains("TITLE:Mathematician"), "{text}");
    let (status, _, _) = dav.send(
        dav.request("DELETE", "/dav/contacts/contacts/new-card.vcf")
            .header("If-Match", etag.unwrap()),
    );
    assert_eq!(status, 204);
    let (_, xml) = dav.sync("/dav/contacts/contacts/", &token);
    assert!(
        xml.contains("new-card.vcf</d:href><d:status>HTTP/1.1 404"),
        "{xml}"
    );
    assert!(!node.run(&["get", "contacts", "new-card"]).status.success());

    // A made-up token is refused as RFC 6578 says.
    let (status, xml) = dav.sync("/dav/contacts/contacts/", "urn:hearth:sync:00");
    assert_eq!(status, 403);
    assert!(xml.contains("valid-sync-token"), "{xml}");

    // Every access is in the audit log, under the grant.
    let audit = node.json(&["audit"]);
    let ops: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["grant"] == grant.as_str())
        .map(|e| e["operation"].as_str().unwrap_or_default().to_owned())
        .collect();
    for op in ["read", "write", "create", "remove"] {
        assert!(ops.iter().any(|o| o == op), "no {op} in {ops:?}");
    }

    // Revoking the grant revokes its password.
    node.json(&["revoke", &grant]);
    assert_eq!(
        dav.propfind("/dav/", "0", "<d:current-user-principal/>").0,
        401
    );
}

/// A grant limited to some fields, or by a filter, limits its DAV client the same way;
/// a read-only grant's PUT is refused and changes nothing.
#[test]
fn dav_goes_through_the_door() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&[
        "put",
        "contacts",
        "ada",
        r#"{"name": "Ada Lovelace", "email": "ada@example.org", "phone": "+44 1", "notes": "private", "groups": ["friends"]}"#,
    ]);
    node.json(&[
        "put",
        "contacts",
        "bob",
        r#"{"name": "Bob", "email": "bob@example.org", "groups": ["work"]}"#,
    ]);

    // Fields: name and email are read, only the name is written.
    let (_, password) = grant_with_password(
        &node,
        &[
            "--read",
            "contacts.name,contacts.email",
            "--write",
            "contacts.name",
        ],
    );
    let dav = Dav::new(&node, &password);
    let (status, text, etag) = dav.get("/dav/contacts/contacts/ada.vcf");
    assert_eq!(status, 200);
    assert!(
        text.contains("FN:Ada Lovelace") && text.contains("ada@example.org"),
        "{text}"
    );
    for hidden in ["+44 1", "private", "friends"] {
        assert!(!text.contains(hidden), "{hidden} leaked: {text}");
    }
    let with_phone = text.replacen("END:VCARD", "TEL:+1 555\r\nEND:VCARD", 1);
    assert_eq!(
        dav.put("/dav/contacts/contacts/ada.vcf", &with_phone, None)
            .0,
        403
    );
    let renamed = text.replace("FN:Ada Lovelace", "FN:Ada King");
    let (status, _) = dav.put(
        "/dav/contacts/contacts/ada.vcf",
        &renamed,
        Some(("If-Match", etag.as_deref().unwrap())),
    );
    assert_eq!(status, 204);
    let ada = node.json(&["get", "contacts", "ada"]);
    assert_eq!(ada["name"], "Ada King");
    assert_eq!(ada["phone"], "+44 1");
    assert_eq!(ada["notes"], "private");
    assert_eq!(ada["groups"], json!(["friends"]));
    // Deleting needs write access to every field.
    let (status, _, _) = dav.send(dav.request("DELETE", "/dav/contacts/contacts/ada.vcf"));
    assert_eq!(status, 403);

    // A grant that reads and writes `email` but not the list `emails`: changing the
    // address in the card changes the preferred one in the list, and the next card
    // served shows it.
    node.json(&[
        "put",
        "contacts",
        "carol",
        r#"{"name": "Carol", "email": "carol@old.org", "emails": [{"value": "carol@old.org", "pref": true}, {"value": "carol@work.org"}]}"#,
    ]);
    let (_, password) = grant_with_password(
        &node,
        &[
            "--read",
            "contacts.name,contacts.email",
            "--write",
            "contacts.email",
        ],
    );
    let mailer = Dav::new(&node, &password);
    let (status, text, _) = mailer.get("/dav/contacts/contacts/carol.vcf");
    assert_eq!(status, 200);
    assert!(!text.contains("carol@work.org"), "{text}");
    let moved = text.replace("carol@old.org", "carol@new.org");
    assert_eq!(
        mailer
            .put("/dav/contacts/contacts/carol.vcf", &moved, None)
            .0,
        204
    );
    let carol = node.json(&["get", "contacts", "carol"]);
    assert_eq!(carol["email"], "carol@new.org", "{carol}");
    assert_eq!(carol["emails"][0]["value"], "carol@new.org", "{carol}");
    assert_eq!(carol["emails"][1]["value"], "carol@work.org", "{carol}");
    let (_, text, _) = mailer.get("/dav/contacts/contacts/carol.vcf");
    assert!(text.contains("carol@new.org"), "{text}");

    // A filter: only friends are seen; a hidden card answers as a missing one, and a
    // PUT under its name makes a new card without touching it.
    let (_, password) = grant_with_password(
        &node,
        &[
            "--read",
            "contacts",
            "--write",
            "contacts",
            "--where",
            "groups=friends",
        ],
    );
    let friends = Dav::new(&node, &password);
    let (_, xml) = friends.propfind("/dav/contacts/contacts/", "1", "<d:getetag/>");
    let listed = hrefs(&xml);
    assert!(
        listed.contains(&"/dav/contacts/contacts/ada.vcf".to_owned()),
        "{xml}"
    );
    assert!(!xml.contains("bob"), "{xml}");
    assert_eq!(friends.get("/dav/contacts/contacts/bob.vcf").0, 404);
    assert_eq!(friends.get("/dav/contacts/contacts/nobody.vcf").0, 404);
    let (status, _, _) = friends.send(friends.request("DELETE", "/dav/contacts/contacts/bob.vcf"));
    assert_eq!(status, 404);
    let (status, _) = friends.put(
        "/dav/contacts/contacts/bob.vcf",
        &vcard("x", "Mallory", "CATEGORIES:work\r\n"),
        Some(("If-None-Match", "*")),
    );
    assert_eq!(status, 403, "a card that would not match the filter");
    let (status, _) = friends.put(
        "/dav/contacts/contacts/bob.vcf",
        &vcard("m", "Mallory", "CATEGORIES:friends\r\n"),
        Some(("If-None-Match", "*")),
    );
    assert_eq!(
        status, 201,
        "the name is free as far as this client can tell"
    );
    assert_eq!(
        node.json(&["get", "contacts", "bob"])["name"],
        "Bob",
        "the hidden card is untouched"
    );
    let (status, text, _) = friends.get("/dav/contacts/contacts/bob.vcf");
    assert_eq!(status, 200);
    assert!(text.contains("FN:Mallory"), "{text}");

    // A client that sees both cards sees two names: the name Mallory's card was given
    // stays hers, and Bob's card moves aside to `bob!.vcf` (no record id has a `!`),
    // where it can be read and changed.
    let (_, password) = grant_with_password(&node, &["--read", "contacts"]);
    let reader = Dav::new(&node, &password);
    let listed = reader.resources("/dav/contacts/contacts/");
    let mut unique = listed.clone();
    unique.dedup();
    assert_eq!(unique, listed, "one name per card");
    assert!(
        listed.contains(&"/dav/contacts/contacts/bob!.vcf".to_owned()),
        "{listed:?}"
    );
    assert!(
        reader
            .get("/dav/contacts/contacts/bob.vcf")
            .1
            .contains("FN:Mallory")
    );
    let (status, text, etag) = reader.get("/dav/contacts/contacts/bob!.vcf");
    assert_eq!(status, 200);
    assert!(text.contains("FN:Bob"), "{text}");
    let (_, password) = grant_with_password(&node, &["--read", "contacts", "--write", "contacts"]);
    let everyone = Dav::new(&node, &password);
    let (status, _) = everyone.put(
        "/dav/contacts/contacts/bob!.vcf",
        &text.replace("FN:Bob", "FN:Robert"),
        Some(("If-Match", &etag.unwrap())),
    );
    assert_eq!(status, 204);
    assert_eq!(node.json(&["get", "contacts", "bob"])["name"], "Robert");

    // Read-only: PUT and DELETE are refused, nothing changes.
    let before = node.json(&["ls", "contacts"]);
    let (_, text, _) = reader.get("/dav/contacts/contacts/ada.vcf");
    let (_, xml) = reader.propfind(
        "/dav/contacts/contacts/",
        "0",
        "<d:current-user-privilege-set/>",
    );
    assert!(!xml.contains("<d:write/>"), "{xml}");
    assert_eq!(
        reader
            .put(
                "/dav/contacts/contacts/ada.vcf",
                &text.replace("Ada King", "Eve"),
                None
            )
            .0,
        403
    );
    assert_eq!(
        reader
            .put(
                "/dav/contacts/contacts/new.vcf",
                &vcard("n", "New", ""),
                None
            )
            .0,
        403
    );
    let (status, _, _) = reader.send(reader.request("DELETE", "/dav/contacts/contacts/ada.vcf"));
    assert_eq!(status, 403);
    assert_eq!(node.json(&["ls", "contacts"]), before);

    // Bad bodies are refused with a reason, and nothing is stored.
    let (_, password) = grant_with_password(&node, &["--read", "contacts", "--write", "contacts"]);
    let writer = Dav::new(&node, &password);
    for bad in [
        "not a vcard",
        "BEGIN:VCARD\r\nFN:x\r\n",
        "BEGIN:VCARD\r\nFN:a\r\nEND:VCARD\r\nBEGIN:VCARD\r\nFN:b\r\nEND:VCARD\r\n",
    ] {
        assert_eq!(
            writer.put("/dav/contacts/contacts/bad.vcf", bad, None).0,
            400,
            "{bad}"
        );
    }
    let (status, _, _) = writer.send(
        writer
            .request("PROPFIND", "/dav/contacts/contacts/")
            .body("<d:propfind xmlns:d=\"DAV:\"><d:prop>"),
    );
    assert_eq!(status, 400);
    // ada, bob, carol and Mallory's card.
    assert_eq!(node.json(&["ls", "contacts"]).as_array().unwrap().len(), 4);
}

/// Names a client gives that cannot be record ids (a Google UID has an `@`) stay the
/// client's: listed, read, changed, removed and given again under them, and kept
/// across a restart.
#[test]
fn names_that_are_not_ids_stay_the_clients_names() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let (_, password) = grant_with_password(&node, &["--read", "contacts", "--write", "contacts"]);
    let dav = Dav::new(&node, &password);
    let book = "/dav/contacts/contacts/";
    let path = |i: usize| format!("{book}k{i}@google.com.vcf");
    for i in 0..3 {
        let card = vcard(&format!("k{i}@google.com"), &format!("Kay {i}"), "");
        let (status, _) = dav.put(&path(i), &card, Some(("If-None-Match", "*")));
        assert_eq!(status, 201, "card {i}");
    }
    assert_eq!(dav.resources(book), (0..3).map(path).collect::<Vec<_>>());
    let ids = |node: &NodeProcess| -> Vec<String> {
        let records = node.json(&["ls", "contacts"]);
        let ids: Vec<String> = records
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.iter().all(|id| !id.contains('@')), "{ids:?}");
        ids
    };
    assert_eq!(ids(&node).len(), 3);

    // Changed under its name: the same record, nothing added.
    let (status, text, etag) = dav.get(&path(1));
    assert_eq!(status, 200);
    assert!(text.contains("FN:Kay 1"), "{text}");
    let changed = text.replace("FN:Kay 1", "FN:Kay One");
    let (status, _) = dav.put(&path(1), &changed, Some(("If-Match", &etag.unwrap())));
    assert_eq!(status, 204);
    assert_eq!(ids(&node).len(), 3);
    assert!(dav.get(&path(1)).1.contains("FN:Kay One"));

    // Removed under its name, then the name is given again to a new card. Another
    // client's next sync report names the removed card as that client knew it.
    let (_, xml) = dav.propfind(book, "0", "<d:sync-token/>");
    let token = element(&xml, "sync-token").unwrap();
    let all = ids(&node);
    let (status, _, _) = dav.send(dav.request("DELETE", &path(2)));
    assert_eq!(status, 204);
    assert_eq!(dav.get(&path(2)).0, 404);
    let before = ids(&node);
    assert_eq!(before.len(), 2);
    let removed = all.iter().find(|id| !before.contains(id)).unwrap().clone();
    let (status, xml) = dav.sync(book, &token);
    assert_eq!(status, 207, "{xml}");
    assert!(
        percent_decoded(&xml).contains(&format!("{}</d:href><d:status>HTTP/1.1 404", path(2))),
        "{xml}"
    );
    let (status, _) = dav.put(
        &path(2),
        &vcard("k2-again@google.com", "Kay Again", ""),
        Some(("If-None-Match", "*")),
    );
    assert_eq!(status, 201);
    // (The name still stood for the removed record's id, which a new card under it
    // takes over: a record whose card was never written is found the same way.)
    let after = ids(&node);
    assert_eq!(after.len(), 3);
    assert_eq!(
        after,
        before
            .iter()
            .chain([&removed])
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let again = dav.get(&path(2)).1;
    assert!(
        again.contains("FN:Kay Again") && !again.contains("k2@google.com"),
        "{again}"
    );

    // After a restart the names are the same.
    node.stop();
    let node = spawn_node(t.path(), &[]);
    let dav = Dav::new(&node, &password);
    assert_eq!(dav.resources(book), (0..3).map(path).collect::<Vec<_>>());
    assert!(dav.get(&path(0)).1.contains("FN:Kay 0"));
    assert!(dav.get(&path(1)).1.contains("FN:Kay One"));
}

/// Calendars: a time-range query sees recurrences; MKCALENDAR and PROPPATCH keep a
/// name and colour.
#[test]
fn calendars_answer_time_ranges_and_keep_their_names() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&[
        "import",
        "calendar",
        fixture("google.ics").to_str().unwrap(),
    ]);
    // The calendar's own name and zone come back in an export, once.
    let exported = String::from_utf8(node.run(&["export", "calendar"]).stdout).unwrap();
    assert_eq!(
        exported.matches("X-WR-CALNAME:Ada's calendar\r\n").count(),
        1,
        "{exported}"
    );
    assert_eq!(
        exported.matches("X-WR-TIMEZONE:Europe/Paris\r\n").count(),
        1,
        "{exported}"
    );
    // The kind named and the collection chosen must agree.
    let wrong = node.run(&[
        "import",
        "contacts",
        fixture("google.ics").to_str().unwrap(),
        "--into",
        "calendar-x",
    ]);
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("cannot hold contacts"), "{said}");
    // A calendar file given as contacts is named for what it is, with the command.
    let wrong = node.run(&[
        "import",
        "contacts",
        fixture("google.ics").to_str().unwrap(),
    ]);
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        said.contains("this file is iCalendar (a calendar), not vCard (contacts): use `hearth import calendar FILE`"),
        "{said}"
    );
    let (_, password) = grant_with_password(
        &node,
        &[
            "--read",
            "calendar,calendar-work",
            "--write",
            "calendar,calendar-work",
        ],
    );
    let dav = Dav::new(&node, &password);
    let (_, xml) = dav.propfind("/dav/calendars/calendar/", "1", "<d:getetag/>");
    let all = hrefs(&xml)
        .into_iter()
        .filter(|h| h.ends_with(".ics"))
        .count();
    assert!(all >= 2, "{xml}");
    let query = |start: &str, end: &str| {
        let body = format!(
            r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/></d:prop><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"><c:time-range start="{start}" end="{end}"/></c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#
        );
        let (status, xml, _) =
            dav.send(dav.request("REPORT", "/dav/calendars/calendar/").body(body));
        assert_eq!(status, 207, "{xml}");
        hrefs(&xml).len()
    };
    assert_eq!(query("19000101T000000Z", "19000102T000000Z"), 0);
    // A query that sent nothing is audited as a read of nothing, not of the book.
    let reads = |audit: &Value| -> Vec<u64> {
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["operation"] == "read" && e["collection"] == "calendar")
            .map(|e| e["records"].as_u64().unwrap())
            .collect()
    };
    let before = reads(&node.json(&["audit"]));
    assert_eq!(before.last(), Some(&0), "{before:?}");
    assert_eq!(query("19000101T000000Z", "21000101T000000Z"), all);
    let after = reads(&node.json(&["audit"]));
    assert_eq!(after.last(), Some(&(all as u64)), "{after:?}");

    let (status, _, _) = dav.send(
        dav.request("MKCALENDAR", "/dav/calendars/calendar-work/").body(
            r#"<c:mkcalendar xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:set><d:prop><d:displayname>Work</d:displayname></d:prop></d:set></c:mkcalendar>"#,
        ),
    );
    assert_eq!(status, 201);
    let (status, _, _) = dav.send(dav.request("MKCALENDAR", "/dav/calendars/calendar-work/"));
    assert_eq!(status, 405, "it exists now");
    let (status, xml, _) = dav.send(
        dav.request("PROPPATCH", "/dav/calendars/calendar-work/").body(
            r#"<d:propertyupdate xmlns:d="DAV:" xmlns:a="http://apple.com/ns/ical/"><d:set><d:prop><a:calendar-color>#ff0000</a:calendar-color></d:prop></d:set></d:propertyupdate>"#,
        ),
    );
    assert_eq!(status, 207, "{xml}");
    let (_, xml) = dav.propfind(
        "/dav/calendars/",
        "1",
        "<d:displayname/><ical:calendar-color xmlns:ical=\"http://apple.com/ns/ical/\"/>",
    );
    assert!(xml.contains("<d:displayname>Work</d:displayname>"), "{xml}");
    assert!(xml.contains("#ff0000"), "{xml}");
    // A calendar outside the grant cannot be made.
    let (status, _, _) = dav.send(dav.request("MKCALENDAR", "/dav/calendars/calendar-other/"));
    assert_eq!(status, 403);
}

/// Requests on one kept-alive connection, as a DAV client sends them: each with its
/// body, each answer read whole (`Content-Length`) before the next is sent.
fn on_one_connection(
    base: &str,
    requests: &[(&str, &str, Option<&str>, &str)],
) -> Vec<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut answers = Vec::new();
    for (method, path, password, body) in requests {
        let auth = password
            .map(|p| {
                format!(
                    "Authorization: Basic {}\r\n",
                    data_encoding::BASE64.encode(format!("me:{p}").as_bytes())
                )
            })
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Depth: 0\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        writer
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: the connection was closed: {e}"));
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: no answer ({status_line:?})"));
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut text = vec![0; length];
        reader.read_exact(&mut text).unwrap();
        answers.push((status, String::from_utf8_lossy(&text).into_owned()));
    }
    answers
}

/// A DAV client given the server's bare address (what people type) discovers from
/// `/`: PROPFIND there points on to the principal and the homes, and no answer —
/// 401 first, 405 for a method `/` does not take, a refusal anywhere — drops the
/// connection under a client that sent a body.
#[test]
fn discovery_starts_at_the_server_root_on_one_connection() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let (_, password) = grant_with_password(&node, &["--read", "contacts"]);
    let propfind = r#"<?xml version="1.0"?><d:propfind xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:current-user-principal/><card:addressbook-home-set/></d:prop></d:propfind>"#;
    let answers = on_one_connection(
        &node.base_url(),
        &[
            ("PROPFIND", "/", None, propfind),
            ("PROPFIND", "/", Some(&password), propfind),
            ("PUT", "/", Some(&password), "some bytes a client sent"),
            ("PROPFIND", "/dav/nowhere/", Some(&password), propfind),
            (
                "PROPFIND",
                "/dav/",
                Some("wrong-pass-word-here-xxxx"),
                propfind,
            ),
            ("REPORT", "/v1/status", None, propfind),
            ("PROPFIND", "/dav/contacts/", Some(&password), propfind),
        ],
    );
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [401, 207, 405, 404, 401, 405, 207], "{answers:?}");
    let root = &answers[1].1;
    assert!(
        root.contains("<d:href>/</d:href>") && root.contains("<d:href>/dav/</d:href>"),
        "{root}"
    );
    assert!(root.contains("/dav/contacts/"), "{root}");
    // Principal searches find the one principal there is, by its name, and no other.
    let dav = Dav::new(&node, &password);
    let (status, xml, _) = dav.send(
        dav.request("REPORT", "/dav/")
            .body(r#"<d:principal-search-property-set xmlns:d="DAV:"/>"#),
    );
    assert_eq!(status, 200, "{xml}");
    let search = |name: &str| {
        let (status, xml, _) = dav.send(dav.request("REPORT", "/dav/").body(format!(
            r#"<d:principal-property-search xmlns:d="DAV:"><d:property-search><d:prop><d:displayname/></d:prop><d:match>{name}</d:match></d:property-search><d:prop><d:displayname/></d:prop></d:principal-property-search>"#
        )));
        assert_eq!(status, 207, "{xml}");
        xml
    };
    assert!(!search("ada").contains("<d:response>"));
    let me = search("PHO");
    assert!(
        me.contains("<d:href>/dav/</d:href>")
            && me.contains("<d:displayname>phone</d:displayname>"),
        "{me}"
    );
}

/// A phone granted the `calendar*` family makes a calendar where it likes (a UUID path,
/// as DAVx⁵ and Apple's apps do), sees calendars imported later, fills and removes its
/// own; nothing outside the family is reached, and the removal is audited.
#[test]
fn a_family_grant_lets_a_phone_make_and_remove_calendars() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&["put", "notes", "n1", r#"{"text":"private"}"#]);
    let (grant, password) =
        grant_with_password(&node, &["--read", "calendar*", "--write", "calendar*"]);
    let listed = node.json(&["grants"]);
    let text = String::from_utf8(node.run(&["grants"]).stdout).unwrap();
    assert!(
        text.contains("calendar and every calendar-… collection"),
        "{text}\n{listed}"
    );
    let dav = Dav::new(&node, &password);
    let uuid = "3F2A9C1E-77B0-4D3A-9E52-0C1D2E3F4A5B";
    let (status, body, _) = dav.send(
        dav.request("MKCALENDAR", &format!("/dav/calendars/{uuid}/")).body(
            r#"<c:mkcalendar xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav" xmlns:a="http://apple.com/ns/ical/"><d:set><d:prop><d:displayname>Climbing</d:displayname><a:calendar-color>#00aa00</a:calendar-color></d:prop></d:set></c:mkcalendar>"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    // Listed (empty) with the client's name and colour, at the very path it was made
    // at (a stable URL), though the collection is named in the family.
    let (status, xml) = dav.propfind(
        "/dav/calendars/",
        "1",
        "<d:displayname/><a:calendar-color xmlns:a=\"http://apple.com/ns/ical/\"/>",
    );
    assert_eq!(status, 207, "{xml}");
    let made = format!("calendar-{}", uuid.to_lowercase());
    assert!(xml.contains(&format!("/dav/calendars/{uuid}/")), "{xml}");
    assert!(!xml.contains(&made), "{xml}");
    assert!(xml.contains("Climbing") && xml.contains("#00aa00"), "{xml}");
    let event = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\nUID:climb-1\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260110T180000Z\r\nSUMMARY:Bouldering\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let (status, _) = dav.put(&format!("/dav/calendars/{uuid}/climb-1.ics"), event, None);
    assert_eq!(status, 201);
    assert_eq!(node.json(&["ls", &made]).as_array().unwrap().len(), 1);
    // A calendar imported later, under the family, reaches the phone without a new
    // grant.
    node.json(&[
        "import",
        "calendar",
        fixture("google.ics").to_str().unwrap(),
        "--into",
        "calendar-work",
    ]);
    let (_, xml) = dav.propfind("/dav/calendars/", "1", "<d:displayname/>");
    assert!(xml.contains("/dav/calendars/calendar-work/"), "{xml}");
    // Outside the family: nothing, and nothing can be made.
    let (status, _) = dav.propfind("/dav/calendars/notes/", "0", "<d:displayname/>");
    assert_ne!(status, 207);
    let (status, _, _) = dav.send(dav.request("MKCOL", "/dav/contacts/phone/"));
    assert_eq!(status, 403);
    // A calendar not made yet takes no PUT (a typo makes no calendar); the kind's own
    // calendar is always there, also empty.
    let (status, _) = dav.put("/dav/calendars/typo/x.ics", event, None);
    assert_eq!(status, 409);
    assert!(
        node.json(&["ls", "calendar-typo"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (_, xml) = dav.propfind("/dav/calendars/", "1", "<d:displayname/>");
    assert!(
        xml.contains("<d:href>/dav/calendars/calendar/</d:href>"),
        "{xml}"
    );
    // The phone removes its calendar: records, name and listing go, audited.
    let (status, _, _) = dav.send(dav.request("DELETE", &format!("/dav/calendars/{uuid}/")));
    assert_eq!(status, 204);
    assert_eq!(node.json(&["ls", &made]).as_array().unwrap().len(), 0);
    let (_, xml) = dav.propfind("/dav/calendars/", "1", "<d:displayname/>");
    assert!(!xml.contains(uuid) && !xml.contains(&made), "{xml}");
    assert!(xml.contains("calendar-work"), "{xml}");
    assert!(audited(&node, &grant, |e| e["operation"] == "remove"
        && e["collection"] == made.as_str()
        && e["records"] == 1));
    let (status, _, _) = dav.send(dav.request("DELETE", &format!("/dav/calendars/{uuid}/")));
    assert_eq!(status, 404, "already gone");
    // A grant that names one calendar cannot remove it whole unless it writes all of
    // it; this one reads only.
    let (_, reader) = grant_with_password(&node, &["--read", "calendar-work"]);
    let reader = Dav::new(&node, &reader);
    let (status, _, _) = reader.send(reader.request("DELETE", "/dav/calendars/calendar-work/"));
    assert_eq!(status, 403);
    assert!(
        !node
            .json(&["ls", "calendar-work"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(node.json(&["get", "notes", "n1"])["text"], "private");
}

/// Queries through the node: a calendar-query's text-match and is-not-defined and an
/// addressbook-query's prop-filters are applied (what the caller is served, nothing
/// else); a filter the server cannot apply is refused with the RFC's precondition;
/// `nresults` cuts the answer and says so.
#[test]
fn queries_apply_their_filters_or_refuse_what_they_cannot() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let ics = t.path().join("q.ics");
    let event = |uid: &str, summary: &str, extra: &str| {
        format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260110T090000Z\r\nSUMMARY:{summary}\r\n{extra}END:VEVENT\r\nEND:VCALENDAR\r\n"
        )
    };
    std::fs::write(
        &ics,
        [
            event("e1", "Dentist", "LOCATION:Main St\r\n"),
            event("e2", "Lunch", ""),
            event("e3", "dentist follow-up", ""),
        ]
        .concat(),
    )
    .unwrap();
    node.json(&["import", "calendar", ics.to_str().unwrap()]);
    let vcf = t.path().join("q.vcf");
    std::fs::write(
        &vcf,
        [
            vcard("c1", "Ada Lovelace", "EMAIL;TYPE=WORK:ada@example.org\r\n"),
            vcard("c2", "Bob Ada-Smith", ""),
            vcard("c3", "Cy Young", "EMAIL:cy@example.org\r\n"),
        ]
        .concat(),
    )
    .unwrap();
    node.json(&["import", "contacts", vcf.to_str().unwrap()]);
    let (_, password) = grant_with_password(&node, &["--read", "calendar,contacts"]);
    let dav = Dav::new(&node, &password);
    let report = |path: &str, body: String| {
        let (status, xml, _) = dav.send(dav.request("REPORT", path).body(body));
        (status, xml)
    };
    let calendar = |filter: &str| {
        let (status, xml) = report(
            "/dav/calendars/calendar/",
            format!(
                r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><c:calendar-data/></d:prop><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT">{filter}</c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#
            ),
        );
        assert_eq!(status, 207, "{xml}");
        let mut found: Vec<String> = ["Dentist", "Lunch", "dentist follow-up"]
            .into_iter()
            .filter(|s| {
                xml.contains(&format!("SUMMARY:{s}\r"))
                    || xml.contains(&format!("SUMMARY:{s}&#13;"))
            })
            .map(str::to_owned)
            .collect();
        found.sort();
        found
    };
    let summary = |attrs: &str| {
        calendar(&format!(
            r#"<c:prop-filter name="SUMMARY"><c:text-match {attrs}>Dentist</c:text-match></c:prop-filter>"#
        ))
    };
    assert_eq!(summary(""), ["Dentist", "dentist follow-up"]);
    assert_eq!(summary(r#"collation="i;octet""#), ["Dentist"]);
    assert_eq!(summary(r#"negate-condition="yes""#), ["Lunch"]);
    assert_eq!(
        calendar(r#"<c:prop-filter name="LOCATION"><c:is-not-defined/></c:prop-filter>"#),
        ["Lunch", "dentist follow-up"]
    );
    // Refused, with the precondition, never answered as if unfiltered.
    let (status, xml) = report(
        "/dav/calendars/calendar/",
        r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"><c:prop-filter name="SUMMARY"><c:text-match collation="i;klingon">x</c:text-match></c:prop-filter></c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#.into(),
    );
    assert_eq!(status, 403, "{xml}");
    assert!(xml.contains("<cal:supported-collation/>"), "{xml}");
    let (status, xml) = report(
        "/dav/calendars/calendar/",
        r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"><c:unknown-filter/></c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#.into(),
    );
    assert_eq!(status, 403, "{xml}");
    assert!(xml.contains("<cal:supported-filter/>"), "{xml}");
    // Cards: prop-filters with match types, any or all, and a limit.
    let cards = |filter: &str, test: &str, limit: &str| {
        let (status, xml) = report(
            "/dav/contacts/contacts/",
            format!(
                r#"<card:addressbook-query xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop><card:filter test="{test}">{filter}</card:filter>{limit}</card:addressbook-query>"#
            ),
        );
        assert_eq!(status, 207, "{xml}");
        let mut names: Vec<String> = hrefs(&xml)
            .into_iter()
            .filter_map(|h| {
                h.strip_suffix(".vcf")
                    .map(|h| h.rsplit('/').next().unwrap().to_owned())
            })
            .collect();
        names.sort();
        (names, xml.contains("507"))
    };
    let starts = r#"<card:prop-filter name="FN"><card:text-match match-type="starts-with">ada</card:text-match></card:prop-filter>"#;
    assert_eq!(cards(starts, "anyof", "").0, ["c1"]);
    let mail_or_ada = format!(r#"{starts}<card:prop-filter name="EMAIL"/>"#);
    assert_eq!(cards(&mail_or_ada, "anyof", "").0, ["c1", "c3"]);
    assert_eq!(cards(&mail_or_ada, "allof", "").0, ["c1"]);
    let (some, cut) = cards(
        r#"<card:prop-filter name="FN"/>"#,
        "anyof",
        "<card:limit><card:nresults>2</card:nresults></card:limit>",
    );
    assert_eq!((some.len(), cut), (2, true));
}

/// One UID, one resource: a second name for a UID the collection has is refused
/// `409` with `no-uid-conflict` naming the resource that has it, and nothing is
/// stored; the same name again is an update, as before.
#[test]
fn a_uid_is_one_resource_and_journals_and_order_are_kept() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let (_, password) = grant_with_password(
        &node,
        &[
            "--read",
            "contacts,calendar",
            "--write",
            "contacts,calendar",
        ],
    );
    let dav = Dav::new(&node, &password);
    let card = vcard("same-uid", "Ada", "");
    assert_eq!(
        dav.put("/dav/contacts/contacts/first.vcf", &card, None).0,
        201
    );
    let (status, xml, _) = dav.send(
        dav.request("PUT", "/dav/contacts/contacts/second.vcf")
            .body(vcard("same-uid", "Ada again", "")),
    );
    assert_eq!(status, 409, "{xml}");
    assert!(
        xml.contains("<card:no-uid-conflict><d:href>/dav/contacts/contacts/first.vcf</d:href>"),
        "{xml}"
    );
    assert_eq!(node.json(&["ls", "contacts"]).as_array().unwrap().len(), 1);
    assert_eq!(
        dav.put(
            "/dav/contacts/contacts/first.vcf",
            &vcard("same-uid", "Ada L", ""),
            None
        )
        .0,
        204
    );
    let event = |summary: &str| {
        format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:ev-1\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260110T090000Z\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        )
    };
    assert_eq!(
        dav.put("/dav/calendars/calendar/a.ics", &event("one"), None)
            .0,
        201
    );
    let (status, xml, _) = dav.send(
        dav.request("PUT", "/dav/calendars/calendar/b.ics")
            .body(event("two")),
    );
    assert_eq!(status, 409, "{xml}");
    assert!(xml.contains("<cal:no-uid-conflict>"), "{xml}");
    assert_eq!(node.json(&["ls", "calendar"]).as_array().unwrap().len(), 1);
    // A journal entry (VJOURNAL) and a to-do keep their kind, and come back as sent.
    for (name, kind, field) in [("j.ics", "VJOURNAL", "journal"), ("t.ics", "VTODO", "task")] {
        let text = format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:{kind}\r\nUID:{name}-uid\r\nDTSTAMP:20260101T000000Z\r\nDTSTART;VALUE=DATE:20260110\r\nSUMMARY:Notes of the day\r\nEND:{kind}\r\nEND:VCALENDAR\r\n"
        );
        let path = format!("/dav/calendars/calendar/{name}");
        assert_eq!(dav.put(&path, &text, None).0, 201, "{kind}");
        assert_eq!(dav.get(&path).1, text, "{kind}");
        let id = name.trim_end_matches(".ics");
        assert_eq!(node.json(&["get", "calendar", id])["kind"], field, "{kind}");
    }
    // Apple's calendar-order is kept (a number only).
    let order = |value: &str| {
        let (status, xml, _) = dav.send(dav.request("PROPPATCH", "/dav/calendars/calendar/").body(format!(
            r#"<d:propertyupdate xmlns:d="DAV:" xmlns:a="http://apple.com/ns/ical/"><d:set><d:prop><a:calendar-order>{value}</a:calendar-order></d:prop></d:set></d:propertyupdate>"#
        )));
        (status, xml)
    };
    let (_, xml) = order("3");
    assert!(xml.contains("200 OK"), "{xml}");
    let (_, xml) = order("first");
    assert!(!xml.contains("200 OK"), "{xml}");
    let (_, xml) = dav.propfind(
        "/dav/calendars/calendar/",
        "0",
        r#"<a:calendar-order xmlns:a="http://apple.com/ns/ical/"/>"#,
    );
    assert!(xml.contains(">3</"), "{xml}");
}

/// free-busy-query: the busy times of the events in the range (recurrences included),
/// merged; transparent and cancelled events are free, tentative ones said so; nothing
/// else of the events is in the answer. A calendar made for to-dos takes only to-dos.
#[test]
fn free_busy_and_component_sets() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let (_, password) =
        grant_with_password(&node, &["--read", "calendar*", "--write", "calendar*"]);
    let dav = Dav::new(&node, &password);
    let event = |uid: &str, start: &str, end: &str, extra: &str| {
        format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{start}\r\nDTEND:{end}\r\nSUMMARY:Secret {uid}\r\n{extra}END:VEVENT\r\nEND:VCALENDAR\r\n"
        )
    };
    for (uid, start, end, extra) in [
        ("a", "20260110T090000Z", "20260110T100000Z", ""),
        ("b", "20260110T093000Z", "20260110T110000Z", ""),
        (
            "c",
            "20260110T140000Z",
            "20260110T150000Z",
            "TRANSP:TRANSPARENT\r\n",
        ),
        (
            "d",
            "20260110T160000Z",
            "20260110T170000Z",
            "STATUS:CANCELLED\r\n",
        ),
        (
            "e",
            "20260110T180000Z",
            "20260110T190000Z",
            "STATUS:TENTATIVE\r\n",
        ),
        (
            "f",
            "20260109T080000Z",
            "20260109T083000Z",
            "RRULE:FREQ=DAILY;COUNT=3\r\n",
        ),
    ] {
        let path = format!("/dav/calendars/calendar/{uid}.ics");
        assert_eq!(dav.put(&path, &event(uid, start, end, extra), None).0, 201);
    }
    let (status, body, headers) = dav.send(dav.request("REPORT", "/dav/calendars/calendar/").body(
        r#"<c:free-busy-query xmlns:c="urn:ietf:params:xml:ns:caldav"><c:time-range start="20260110T000000Z" end="20260111T000000Z"/></c:free-busy-query>"#,
    ));
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/calendar")
    );
    let lines: Vec<&str> = body.lines().filter(|l| l.starts_with("FREEBUSY")).collect();
    assert_eq!(
        lines,
        [
            "FREEBUSY;FBTYPE=BUSY:20260110T080000Z/20260110T083000Z",
            "FREEBUSY;FBTYPE=BUSY:20260110T090000Z/20260110T110000Z",
            "FREEBUSY;FBTYPE=BUSY-TENTATIVE:20260110T180000Z/20260110T190000Z",
        ],
        "{body}"
    );
    assert!(!body.contains("Secret"), "{body}");
    // A calendar made for to-dos says so, and refuses an event.
    let (status, _, _) = dav.send(dav.request("MKCALENDAR", "/dav/calendars/tasks/").body(
        r#"<c:mkcalendar xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:set><d:prop><c:supported-calendar-component-set><c:comp name="VTODO"/></c:supported-calendar-component-set></d:prop></d:set></c:mkcalendar>"#,
    ));
    assert_eq!(status, 201);
    let (_, xml) = dav.propfind(
        "/dav/calendars/tasks/",
        "0",
        "<cal:supported-calendar-component-set/>",
    );
    assert!(
        xml.contains(r#"<cal:comp name="VTODO"/>"#) && !xml.contains("VEVENT"),
        "{xml}"
    );
    let (status, xml, _) = dav.send(dav.request("PUT", "/dav/calendars/tasks/x.ics").body(event(
        "x",
        "20260110T090000Z",
        "20260110T100000Z",
        "",
    )));
    assert_eq!(status, 403, "{xml}");
    assert!(xml.contains("supported-calendar-component"), "{xml}");
    let todo = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VTODO\r\nUID:t1\r\nDTSTAMP:20260101T000000Z\r\nSUMMARY:Call\r\nEND:VTODO\r\nEND:VCALENDAR\r\n";
    assert_eq!(dav.put("/dav/calendars/tasks/t1.ics", todo, None).0, 201);
}

/// calendar-data with expand: a weekly event in Paris time with one instance moved
/// (with a higher SEQUENCE, as clients write it) comes back as its instances in the
/// range, in UTC, each with its RECURRENCE-ID, the moved one as moved and only once,
/// and no RRULE.
#[test]
fn recurrences_are_expanded_when_asked() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let (_, password) = grant_with_password(&node, &["--read", "calendar", "--write", "calendar"]);
    let dav = Dav::new(&node, &password);
    let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VTIMEZONE\r\nTZID:Europe/Paris\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nBEGIN:DAYLIGHT\r\nDTSTART:19700329T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\nBEGIN:VEVENT\r\nUID:weekly\r\nDTSTAMP:20260101T000000Z\r\nDTSTART;TZID=Europe/Paris:20260105T100000\r\nDTEND;TZID=Europe/Paris:20260105T110000\r\nRRULE:FREQ=WEEKLY;COUNT=4\r\nSUMMARY:Standup\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:weekly\r\nDTSTAMP:20260101T000000Z\r\nSEQUENCE:1\r\nRECURRENCE-ID;TZID=Europe/Paris:20260112T100000\r\nDTSTART;TZID=Europe/Paris:20260112T140000\r\nDTEND;TZID=Europe/Paris:20260112T150000\r\nSUMMARY:Standup (moved)\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    assert_eq!(
        dav.put("/dav/calendars/calendar/weekly.ics", text, None).0,
        201
    );
    let (status, xml, _) = dav.send(dav.request("REPORT", "/dav/calendars/calendar/").body(
        r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><c:calendar-data><c:expand start="20260101T000000Z" end="20260120T000000Z"/></c:calendar-data></d:prop><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"><c:time-range start="20260101T000000Z" end="20260120T000000Z"/></c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#,
    ));
    assert_eq!(status, 207, "{xml}");
    let data = xml.replace("&#13;", "\r");
    assert_eq!(data.matches("BEGIN:VEVENT").count(), 3, "{data}");
    for line in [
        "DTSTART:20260105T090000Z",
        "RECURRENCE-ID:20260105T090000Z",
        "DTSTART:20260112T130000Z",
        "SUMMARY:Standup (moved)",
        "DTSTART:20260119T090000Z",
        "DTEND:20260119T100000Z",
    ] {
        assert!(data.contains(line), "{line}\n{data}");
    }
    assert!(
        !data.contains("RRULE:FREQ=WEEKLY") && !data.contains("TZID=Europe/Paris:20260105"),
        "{data}"
    );
    // Without expand, the object as stored.
    let (_, xml, _) = dav.send(dav.request("REPORT", "/dav/calendars/calendar/").body(
        r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><c:calendar-data/></d:prop></c:calendar-query>"#,
    ));
    assert!(xml.contains("RRULE:FREQ=WEEKLY;COUNT=4"), "{xml}");
    // limit-recurrence-set: the master whole, and the moved instance only when the
    // range holds it (moved to the 12th at 13:00 UTC).
    for (range, moved) in [
        (r#"start="20260112T120000Z" end="20260112T140000Z""#, true),
        (r#"start="20260119T000000Z" end="20260120T000000Z""#, false),
    ] {
        let (status, xml, _) = dav.send(dav.request("REPORT", "/dav/calendars/calendar/").body(format!(
            r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><c:calendar-data><c:limit-recurrence-set {range}/></c:calendar-data></d:prop></c:calendar-query>"#,
        )));
        assert_eq!(status, 207, "{xml}");
        assert!(
            xml.contains("RRULE:FREQ=WEEKLY;COUNT=4") && xml.contains("BEGIN:VTIMEZONE"),
            "{xml}"
        );
        assert_eq!(xml.contains("Standup (moved)"), moved, "{range}: {xml}");
    }
}

/// A free/busy-only grant (a service that arranges appointments): it gets busy times
/// and nothing else — no event, no summary, no view, no list — and its asks are
/// audited as such. Free/busy is for calendars only.
#[test]
fn a_free_busy_grant_sees_busy_times_and_nothing_else() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let ics = t.path().join("e.ics");
    std::fs::write(
        &ics,
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:doc\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260110T090000Z\r\nDTEND:20260110T100000Z\r\nSUMMARY:Oncologist\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    )
    .unwrap();
    node.json(&["import", "calendar", ics.to_str().unwrap()]);
    let created = node.json(&[
        "grant",
        "concierge",
        "--free-busy",
        "calendar*",
        "--app-password",
    ]);
    let (grant, password, token) = (
        created["id"].as_str().unwrap().to_owned(),
        created["password"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    );
    let listed = String::from_utf8(node.run(&["grants"]).stdout).unwrap();
    assert!(
        listed.contains("free/busy only: calendar and every calendar-…"),
        "{listed}"
    );
    let dav = Dav::new(&node, &password);
    let (status, body, _) = dav.send(dav.request("REPORT", "/dav/calendars/calendar/").body(
        r#"<c:free-busy-query xmlns:c="urn:ietf:params:xml:ns:caldav"><c:time-range start="20260110T000000Z" end="20260111T000000Z"/></c:free-busy-query>"#,
    ));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("FREEBUSY;FBTYPE=BUSY:20260110T090000Z/20260110T100000Z"),
        "{body}"
    );
    assert!(
        !body.contains("Oncologist") && !body.contains("doc"),
        "{body}"
    );
    // It finds the calendars it may ask (the home lists them), and sees none of their
    // events nor when they change: no item, no sync token, no CTag; its privilege is
    // read-free-busy.
    for path in ["/dav/calendars/", "/dav/calendars/calendar/"] {
        let (status, answer, _) = dav.send(
            dav.request("PROPFIND", path)
                .header("Depth", "1")
                .body(r#"<d:propfind xmlns:d="DAV:" xmlns:cs="http://calendarserver.org/ns/"><d:prop><d:resourcetype/><d:sync-token/><cs:getctag/><d:current-user-privilege-set/><d:supported-report-set/></d:prop></d:propfind>"#),
        );
        assert_eq!(status, 207, "{path}: {answer}");
        assert!(
            answer.contains("<d:href>/dav/calendars/calendar/</d:href>"),
            "{answer}"
        );
        assert!(
            answer.contains("read-free-busy") && answer.contains("free-busy-query"),
            "{answer}"
        );
        assert!(
            !answer.contains(".ics") && !answer.contains("calendar-query"),
            "{answer}"
        );
        assert!(
            !answer.contains("<d:sync-token>") && !answer.contains("<cs:getctag>"),
            "{answer}"
        );
        let book = answer
            .split("<d:href>/dav/calendars/calendar/</d:href>")
            .nth(1)
            .unwrap();
        assert!(!book.contains("<d:privilege><d:read/>"), "{answer}");
    }
    // Nothing else: the event, a query, the changes, the view.
    for (method, path, body) in [
        ("GET", "/dav/calendars/calendar/doc.ics", ""),
        (
            "REPORT",
            "/dav/calendars/calendar/",
            r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token/><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>"#,
        ),
        (
            "REPORT",
            "/dav/calendars/calendar/",
            r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><c:calendar-data/></d:prop></c:calendar-query>"#,
        ),
    ] {
        let (status, answer, _) = dav.send(dav.request(method, path).body(body.to_owned()));
        assert!(
            status == 403 || status == 404,
            "{method} {path}: {status} {answer}"
        );
        assert!(!answer.contains("Oncologist"), "{answer}");
    }
    let api = Api::new(&node);
    let (status, body) = api.send(
        api.raw(Method::GET, "/v1/view/calendar")
            .bearer_auth(&token),
    );
    assert_eq!(status, 403, "{body}");
    assert!(audited(&node, &grant, |e| e["operation"] == "read"
        && e["fields"] == serde_json::json!(["free-busy"])
        && e["records"] == 1));
    // Free/busy of something that is no calendar is refused.
    let out = node.run(&["grant", "x", "--free-busy", "contacts"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("free/busy is about calendars"));
}

/// Python's `caldav` (what scripts and many tools use), from the server's bare
/// address: a search by summary gives exactly the matching event (the filter is
/// applied, not ignored), and under a `calendar*` grant it makes a calendar of its
/// own (at a path it chooses), fills it and removes it.
#[test]
#[ignore = "needs python caldav: run by .ci/run, which installs it"]
fn python_caldav_searches_and_makes_calendars() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let event = |uid: &str, kind: &str, summary: &str| {
        format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:{kind}\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260110T090000Z\r\nSUMMARY:{summary}\r\nEND:{kind}\r\nEND:VCALENDAR\r\n"
        )
    };
    let ics = t.path().join("seed.ics");
    std::fs::write(
        &ics,
        [
            event("e1", "VEVENT", "Dentist"),
            event("e2", "VEVENT", "Lunch"),
            event("e3", "VEVENT", "dentist follow-up"),
            event("t1", "VTODO", "Call the dentist"),
        ]
        .concat(),
    )
    .unwrap();
    node.json(&["import", "calendar", ics.to_str().unwrap()]);
    let (_, password) =
        grant_with_password(&node, &["--read", "calendar*", "--write", "calendar*"]);
    let script = r#"
import sys, caldav
url, password = sys.argv[1], sys.argv[2]
client = caldav.DAVClient(url=url, username="phone", password=password)
principal = client.principal()
calendars = {str(c.url).rstrip("/").rsplit("/", 1)[1]: c for c in principal.calendars()}
found = calendars["calendar"].search(event=True, summary="Dentist")
print("found", sorted(str(e.icalendar_component["summary"]) for e in found))
made = principal.make_calendar(name="Climbing")
made.save_event("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:climb\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260112T180000Z\r\nSUMMARY:Bouldering\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
names = {str(c.get_display_name()) for c in principal.calendars()}
print("made", "Climbing" in names, len(made.events()))
made.delete()
names = {str(c.get_display_name()) for c in principal.calendars()}
print("removed", "Climbing" not in names)
"#;
    let base = format!("{}/", node.base_url());
    let (ok, said) = run_tool("python3", &["-c", script, &base, &password], None);
    assert!(ok, "{said}");
    // caldav asks with the i;octet collation (case-sensitive): one event, not the
    // follow-up, not the to-do, not lunch.
    assert!(said.contains("found ['Dentist']"), "{said}");
    assert!(said.contains("made True 1"), "{said}");
    assert!(said.contains("removed True"), "{said}");
}

/// A change made on another device and synced over the mesh moves the sync token.
#[test]
fn a_change_from_another_device_appears_in_the_next_sync_report() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b = join_and_spawn(&a, &dir.path().join("b"));
    a.json(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    eventually("ada on B", || {
        b.run(&["get", "contacts", "ada"])
            .status
            .success()
            .then_some(())
    });
    let (_, password) = grant_with_password(&a, &["--read", "contacts"]);
    let dav = Dav::new(&a, &password);
    let (_, xml) = dav.propfind("/dav/contacts/contacts/", "0", "<d:sync-token/>");
    let token = element(&xml, "sync-token").unwrap();
    b.json(&["put", "contacts", "grace", r#"{"name": "Grace"}"#]);
    let xml = eventually("B's change in A's sync report", || {
        let (status, xml) = dav.sync("/dav/contacts/contacts/", &token);
        assert_eq!(status, 207, "{xml}");
        xml.contains("grace.vcf").then_some(xml)
    });
    assert_ne!(element(&xml, "sync-token").unwrap(), token);
    assert!(!xml.contains("ada.vcf"), "only what changed: {xml}");
}

/// The certificate in `HOME/tls.pem`, as DER.
fn certificate(home: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(home.join("tls.pem")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    data_encoding::BASE64.decode(body.as_bytes()).unwrap()
}

/// One request over TLS to `addr`, trusting only `der`; the answer's head and body.
fn tls_request(addr: &str, der: &[u8], request: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
        .map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let ip: std::net::IpAddr = addr.rsplit_once(':').unwrap().0.parse().unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(ip.into());
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    let mut socket = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut stream = rustls::Stream::new(&mut connection, &mut socket);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        // The server may close without close_notify after `Connection: close`.
        Err(e) if !answer.is_empty() => {
            let _ = e;
        }
        Err(e) => return Err(e.to_string()),
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Connecting a phone: an app password comes with the LAN address, the certificate's
/// fingerprint, a DAVx⁵ link (the QR code's text) and an Apple profile whose accounts
/// log in over that TLS; `hearth dashboard --lan` gives a login link another machine
/// on the LAN opens. Without `--lan`, the grant says how to turn it on.
#[test]
fn a_phone_is_told_where_to_connect_and_the_lan_gets_a_login_link() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &["--lan", "127.0.0.1:0"]);
    let profile_path = t.path().join("phone.mobileconfig");
    let created = node.json(&[
        "grant",
        "Ada's phone",
        "--read",
        "contacts*",
        "--app-password",
        "--mobileconfig",
        profile_path.to_str().unwrap(),
    ]);
    let password = created["password"].as_str().unwrap();
    let phone = &created["phone"];
    let lan_url = node.json(&["status"])["lan"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let addr = lan_url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    assert_eq!(phone["url"], lan_url.as_str(), "{created}");
    assert_eq!(phone["user"], "ada-s-phone");
    assert_eq!(
        phone["link"],
        format!("caldavs://ada-s-phone:{password}@{addr}/").as_str()
    );
    let der = certificate(t.path());
    // The profile: the accounts on that address with the password, and the very
    // certificate the listener serves; private (it holds the password).
    let profile = std::fs::read_to_string(&profile_path).unwrap();
    let port = addr.rsplit_once(':').unwrap().1;
    for needle in [
        "<key>CardDAVHostName</key><string>127.0.0.1</string>".to_owned(),
        format!("<key>CalDAVPort</key><integer>{port}</integer>"),
        format!("<key>CalDAVPassword</key><string>{password}</string>"),
        format!("<data>{}</data>", data_encoding::BASE64.encode(&der)),
    ] {
        assert!(profile.contains(&needle), "{needle}\n{profile}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&profile_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // What the profile says logs in over the LAN's TLS.
    let auth = data_encoding::BASE64.encode(format!("ada-s-phone:{password}").as_bytes());
    let answer = tls_request(
        &addr,
        &der,
        &format!(
            "PROPFIND /dav/ HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nDepth: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 207"), "{answer}");
    // The login link for another machine: at the LAN address, over TLS, once.
    let link = node.json(&["dashboard", "--lan"]);
    let url = link["url"].as_str().unwrap();
    let path = url
        .strip_prefix(&lan_url.trim_end_matches('/').to_owned())
        .unwrap();
    assert!(path.starts_with("/login/"), "{link}");
    assert_eq!(
        link["fingerprint"],
        node.json(&["status"])["lan"]["fingerprint"]
    );
    let get = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let answer = tls_request(&addr, &der, &get).unwrap();
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("set-cookie:"),
        "{answer}"
    );
    let again = tls_request(&addr, &der, &get).unwrap();
    assert!(!again.starts_with("HTTP/1.1 303"), "{again}");

    // Without the LAN: no address to give, and the way to get one.
    let plain = TestHome::new();
    let node = spawn_node(plain.path(), &[]);
    let created = node.json(&["grant", "phone", "--read", "contacts", "--app-password"]);
    assert!(created["phone"].get("url").is_none(), "{created}");
    assert!(
        created["phone"]["note"]
            .as_str()
            .unwrap()
            .contains("hearth up --lan"),
        "{created}"
    );
    let out = node.run(&["dashboard", "--lan"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hearth up --lan"));
}

/// `hearth up --lan`: the API and DAV are served over TLS only, with the certificate
/// whose fingerprint `hearth status` shows; plain HTTP gets no answer; the key is not
/// on disk in the clear, and stays the same across restarts.
#[test]
fn the_lan_listener_speaks_only_tls_with_the_certificate_status_shows() {
    use sha2::Digest;
    let t = TestHome::new();
    let node = spawn_node(t.path(), &["--lan", "127.0.0.1:0"]);
    let (_, password) = grant_with_password(&node, &["--read", "contacts"]);
    let status = node.json(&["status"]);
    let url = status["lan"]["url"].as_str().unwrap().to_owned();
    let addr = url
        .strip_prefix("https://")
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let der = certificate(t.path());
    let fingerprint: Vec<String> = sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(status["lan"]["fingerprint"], fingerprint.join(":"));

    let auth = data_encoding::BASE64.encode(format!("phone:{password}").as_bytes());
    let request = format!(
        "PROPFIND /dav/ HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nDepth: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let answer = tls_request(&addr, &der, &request).unwrap();
    assert!(answer.starts_with("HTTP/1.1 207"), "{answer}");
    assert!(answer.contains("/dav/"), "{answer}");

    // Another certificate is not accepted in its place: a client that pins this one
    // refuses a server with any other (here: a client trusting a different one).
    let other = TestHome::new();
    let other_node = spawn_node(other.path(), &["--lan", "127.0.0.1:0"]);
    let other_der = certificate(other.path());
    assert_ne!(other_der, der);
    assert!(tls_request(&addr, &other_der, &request).is_err());
    drop(other_node);

    // Plain HTTP on the TLS port gets no HTTP answer.
    {
        use std::io::{Read, Write};
        let mut plain = std::net::TcpStream::connect(&addr).unwrap();
        plain
            .set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        plain
            .write_all(format!("GET /v1/status HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer);
        assert!(
            !answer.starts_with(b"HTTP/"),
            "plain HTTP answered: {answer:?}"
        );
    }

    // The private key is nowhere on disk in the clear.
    for file in files_under(t.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !contains_bytes(&bytes, b"PRIVATE KEY"),
            "{} holds a private key",
            file.display()
        );
    }

    // The owner's routes are served on the LAN too (with the owner token)...
    let owner = node.owner_token();
    let status_request = format!(
        "GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {owner}\r\nConnection: close\r\n\r\n"
    );
    let answer = tls_request(&addr, &der, &status_request).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A restart keeps the certificate (a phone that trusted it keeps working).
    node.stop();
    let node = spawn_node(t.path(), &["--lan", "127.0.0.1:0", "--lan-apps-only"]);
    assert_eq!(certificate(t.path()), der);
    assert_eq!(
        node.json(&["status"])["lan"]["fingerprint"],
        fingerprint.join(":")
    );
    // ...unless it serves only what apps use there: then the owner's routes answer as
    // routes that do not exist, even with the owner token, and DAV still answers.
    let url = node.json(&["status"])["lan"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let addr = url
        .strip_prefix("https://")
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let status_request = format!(
        "GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {owner}\r\nConnection: close\r\n\r\n"
    );
    let answer = tls_request(&addr, &der, &status_request).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let request = format!(
        "PROPFIND /dav/ HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nDepth: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let answer = tls_request(&addr, &der, &request).unwrap();
    assert!(answer.starts_with("HTTP/1.1 207"), "{answer}");
    // The loopback API still serves the owner.
    assert!(node.run(&["status"]).status.success());
}

/// The DAV tools .ci/run installs (`$HEARTH_DAV_TOOLS/bin`).
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("HEARTH_DAV_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dav-tools"));
    let bin = dir.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: .ci/run installs vdirsyncer, khal and khard there (or set HEARTH_DAV_TOOLS)",
        bin.display()
    );
    bin
}

fn run_tool(name: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(tool(name));
    cmd.args(args);
    let out = run_with_deadline(cmd, stdin.map(|s| s.as_bytes().to_vec()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn vdirsyncer_config(dir: &Path, base: &str, password: &str) -> PathBuf {
    let config = format!(
        r#"[general]
status_path = "{dir}/status/"

[pair contacts]
a = "contacts_local"
b = "contacts_remote"
collections = ["from a", "from b"]

[storage contacts_local]
type = "filesystem"
path = "{dir}/contacts/"
fileext = ".vcf"

[storage contacts_remote]
type = "carddav"
url = "{base}/"
username = "phone"
password = "{password}"

[pair calendars]
a = "calendars_local"
b = "calendars_remote"
collections = ["from a", "from b"]
metadata = ["displayname", "color"]

[storage calendars_local]
type = "filesystem"
path = "{dir}/calendars/"
fileext = ".ics"

[storage calendars_remote]
type = "caldav"
url = "{base}/"
username = "phone"
password = "{password}"
"#,
        dir = dir.display()
    );
    let path = dir.join("config");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, config).unwrap();
    path
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Real clients: vdirsyncer discovers and syncs both ways (twice, with changes on each
/// side and deletes), khard and khal read what it wrote, and a read-only grant's
/// upload fails with 403 and changes nothing.
#[test]
#[ignore = "needs vdirsyncer, khal and khard: run by .ci/run, which installs them"]
fn vdirsyncer_khal_and_khard_sync_both_ways() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&[
        "import",
        "contacts",
        fixture("google.vcf").to_str().unwrap(),
    ]);
    node.json(&["import", "contacts", fixture("apple.vcf").to_str().unwrap()]);
    node.json(&[
        "import",
        "calendar",
        fixture("google.ics").to_str().unwrap(),
    ]);
    let contacts_before = node.json(&["ls", "contacts"]).as_array().unwrap().len();
    let (grant, password) = grant_with_password(
        &node,
        &[
            "--read",
            "contacts,calendar",
            "--write",
            "contacts,calendar",
        ],
    );
    let work = t.dir().join("vdir");
    let config = vdirsyncer_config(&work, &node.base_url(), &password);
    let config = config.to_str().unwrap();
    let (ok, out) = run_tool(
        "vdirsyncer",
        &["-c", config, "discover"],
        Some("y\ny\ny\ny\n"),
    );
    assert!(ok, "discover: {out}");
    let (ok, out) = run_tool("vdirsyncer", &["-c", config, "sync"], None);
    assert!(ok, "first sync: {out}");
    let cards = files(&work.join("contacts/contacts"));
    assert_eq!(cards.len(), contacts_before, "{out}");
    let events = files(&work.join("calendars/calendar"));
    assert!(events.len() >= 2, "{out}");

    // khard and khal read what vdirsyncer wrote.
    let khard_config = work.join("khard.conf");
    std::fs::write(
        &khard_config,
        format!(
            "[addressbooks]\n[[phone]]\npath = {}\n[general]\ndefault_action = list\n",
            work.join("contacts/contacts").display()
        ),
    )
    .unwrap();
    let (ok, listing) = run_tool(
        "khard",
        &["-c", khard_config.to_str().unwrap(), "list"],
        None,
    );
    assert!(ok, "khard: {listing}");
    let names: Vec<String> = node
        .json(&["ls", "contacts"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name_parts"]["family"].as_str().map(str::to_owned))
        .filter(|n| !n.is_empty())
        .collect();
    assert!(!names.is_empty());
    for name in &names {
        assert!(
            listing.contains(name.as_str()),
            "{name} not in khard's list: {listing}"
        );
    }
    let khal_config = work.join("khal.conf");
    std::fs::write(
        &khal_config,
        format!(
            "[calendars]\n[[phone]]\npath = {}\n[sqlite]\npath = {}\n[locale]\ntimeformat = %H:%M\ndateformat = %Y-%m-%d\nlongdateformat = %Y-%m-%d\ndatetimeformat = %Y-%m-%d %H:%M\nlongdatetimeformat = %Y-%m-%d %H:%M\n",
            work.join("calendars/calendar").display(),
            work.join("khal.db").display()
        ),
    )
    .unwrap();
    let (ok, agenda) = run_tool(
        "khal",
        &[
            "-c",
            khal_config.to_str().unwrap(),
            "list",
            "--format",
            "{title}",
            "2000-01-01",
            "2040-01-01",
        ],
        None,
    );
    assert!(ok, "khal: {agenda}");
    let summaries: Vec<String> = node
        .json(&["ls", "calendar"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["summary"].as_str().map(str::to_owned))
        .collect();
    assert!(
        summaries.iter().any(|s| agenda.contains(s.as_str())),
        "none of {summaries:?} in khal's agenda: {agenda}"
    );

    // Changes on the phone side: a card edited, a card added, an event deleted.
    let edited = &cards[0];
    let text = std::fs::read_to_string(edited).unwrap();
    let text = text.replacen("END:VCARD", "NOTE:edited on the phone\r\nEND:VCARD", 1);
    std::fs::write(edited, text).unwrap();
    std::fs::write(
        work.join("contacts/contacts/phone-new.vcf"),
        vcard(
            "phone-new-uid",
            "Dorothy Vaughan",
            "EMAIL:dv@example.org\r\n",
        ),
    )
    .unwrap();
    let gone_event = std::fs::read_to_string(&events[0]).unwrap();
    std::fs::remove_file(&events[0]).unwrap();
    let (ok, out) = run_tool("vdirsyncer", &["-c", config, "sync"], None);
    assert!(ok, "second sync: {out}");
    let contacts: Vec<Value> = node.json(&["ls", "contacts"]).as_array().unwrap().clone();
    assert_eq!(contacts.len(), contacts_before + 1, "{out}");
    assert!(
        contacts.iter().any(|c| c["notes"]
            .as_str()
            .is_some_and(|n| n.contains("edited on the phone"))),
        "the edit arrived: {contacts:?}"
    );
    assert!(contacts.iter().any(|c| c["name"] == "Dorothy Vaughan"));
    let gone_uid = gone_event
        .lines()
        .find_map(|l| l.strip_prefix("UID:"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        !node
            .json(&["ls", "calendar"])
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["uid"] == gone_uid.as_str()),
        "the deleted event is gone"
    );

    // Changes on the vault side: a card renamed, a card removed.
    let renamed = contacts
        .iter()
        .find(|c| c["name"] == "Dorothy Vaughan")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    node.json(&[
        "patch",
        "contacts",
        &renamed,
        r#"{"name": "Dorothy J. Vaughan"}"#,
    ]);
    let removed = contacts
        .iter()
        .find(|c| {
            c["notes"]
                .as_str()
                .is_some_and(|n| n.contains("edited on the phone"))
        })
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    node.json(&["rm", "contacts", &removed]);
    let (ok, out) = run_tool("vdirsyncer", &["-c", config, "sync"], None);
    assert!(ok, "third sync: {out}");
    let local: Vec<String> = files(&work.join("contacts/contacts"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert_eq!(local.len(), contacts_before, "{out}");
    assert!(
        local.iter().any(|c| c.contains("FN:Dorothy J. Vaughan")),
        "{local:?}"
    );
    assert!(!local.iter().any(|c| c.contains("edited on the phone")));

    // Nothing changed anywhere: a sync moves nothing.
    let (ok, out) = run_tool("vdirsyncer", &["-c", config, "sync"], None);
    assert!(ok, "idle sync: {out}");
    assert!(
        !out.contains("Copying") && !out.contains("Deleting"),
        "{out}"
    );

    // Every access was audited under the phone's grant.
    let audit = node.json(&["audit"]);
    let ops: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["grant"] == grant.as_str())
        .filter_map(|e| e["operation"].as_str())
        .collect();
    for op in ["read", "write", "create", "remove"] {
        assert!(ops.contains(&op), "no {op} in {ops:?}");
    }

    // A read-only grant: the upload fails with 403 and nothing changes.
    let (_, password) = grant_with_password(&node, &["--read", "contacts"]);
    let ro = t.dir().join("readonly");
    let config = vdirsyncer_config(&ro, &node.base_url(), &password);
    let config = config.to_str().unwrap();
    let (ok, out) = run_tool(
        "vdirsyncer",
        &["-c", config, "discover", "contacts"],
        Some("y\ny\n"),
    );
    assert!(ok, "read-only discover: {out}");
    let (ok, out) = run_tool("vdirsyncer", &["-c", config, "sync", "contacts"], None);
    assert!(ok, "read-only download: {out}");
    let before = node.json(&["ls", "contacts"]);
    let card = &files(&ro.join("contacts/contacts"))[0];
    let text = std::fs::read_to_string(card).unwrap();
    std::fs::write(
        card,
        text.replacen("END:VCARD", "NOTE:forbidden\r\nEND:VCARD", 1),
    )
    .unwrap();
    let (ok, out) = run_tool("vdirsyncer", &["-c", config, "sync", "contacts"], None);
    assert!(!ok, "the upload must fail: {out}");
    assert!(out.contains("403"), "{out}");
    assert_eq!(node.json(&["ls", "contacts"]), before);
}

/// vdirsyncer over the LAN listener, pinning the certificate's fingerprint as a phone
/// would: the right fingerprint syncs, a wrong one is refused by the client.
#[test]
#[ignore = "needs vdirsyncer: run by .ci/run, which installs it"]
fn vdirsyncer_over_tls_pins_the_fingerprint() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &["--lan", "127.0.0.1:0"]);
    node.json(&["import", "contacts", fixture("apple.vcf").to_str().unwrap()]);
    let (_, password) = grant_with_password(&node, &["--read", "contacts"]);
    let status = node.json(&["status"]);
    let url = status["lan"]["url"].as_str().unwrap();
    let fingerprint = status["lan"]["fingerprint"].as_str().unwrap();
    let config = |dir: &Path, fingerprint: &str| {
        std::fs::create_dir_all(dir).unwrap();
        let text = format!(
            "[general]\nstatus_path = \"{dir}/status/\"\n\n[pair contacts]\na = \"local\"\nb = \"remote\"\ncollections = [\"from b\"]\n\n[storage local]\ntype = \"filesystem\"\npath = \"{dir}/contacts/\"\nfileext = \".vcf\"\n\n[storage remote]\ntype = \"carddav\"\nurl = \"{url}\"\nusername = \"phone\"\npassword = \"{password}\"\nverify_fingerprint = \"{fingerprint}\"\n",
            dir = dir.display()
        );
        let path = dir.join("config");
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = t.dir().join("good");
    let path = config(&good, fingerprint);
    let path = path.to_str().unwrap();
    let (ok, out) = run_tool("vdirsyncer", &["-c", path, "discover"], Some("y\n"));
    assert!(ok, "discover over TLS: {out}");
    let (ok, out) = run_tool("vdirsyncer", &["-c", path, "sync"], None);
    assert!(ok, "sync over TLS: {out}");
    assert_eq!(files(&good.join("contacts/contacts")).len(), 2, "{out}");

    let wrong = fingerprint.replacen(
        &fingerprint[..2],
        if &fingerprint[..2] == "00" {
            "11"
        } else {
            "00"
        },
        1,
    );
    let bad = t.dir().join("bad");
    let path = config(&bad, &wrong);
    let (ok, out) = run_tool(
        "vdirsyncer",
        &["-c", path.to_str().unwrap(), "discover"],
        Some("y\n"),
    );
    assert!(!ok, "a wrong fingerprint must be refused: {out}");
}

/// The attack: a client that may write its filter field (but not the UID) uploads
/// `ID.vcf` (a card without a UID) for an id it cannot see, and reads back what it got. When the node made the
/// UID from the id (`hearth-ID` when the id was free, `hearth-<random>` when a hidden
/// record held it), that told the client whether the hidden record exists. Whatever
/// the PUT answers and stores must be the same either way.
#[test]
fn a_put_tells_nothing_about_an_id_the_filter_hides() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&[
        "put",
        "contacts",
        "secret",
        r#"{"name": "Hidden", "groups": ["family"]}"#,
    ]);
    let (_, password) = grant_with_password(
        &node,
        &[
            "--read",
            "contacts",
            "--write",
            "contacts.name,contacts.name_parts,contacts.groups",
            "--where",
            "groups=friends",
        ],
    );
    let friends = Dav::new(&node, &password);
    let card = |name: &str| {
        format!(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:{name}\r\nN:{name};;;;\r\nCATEGORIES:friends\r\nEND:VCARD\r\n"
        )
    };
    // What a PUT answers and stores, with everything that is random by design (the
    // fresh id in the UID, the ETag of a text holding it, the date) made uniform.
    let probe = |stem: &str| {
        let path = format!("/dav/contacts/contacts/{stem}.vcf");
        let (status, _, headers) = friends.send(
            friends
                .request("PUT", &path)
                .header("If-None-Match", "*")
                .body(card("Probe")),
        );
        let mut names: Vec<String> = headers
            .keys()
            .map(|k| k.as_str().to_owned())
            .filter(|k| k != "date")
            .collect();
        names.sort();
        let (get_status, text, _) = friends.get(&path);
        assert_eq!(get_status, 200, "{text}");
        let uid = text
            .lines()
            .find_map(|l| l.strip_prefix("UID:"))
            .unwrap_or_default()
            .to_owned();
        assert_ne!(
            uid,
            format!("hearth-{stem}"),
            "the UID names the id: {text}"
        );
        let shape = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { 'x' } else { c })
                .collect()
        };
        let listed = friends.resources("/dav/contacts/contacts/").contains(&path);
        (status, names, shape(&uid), text.len(), listed)
    };
    let hidden = probe("secret");
    let free = probe("unused");
    assert_eq!(
        hidden, free,
        "a PUT over a hidden id answers like one over a free id"
    );
    assert_eq!(hidden.0, 201);
    assert!(hidden.4, "the client finds its card under the name it gave");
    let secret = node.json(&["get", "contacts", "secret"]);
    assert_eq!(secret["name"], "Hidden", "the hidden record is untouched");
}

/// A grant that writes one field cannot rename the book for everyone, and a
/// multiget cannot name more resources than a request may.
#[test]
fn book_properties_need_the_whole_collection_and_multigets_are_bounded() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    let proppatch = r#"<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:"><d:set><d:prop><d:displayname>Pwned</d:displayname></d:prop></d:set></d:propertyupdate>"#;
    let (_, password) =
        grant_with_password(&node, &["--read", "contacts", "--write", "contacts.name"]);
    let names_only = Dav::new(&node, &password);
    let (status, text, _) = names_only.send(
        names_only
            .request("PROPPATCH", "/dav/contacts/contacts/")
            .body(proppatch),
    );
    assert_eq!(status, 403, "{text}");
    let (_, password) = grant_with_password(&node, &["--read", "contacts"]);
    let reader = Dav::new(&node, &password);
    let (_, xml) = reader.propfind("/dav/contacts/contacts/", "0", "<d:displayname/>");
    assert!(!xml.contains("Pwned"), "{xml}");
    // A filtered grant that writes every field cannot either.
    let (_, password) = grant_with_password(
        &node,
        &[
            "--read", "contacts", "--write", "contacts", "--where", "groups=x",
        ],
    );
    let filtered = Dav::new(&node, &password);
    let (status, _, _) = filtered.send(
        filtered
            .request("PROPPATCH", "/dav/contacts/contacts/")
            .body(proppatch),
    );
    assert_eq!(status, 403);
    // The whole collection: allowed.
    let (_, password) = grant_with_password(&node, &["--read", "contacts", "--write", "contacts"]);
    let owner_like = Dav::new(&node, &password);
    let (status, text, _) = owner_like.send(
        owner_like
            .request("PROPPATCH", "/dav/contacts/contacts/")
            .body(proppatch.replace("Pwned", "Family")),
    );
    assert_eq!(status, 207, "{text}");

    let multiget = |n: usize| {
        let hrefs: String = (0..n)
            .map(|i| format!("<d:href>/dav/contacts/contacts/c{i}.vcf</d:href>"))
            .collect();
        format!(
            r#"<card:addressbook-multiget xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop>{hrefs}</card:addressbook-multiget>"#
        )
    };
    let (status, text, _) = reader.send(
        reader
            .request("REPORT", "/dav/contacts/contacts/")
            .body(multiget(1000)),
    );
    assert_eq!(status, 207, "{text}");
    let (status, text, _) = reader.send(
        reader
            .request("REPORT", "/dav/contacts/contacts/")
            .body(multiget(20_000)),
    );
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("at most 1000"), "{text}");
}
