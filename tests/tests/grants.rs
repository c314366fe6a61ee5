//! A service's view through a grant, as the README walks through it: grant, read,
//! audit, revoke, refused.

use hearth_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

fn service_get(node: &NodeProcess, token: &str, path: &str) -> (u16, Value) {
    let api = Api::new(node);
    api.send(api.raw(Method::GET, path).bearer_auth(token))
}

#[test]
fn grant_view_audit_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada", "email": "ada@x.org", "tag": ["work"], "address": {"city": "London", "street": "1 Main"}}"#]);
    node.json(&[
        "put",
        "contacts",
        "bob",
        r#"{"name": "Bob", "email": "bob@x.org", "tag": ["home"]}"#,
    ]);
    node.json(&["put", "notes", "n1", r#"{"text": "private"}"#]);

    let grant = node.json(&[
        "grant",
        "newsletter",
        "--read",
        "contacts.name,contacts.address.city",
        "--where",
        "tag=work",
        "--purpose",
        "monthly letter",
    ]);
    let token = grant["token"].as_str().unwrap().to_owned();
    let id = grant["id"].as_str().unwrap().to_owned();
    assert!(
        grant["expires_at"].as_u64().is_some(),
        "grants expire by default"
    );

    // Only the granted fields of the matching records.
    let (status, view) = service_get(&node, &token, "/v1/view/contacts");
    assert_eq!(
        (status, view),
        (
            200,
            json!([{"id": "ada", "name": "Ada", "address": {"city": "London"}}])
        )
    );
    let (status, all) = service_get(&node, &token, "/v1/view");
    assert_eq!(status, 200);
    assert_eq!(
        all["collections"],
        json!({"contacts": [{"id": "ada", "name": "Ada", "address": {"city": "London"}}]})
    );
    assert_eq!(
        service_get(&node, &token, "/v1/view/contacts/bob").0,
        404,
        "filtered out is absent"
    );
    let (status, body) = service_get(&node, &token, "/v1/view/notes");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("out_of_scope"))
    );
    let api = Api::new(&node);
    let (status, body) = api.send(api.raw(Method::GET, "/v1/view/contacts"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("missing_token"))
    );
    let (status, _) = service_get(&node, &node.owner_token(), "/v1/view/contacts");
    assert_eq!(status, 401, "the owner token is no grant");
    let (status, _) = service_get(&node, "hearth_owner_x", "/v1/grants");
    assert_eq!(status, 401, "a grant's token is not the owner's");
    let (status, _) = service_get(&node, &token, "/v1/grants");
    assert_eq!(status, 401);

    // Listed, audited, verifiable.
    let grants = node.json(&["grants"]);
    assert_eq!(grants[0]["service"], "newsletter");
    assert_eq!(grants[0]["purpose"], "monthly letter");
    assert_eq!(grants[0]["status"], "active");
    assert!(grants[0]["last_used"].as_u64().is_some());
    let audit = node.json(&["audit", "--grant", &id]);
    assert!(audit.as_array().unwrap().len() >= 3);
    assert_eq!(audit[0]["collection"], "contacts");
    assert_eq!(audit[0]["fields"], json!(["address.city", "name"]));
    assert!(
        node.json(&["audit", "--verify"])["entries"]
            .as_u64()
            .unwrap()
            >= 3
    );

    // Revoke: the next request is refused, and the owner learns what was seen.
    let revoked = node.json(&["revoke", &id]);
    assert_eq!(revoked["seen"]["collections"][0]["collection"], "contacts");
    assert_eq!(
        revoked["seen"]["collections"][0]["fields"],
        json!(["address.city", "name"])
    );
    let (status, body) = service_get(&node, &token, "/v1/view/contacts");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("revoked"))
    );
    assert_eq!(node.json(&["grants"])[0]["status"], "revoked");

    // A tampered token is no token.
    let mut tampered = token.clone();
    tampered.insert(tampered.len() / 2, 'x');
    assert_eq!(service_get(&node, &tampered, "/v1/view/contacts").0, 401);
    node.stop();
}

#[test]
fn writes_land_only_in_granted_fields() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    node.json(&[
        "put",
        "tasks",
        "t1",
        r#"{"title": "old", "owner": "me", "secret": "keep"}"#,
    ]);
    let grant = node.json(&[
        "grant",
        "todo-app",
        "--read",
        "tasks.title",
        "--write",
        "tasks.title,tasks.done",
        "--expires",
        "2h",
    ]);
    let token = grant["token"].as_str().unwrap();
    let api = Api::new(&node);

    let (status, body) = api.send(
        api.raw(Method::POST, "/v1/view/tasks")
            .bearer_auth(token)
            .json(&json!({"id": "t1", "title": "new", "done": true})),
    );
    assert_eq!((status, body), (200, json!({"id": "t1", "created": false})));
    assert_eq!(
        node.json(&["get", "tasks", "t1"]),
        json!({"id": "t1", "title": "new", "done": true, "owner": "me", "secret": "keep"})
    );
    let (status, body) = api.send(
        api.raw(Method::POST, "/v1/view/tasks")
            .bearer_auth(token)
            .json(&json!({"title": "fresh"})),
    );
    assert_eq!(status, 201);
    assert!(body["id"].as_str().is_some());

    let (status, body) = api.send(
        api.raw(Method::POST, "/v1/view/tasks")
            .bearer_auth(token)
            .json(&json!({"id": "t1", "secret": "stolen"})),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("out_of_scope"))
    );
    let (status, _) = api.send(
        api.raw(Method::POST, "/v1/view/notes")
            .bearer_auth(token)
            .json(&json!({"title": "x"})),
    );
    assert_eq!(status, 403);
    assert_eq!(node.json(&["get", "tasks", "t1"])["secret"], "keep");

    // Bad grant requests.
    for (args, needle) in [
        (vec!["grant", "svc"], "grants nothing"),
        (vec!["grant", "svc", "--read", "Bad"], "invalid"),
        (vec!["grant", "svc", "--read", "_access"], "system"),
        (
            vec!["grant", "svc", "--read", "tasks", "--expires", "soon"],
            "duration",
        ),
        (
            vec!["grant", "svc", "--read", "tasks", "--where", "novalue"],
            "FIELD=VALUE",
        ),
        (
            vec!["grant", "svc", "--read", "tasks", "--to", "nobody"],
            "PeerId",
        ),
        (vec!["revoke", "nosuchgrant"], "no grant"),
    ] {
        let err = one_line_error(&node.run(&args));
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let never = node.json(&["grant", "svc", "--read", "tasks", "--expires", "never"]);
    assert!(never["expires_at"].is_null());
    node.stop();
}

#[test]
fn an_expired_grant_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    let grant = node.json(&["grant", "brief", "--read", "contacts", "--expires", "1s"]);
    let token = grant["token"].as_str().unwrap().to_owned();
    eventually("the grant expires", || {
        let (status, body) = service_get(&node, &token, "/v1/view/contacts");
        (status == 403 && body["error"]["code"] == "expired").then_some(())
    });
    node.stop();
}

/// A grant that expired (a phone after a month) comes back with `hearth extend`: the
/// same token and app password work again, the extension is audited, a revoked grant
/// stays revoked, and `hearth status` warned before it expired.
#[test]
fn an_extended_grant_keeps_its_token_and_password() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    let grant = node.json(&[
        "grant",
        "phone",
        "--read",
        "contacts",
        "--expires",
        "2s",
        "--app-password",
    ]);
    let id = grant["id"].as_str().unwrap().to_owned();
    let token = grant["token"].as_str().unwrap().to_owned();
    let password = grant["password"].as_str().unwrap().to_owned();
    // Warned while it still works.
    let status = node.json(&["status"]);
    assert_eq!(status["expiring_grants"][0]["id"], id.as_str(), "{status}");
    let said = String::from_utf8(node.run(&["status"]).stdout).unwrap();
    assert!(said.contains(&format!("hearth extend {id}")), "{said}");
    eventually("the grant expires", || {
        let (status, body) = service_get(&node, &token, "/v1/view/contacts");
        (status == 403 && body["error"]["code"] == "expired").then_some(())
    });
    let extended = node.json(&["extend", &id, "--expires", "1y"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until = extended["expires_at"].as_u64().unwrap();
    assert!(until.abs_diff(now + 365 * 86_400) < 60, "{extended}");
    assert_eq!(extended["status"], "active");
    assert!(extended.get("token_expires_at").is_none(), "{extended}");
    // The same token, and the same password, read again.
    let (status, body) = service_get(&node, &token, "/v1/view/contacts");
    assert_eq!(status, 200, "{body}");
    let api = Api::new(&node);
    let (status, body) = api.send(
        api.raw(Method::GET, "/v1/view/contacts")
            .bearer_auth(&password),
    );
    assert_eq!(status, 200, "{body}");
    let said = String::from_utf8(node.run(&["status"]).stdout).unwrap();
    assert!(!said.contains("warning  grant"), "{said}");
    // Audited, with the new date; not counted as an access of the service.
    let audit = node.json(&["audit", "--grant", &id]);
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["operation"] == "extend")
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(entry["reason"], format!("expires_at={until}"));
    node.json(&["audit", "--verify"]);
    // `never` is asked for by name; wrong input is refused and changes nothing.
    let forever = node.json(&["extend", &id, "--expires", "never"]);
    assert!(forever["expires_at"].is_null(), "{forever}");
    for (args, code) in [
        (vec!["extend", &id, "--expires", "soon"], "bad_request"),
        (
            vec!["extend", "nosuchgrant", "--expires", "1d"],
            "not_found",
        ),
    ] {
        let out = node.run(&[&args[..], &["--json"]].concat());
        assert!(!out.status.success());
        let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            err["error"]["code"] == code || text.contains(code) || text.contains("invalid"),
            "{args:?}: {err} {text}"
        );
    }
    assert!(node.json(&["grants"])[0]["expires_at"].is_null());
    // Revoked stays revoked.
    node.json(&["revoke", &id]);
    let out = node.run(&["extend", &id, "--expires", "1y"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("stays revoked"), "{text}");
    let (status, _) = service_get(&node, &token, "/v1/view/contacts");
    assert_eq!(status, 403);
    // An app password grant lasts a year unless told otherwise; a command word is
    // not a service.
    let phone = node.json(&["grant", "phone2", "--read", "contacts", "--app-password"]);
    let until = phone["expires_at"].as_u64().unwrap();
    assert!(until.abs_diff(now + 365 * 86_400) < 60, "{phone}");
    let plain = node.json(&["grant", "svc", "--read", "contacts"]);
    let until = plain["expires_at"].as_u64().unwrap();
    assert!(until.abs_diff(now + 30 * 86_400) < 60, "{plain}");
    let out = node.run(&["grant", "renew", "--read", "contacts"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("hearth extend GRANT_ID"), "{text}");
    node.stop();
}

#[test]
fn attenuation_narrows_and_nothing_widens() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    node.json(&[
        "put",
        "contacts",
        "ada",
        r#"{"name": "Ada", "email": "ada@x.org", "phone": "123"}"#,
    ]);
    node.json(&["put", "notes", "n1", r#"{"text": "private"}"#]);
    let grant = node.json(&["grant", "crm", "--read", "contacts", "--write", "contacts"]);
    let token = grant["token"].as_str().unwrap().to_owned();

    // Run as a service would: no vault, no home.
    let empty = dir.path().join("service-home");
    let narrow = hearth_json(
        &empty,
        &[
            "token",
            "attenuate",
            &token,
            "--read",
            "contacts.name,contacts.email",
        ],
    );
    let narrow = narrow["token"].as_str().unwrap().to_owned();
    assert!(!empty.join("keys").exists());

    let (status, view) = service_get(&node, &narrow, "/v1/view/contacts");
    assert_eq!(
        (status, view),
        (
            200,
            json!([{"id": "ada", "name": "Ada", "email": "ada@x.org"}])
        )
    );
    let api = Api::new(&node);
    let (status, _) = api.send(
        api.raw(Method::POST, "/v1/view/contacts")
            .bearer_auth(&narrow)
            .json(&json!({"name": "x"})),
    );
    assert_eq!(status, 403, "attenuated tokens read only");

    // Narrowing further works; "widening" an attenuated token does not.
    let narrower = hearth_json(
        &empty,
        &["token", "attenuate", &narrow, "--read", "contacts.name"],
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        service_get(&node, &narrower, "/v1/view/contacts").1,
        json!([{"id": "ada", "name": "Ada"}])
    );
    let wider = hearth_json(
        &empty,
        &["token", "attenuate", &narrower, "--read", "contacts,notes"],
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        service_get(&node, &wider, "/v1/view/contacts").1,
        json!([{"id": "ada", "name": "Ada"}])
    );
    assert_eq!(
        service_get(&node, &wider, "/v1/view/notes").0,
        403,
        "outside the grant stays outside"
    );
    let elsewhere =
        hearth_json(&empty, &["token", "attenuate", &token, "--read", "notes"])["token"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_eq!(service_get(&node, &elsewhere, "/v1/view/notes").0, 403);
    assert_eq!(service_get(&node, &elsewhere, "/v1/view/contacts").0, 403);

    // The original is untouched, and revoking the grant stops every derived token.
    assert_eq!(
        service_get(&node, &token, "/v1/view/contacts").1[0]["phone"],
        "123"
    );
    node.json(&["revoke", grant["id"].as_str().unwrap()]);
    assert_eq!(service_get(&node, &narrow, "/v1/view/contacts").0, 403);
    let err = one_line_error(&hearth(&[
        "--home",
        empty.to_str().unwrap(),
        "token",
        "attenuate",
        "garbage",
        "--read",
        "contacts",
    ]));
    assert!(err.contains("not a Hearth token"), "{err}");
    node.stop();
}

/// Reads server-sent events (event name, data) from a response on a thread.
fn sse_events(response: reqwest::blocking::Response) -> std::sync::mpsc::Receiver<(String, Value)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut event = String::new();
        for line in std::io::BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                let value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                if tx.send((std::mem::take(&mut event), value)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[test]
fn events_stream_only_projected_in_scope_changes() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    node.json(&[
        "put",
        "contacts",
        "ada",
        r#"{"name": "Ada", "email": "a@x", "tag": "work"}"#,
    ]);
    let grant = node.json(&[
        "grant",
        "live",
        "--read",
        "contacts.name",
        "--where",
        "tag=work",
    ]);
    let token = grant["token"].as_str().unwrap().to_owned();
    let api = Api::new(&node);
    let response = api
        .raw(Method::GET, "/v1/view/events")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let events = sse_events(response);
    let next = || {
        events
            .recv_timeout(std::time::Duration::from_secs(15))
            .expect("an event")
    };
    assert_eq!(next().0, "ready", "the stream says when it is live");

    // Out of scope: another field, a record the filter hides, another collection.
    node.json(&["patch", "contacts", "ada", r#"{"email": "new@x"}"#]);
    node.json(&[
        "put",
        "contacts",
        "bob",
        r#"{"name": "Bob", "tag": "home"}"#,
    ]);
    node.json(&["put", "notes", "n1", r#"{"text": "t"}"#]);
    // In scope: sent, projected.
    node.json(&["patch", "contacts", "ada", r#"{"name": "Ada L."}"#]);
    assert_eq!(
        next(),
        (
            "upsert".to_owned(),
            json!({"collection": "contacts", "record": {"id": "ada", "name": "Ada L."}})
        )
    );
    node.json(&[
        "put",
        "contacts",
        "cy",
        r#"{"name": "Cy", "tag": "work", "email": "c@x"}"#,
    ]);
    assert_eq!(
        next(),
        (
            "upsert".to_owned(),
            json!({"collection": "contacts", "record": {"id": "cy", "name": "Cy"}})
        )
    );
    node.json(&["rm", "contacts", "cy"]);
    assert_eq!(
        next(),
        (
            "remove".to_owned(),
            json!({"collection": "contacts", "id": "cy"})
        )
    );

    // Revocation ends the stream at once, without waiting for a change.
    node.json(&["revoke", grant["id"].as_str().unwrap()]);
    let (event, body) = next();
    assert_eq!(
        (event.as_str(), body["code"].as_str()),
        ("error", Some("revoked"))
    );
    let audit = node.json(&["audit", "--grant", grant["id"].as_str().unwrap()]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["operation"] == "subscribe")
    );
    node.stop();
}

#[test]
fn over_rate_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    node.json(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    let grant = node.json(&["grant", "poller", "--read", "contacts", "--rate", "3/min"]);
    let token = grant["token"].as_str().unwrap().to_owned();
    let statuses: Vec<u16> = (0..5)
        .map(|_| service_get(&node, &token, "/v1/view/contacts").0)
        .collect();
    // A minute boundary may fall inside the loop; at most 3 pass per minute either way.
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 3);
    let (status, body) = service_get(&node, &token, "/v1/view/contacts");
    if status != 200 {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (429, Some("rate_limited"))
        );
    }
    assert!(statuses.contains(&429) || status == 429);
    let err = one_line_error(&node.run(&["grant", "x", "--read", "contacts", "--rate", "lots"]));
    assert!(err.contains("N/min"), "{err}");
    node.stop();
}

/// A grant covers the blobs its records name: a photo app granted the holiday photos
/// reads those photos' bytes and no other blob (hidden, unnamed and ungranted blobs
/// all answer like missing ones); each read is audited with the record that named it,
/// and revocation ends it.
#[test]
fn a_grant_reads_the_blobs_its_records_name_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    let blob = |name: &str, bytes: &[u8]| node.blob_put(dir.path(), name, bytes);
    let beach = blob("beach.jpg", b"the beach photo");
    let private = blob("private.jpg", b"a private photo");
    let unnamed = blob("scan.pdf", b"no record names this");
    node.json(&[
        "put",
        "photos",
        "p1",
        &json!({"album": "holiday", "title": "Beach", "file": {"blob": beach}}).to_string(),
    ]);
    node.json(&[
        "put",
        "photos",
        "p2",
        &json!({"album": "private", "title": "Me", "file": {"blob": private}}).to_string(),
    ]);

    let token = node.json(&[
        "grant",
        "gallery",
        "--read",
        "photos",
        "--where",
        "album=holiday",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let api = Api::new(&node);
    let get = |token: &str, id: &str| {
        api.send_raw(
            api.raw(Method::GET, &format!("/v1/view/_blobs/{id}"))
                .bearer_auth(token),
        )
    };
    let answer = get(&token, &beach);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"the beach photo");
    assert_eq!(answer.content_type.as_deref(), Some("image/jpeg"));
    // A part of it, as a player or a resumed download asks; a hidden blob gets no
    // part either.
    let part = |id: &str| {
        api.send_raw(
            api.raw(Method::GET, &format!("/v1/view/_blobs/{id}"))
                .bearer_auth(&token)
                .header("Range", "bytes=4-8"),
        )
    };
    let answer = part(&beach);
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (206, &b"beach"[..])
    );
    assert_eq!(part(&private).status, 404);
    let nothing = "0".repeat(64);
    let missing = get(&token, &nothing);
    assert_eq!(missing.status, 404);
    let missing_text = String::from_utf8(missing.body).unwrap();
    for hidden in [&private, &unnamed] {
        let answer = get(&token, hidden);
        assert_eq!(answer.status, 404, "{hidden}");
        // Word for word what a blob that does not exist gets.
        assert_eq!(
            String::from_utf8(answer.body).unwrap(),
            missing_text.replace(&nothing, hidden)
        );
    }
    // A grant without the field that names the blob does not reach it.
    let titles = node.json(&["grant", "titles", "--read", "photos.title"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(&titles, &beach).status, 404);
    assert_eq!(get("not-a-token", &beach).status, 401);
    assert_eq!(get(&token, "not-an-id").status, 400);

    let audit = node.json(&["audit"]);
    let reads: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "read_blob" && e["reason"].is_null())
        .collect();
    // The whole photo, then a part of it: each read audited.
    assert_eq!(reads.len(), 2, "{audit}");
    // The refused reads are in the log too, as reads that found nothing.
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["operation"] == "read_blob"
                && e["reason"] == "not_found"
                && e["collection"] == "_blobs"),
        "{audit}"
    );
    assert_eq!(reads[0]["collection"], "photos");
    assert_eq!(reads[0]["ids"], json!(["p1"]));
    let grant = node
        .json(&["grants"])
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["service"] == "gallery")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    node.json(&["revoke", &grant]);
    assert_eq!(get(&token, &beach).status, 403);
    node.stop();
}

#[test]
fn list_routes_give_pages_in_a_fixed_order_and_a_page_tells_nothing_the_filter_hides() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    for i in 0..7 {
        let tag = if i % 2 == 0 { "work" } else { "home" };
        node.json(&[
            "put",
            "contacts",
            &format!("c{i}"),
            &json!({"name": format!("P{i}"), "tag": tag}).to_string(),
        ]);
    }
    let grant = node.json(&[
        "grant",
        "crm",
        "--read",
        "contacts.name",
        "--where",
        "tag=work",
    ]);
    let token = grant["token"].as_str().unwrap().to_owned();
    let api = Api::new(&node);
    let get = |token: &str, path: &str| {
        let answer = api
            .raw(Method::GET, path)
            .bearer_auth(token)
            .send()
            .unwrap();
        let link = answer
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let status = answer.status().as_u16();
        (status, answer.json::<Value>().unwrap(), link)
    };
    let ids = |records: &Value| -> Vec<String> {
        records
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };

    // The owner pages through everything, following the Link header.
    let owner = node.owner_token();
    let mut path = "/v1/collections/contacts/records?limit=3".to_owned();
    let mut pages = Vec::new();
    loop {
        let (status, records, link) = get(&owner, &path);
        assert_eq!(status, 200, "{records}");
        pages.push(ids(&records));
        let Some(link) = link else { break };
        let next = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .unwrap_or_else(|| panic!("a Link header with rel=next, not {link:?}"))
            .0;
        path = next.to_owned();
    }
    // Pages of 3, 3 and 1 that hold every record once. Their order is the record
    // index's (a keyed hash of each id: it tells nothing about the ids), the same on
    // every walk.
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    let walk: Vec<String> = pages.concat();
    let mut sorted = walk.clone();
    sorted.sort();
    assert_eq!(sorted, (0..7).map(|i| format!("c{i}")).collect::<Vec<_>>());
    let (_, records, link) = get(
        &owner,
        &format!("/v1/collections/contacts/records?after={}", walk[4]),
    );
    assert_eq!((ids(&records), link), (walk[5..].to_vec(), None));
    // Without limit and after: every record, sorted by id, as before.
    let (_, all, _) = get(&owner, "/v1/collections/contacts/records");
    assert_eq!(ids(&all), sorted);

    // A service's pages hold only what its filter shows, projected; the next page's
    // address names only a record it can see.
    let work: Vec<&String> = walk
        .iter()
        .filter(|id| id[1..].parse::<usize>().unwrap() % 2 == 0)
        .collect();
    let (status, first, link) = get(&token, "/v1/view/contacts?limit=2");
    assert_eq!(status, 200);
    let shown = |id: &str| json!({"id": id, "name": format!("P{}", &id[1..])});
    assert_eq!(first, json!([shown(work[0]), shown(work[1])]));
    assert_eq!(
        link,
        Some(format!(
            "</v1/view/contacts?after={}&limit=2>; rel=\"next\"",
            work[1]
        ))
    );
    let (_, second, link) = get(
        &token,
        &format!("/v1/view/contacts?after={}&limit=2", work[1]),
    );
    assert_eq!(ids(&second), [work[2].clone(), work[3].clone()]);
    assert_eq!(
        link,
        Some(format!(
            "</v1/view/contacts?after={}&limit=2>; rel=\"next\"",
            work[3]
        ))
    );
    let (_, last, link) = get(
        &token,
        &format!("/v1/view/contacts?after={}&limit=2", work[3]),
    );
    assert_eq!((last, link), (json!([]), None));
    // Each page is audited as a read of its records.
    let audit = node.json(&["audit", "--grant", grant["id"].as_str().unwrap()]);
    let reads: Vec<u64> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["collection"] == "contacts")
        .filter_map(|e| e["records"].as_u64())
        .collect();
    assert_eq!(reads, [2, 2, 0], "{audit}");

    // Wrong pages are refused with what was wrong.
    for (query, needle) in [
        ("limit=0", "limit must be between 1 and 10000"),
        ("limit=10001", "limit must be between 1 and 10000"),
        ("limit=many", "limit"),
        ("after=not%20an%20id", "after"),
    ] {
        for (who, base) in [
            (&owner, "/v1/collections/contacts/records"),
            (&token, "/v1/view/contacts"),
        ] {
            let (status, error, _) = get(who, &format!("{base}?{query}"));
            assert_eq!(status, 400, "{base}?{query}: {error}");
            let message = error["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(needle), "{base}?{query}: {error}");
        }
    }
}

/// A note longer than the record index keeps (16,384 characters: read from its
/// document) is served through a filtered view like any other: whole, with only the
/// granted fields, and a record the filter hides stays hidden.
#[test]
fn a_long_note_is_served_whole_through_a_filtered_view() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&dir.path().join("v"), &[]);
    node.json(&[
        "put",
        "notes",
        "long",
        r#"{"tag": "shared", "secret": "s", "body": ""}"#,
    ]);
    node.json(&[
        "put",
        "notes",
        "other",
        r#"{"tag": "private", "body": "hidden"}"#,
    ]);
    let body = "Lorem ipsum dolor sit amet. ".repeat(700);
    assert!(body.chars().count() > 16_384);
    let api = Api::new(&node);
    let (status, answer) = api.send(
        api.request(Method::POST, "/v1/collections/notes/records/long/text")
            .json(&json!({"field": "body", "edits": [{"at": 0, "insert": body}]})),
    );
    assert_eq!(status, 200, "{answer}");
    let grant = node.json(&[
        "grant",
        "reader",
        "--read",
        "notes.body,notes.tag",
        "--where",
        "tag=shared",
    ]);
    let token = grant["token"].as_str().unwrap().to_owned();
    let whole = json!({"id": "long", "tag": "shared", "body": body});
    assert_eq!(
        service_get(&node, &token, "/v1/view/notes"),
        (200, json!([whole.clone()]))
    );
    assert_eq!(
        service_get(&node, &token, "/v1/view/notes/long"),
        (200, whole)
    );
    assert_eq!(service_get(&node, &token, "/v1/view/notes/other").0, 404);
    node.stop();
}
