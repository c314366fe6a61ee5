//! Two real `hearth` processes of one vault on loopback, without mDNS: pair, join, up,
//! and records flow both ways; an invite works once.

use hearth_tests::*;
use serde_json::json;

#[test]
fn pair_join_up_and_records_flow_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &["--relay"]);
    let invite = a.json(&["pair"]);
    let code = invite["code"].as_str().unwrap().to_owned();
    assert!(code.starts_with("hearth1"));

    let b_home = dir.path().join("b");
    let joined = hearth_json(&b_home, &["join", &code]);
    assert_eq!(joined["inviter"], a.peer_id.as_str());
    // The invite worked once.
    let err = one_line_error(&hearth(&[
        "--home",
        dir.path().join("c").to_str().unwrap(),
        "join",
        &code,
    ]));
    assert!(err.contains("wrong, expired or already used"), "{err}");
    assert!(!dir.path().join("c").join("keys").exists());

    // B finds A through the device list (no --peer, no mDNS).
    let b = spawn_node(&b_home, &[]);
    assert_eq!(
        b.json(&["status"])["vault_id"],
        a.json(&["status"])["vault_id"]
    );
    a.json(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    b.json(&["put", "notes", "n1", r#"{"text": "from b"}"#]);
    eventually("A's record on B", || {
        b.run(&["get", "contacts", "ada"])
            .status
            .success()
            .then_some(())
    });
    eventually("B's record on A", || {
        a.run(&["get", "notes", "n1"])
            .status
            .success()
            .then_some(())
    });
    assert_eq!(
        b.json(&["get", "contacts", "ada"]),
        json!({"id": "ada", "name": "Ada"})
    );

    let devices = a.json(&["devices"]);
    let b_entry = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == b.peer_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(b_entry["online"], true);

    // B restarts and still syncs (its recorded addresses, not the invite, find A).
    b.stop();
    a.json(&["put", "contacts", "bob", r#"{"name": "Bob"}"#]);
    let b = spawn_node(&b_home, &[]);
    eventually("catch-up after restart", || {
        b.run(&["get", "contacts", "bob"])
            .status
            .success()
            .then_some(())
    });

    // Removing B on A: B gets nothing new.
    a.json(&["devices", "remove", &b.peer_id]);
    a.json(&["put", "contacts", "carol", r#"{"name": "Carol"}"#]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(!b.run(&["get", "contacts", "carol"]).status.success());
    a.stop();
    b.stop();
}

#[test]
fn join_refuses_bad_codes_and_homes_with_a_vault() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("x");
    let h = home.to_str().unwrap();
    let err = one_line_error(&hearth(&["--home", h, "join", "not-a-code"]));
    assert!(err.contains("not a Hearth invite code"), "{err}");
    let err = one_line_error(&hearth(&["--home", h, "join", "hearth1aaaa"]));
    assert!(err.contains("damaged"), "{err}");
    hearth_json(&home, &["init"]);
    let a = spawn_node(&dir.path().join("a"), &[]);
    let code = a.json(&["pair"])["code"].as_str().unwrap().to_owned();
    let err = one_line_error(&hearth(&["--home", h, "join", &code]));
    assert!(err.contains("already holds a vault"), "{err}");
    // The inviter stopped (or restarted elsewhere): the code leads nowhere, and the
    // error says what to do, with the reason once.
    a.stop();
    let fresh = dir.path().join("y");
    let err = one_line_error(&hearth(&["--home", fresh.to_str().unwrap(), "join", &code]));
    assert!(
        err.contains("cannot reach the inviting device")
            && err.contains("run `hearth pair` there again"),
        "{err}"
    );
    assert_eq!(err.matches("refused").count(), 1, "{err}");
}

#[test]
fn a_blob_of_several_mib_arrives_intact_on_the_other_device() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b_home = dir.path().join("b");
    let b = join_and_spawn(&a, &b_home);

    let content: Vec<u8> = (0..6_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let file = dir.path().join("photo.bin");
    std::fs::write(&file, &content).unwrap();
    let id = a.json(&["blob", "put", file.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The new device waits until it has caught up: then the blob is there.
    let caught_up = b.json(&["status", "--watch", "--until-synced"]);
    assert!(caught_up["arriving"].is_null(), "{caught_up}");
    let err = one_line_error(&b.run(&["status", "--watch"]));
    assert!(err.contains("terminal"), "{err}");
    let out = dir.path().join("copy.bin");
    b.json(&["blob", "get", &id, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), content);
    // And a blob stored on B reaches A.
    std::fs::write(&file, b"small note from b").unwrap();
    let id_b = b.json(&["blob", "put", file.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out_b = dir.path().join("copy-b.bin");
    eventually("B's blob reaches A", || {
        a.run(&["blob", "get", &id_b, "-o", out_b.to_str().unwrap()])
            .status
            .success()
            .then_some(())
    });
    assert_eq!(std::fs::read(&out_b).unwrap(), b"small note from b");
    a.stop();
    b.stop();
}

/// Record `notes/n1` = `record` written on A and synced to B; then B stops, `on_a`
/// changes A, B runs alone (without the mesh) while `on_b` changes it, and B starts
/// again with the mesh: the devices meet. Returns the new B.
fn apart(
    a: &NodeProcess,
    b: NodeProcess,
    record: &str,
    on_a: impl FnOnce(&NodeProcess),
    on_b: impl FnOnce(&NodeProcess),
) -> NodeProcess {
    a.json(&["put", "notes", "n1", record]);
    eventually("n1 on B", || {
        b.run(&["get", "notes", "n1"])
            .status
            .success()
            .then_some(())
    });
    let b_home = b.home.clone();
    b.stop();
    on_a(a);
    let alone = spawn_node(&b_home, &["--no-mesh"]);
    on_b(&alone);
    alone.stop();
    spawn_node(&b_home, &[])
}

/// The same field changed on two devices while apart (one of them running without the
/// mesh): `hearth conflicts` lists the record with both values, `get` says so, and
/// `hearth resolve` ends the conflict on both devices — also when the value chosen is
/// the one already shown.
#[test]
fn conflicting_edits_are_listed_and_resolved_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b_home = dir.path().join("b");
    let b = join_and_spawn(&a, &b_home);
    let b = apart(
        &a,
        b,
        r#"{"title": "plan", "n": 1}"#,
        |a| {
            a.json(&["patch", "notes", "n1", r#"{"title": "plan A"}"#]);
        },
        |alone| {
            alone.json(&["patch", "notes", "n1", r#"{"title": "plan B"}"#]);
        },
    );
    let listed = eventually("the conflict on A", || {
        let listed = a.json(&["conflicts"]);
        (listed.as_array()?.len() == 1).then_some(listed)
    });
    assert_eq!(listed[0]["collection"], "notes");
    assert_eq!(listed[0]["id"], "n1");
    let values = listed[0]["conflicts"]["title"].as_array().unwrap().clone();
    assert_eq!(values.len(), 2, "{listed}");
    assert!(values.contains(&json!("plan A")) && values.contains(&json!("plan B")));
    // `hearth status` says there is something to decide, and where.
    assert_eq!(
        a.json(&["status"])["to_decide"],
        json!([{"collection": "notes", "records": 1}])
    );
    let status = String::from_utf8_lossy(&a.run(&["status"]).stdout).into_owned();
    assert!(
        status.contains(
            "decide   1 record of notes edited on two devices at once: `hearth conflicts notes`"
        ),
        "{status}"
    );
    let said = a.run(&["get", "notes", "n1"]);
    assert!(
        String::from_utf8_lossy(&said.stderr).contains("edited on two devices at once: title"),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );
    // Writing the whole record back with another field changed (as an editor that
    // saves everything does) does not choose for the person: the conflict stays.
    let shown = a.json(&["get", "notes", "n1"])["title"].clone();
    let whole = json!({"title": shown, "n": 5}).to_string();
    a.json(&["put", "notes", "n1", &whole]);
    assert_eq!(a.json(&["conflicts", "notes"]).as_array().unwrap().len(), 1);
    // Choose the value that is shown now: the conflict ends.
    a.json(&["resolve", "notes", "n1", "title", shown.as_str().unwrap()]);
    assert_eq!(a.json(&["conflicts", "notes"]), json!([]));
    assert_eq!(a.json(&["status"]).get("to_decide"), None);
    eventually("the choice on B, without a conflict", || {
        let record = b.json(&["get", "notes", "n1"]);
        let clear = b.json(&["conflicts", "notes"]) == json!([]);
        (record["title"] == shown && clear).then_some(())
    });
    // A value that is not JSON is text; a record that does not exist is an error.
    b.json(&["resolve", "notes", "n1", "n", "2"]);
    assert_eq!(b.json(&["get", "notes", "n1"])["n"], 2);
    let err = one_line_error(&b.run(&["resolve", "notes", "nobody", "n", "2"]));
    assert!(err.contains("nobody"), "{err}");
    // A field the record does not have is refused, not added.
    let err = one_line_error(&b.run(&["resolve", "notes", "n1", "titel", "x"]));
    assert!(err.contains("no field \"titel\""), "{err}");
    assert!(b.json(&["get", "notes", "n1"]).get("titel").is_none());
    a.stop();
    b.stop();
}

/// The name `hearth devices` on `node` gives device `peer`.
fn device_name(node: &NodeProcess, peer: &str) -> String {
    node.json(&["devices"])
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == peer)
        .and_then(|d| d["name"].as_str().map(str::to_owned))
        .unwrap_or_else(|| peer.to_owned())
}

/// A record edited on one device while the other deleted it, in both directions
/// (devices apart, one without the mesh): the edit wins on both devices, and `hearth
/// conflicts` says which device deleted and which edited, until a person keeps it
/// (`resolve --version 1`) — or deletes it again, which then holds.
#[test]
fn an_edit_against_a_delete_is_kept_and_listed_on_both_devices() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b = join_and_spawn(&a, &dir.path().join("b"));
    let b_peer = b.peer_id.clone();
    // Edited on A, deleted on B.
    let b = apart(
        &a,
        b,
        r#"{"title": "plan", "n": 1}"#,
        |a| {
            a.json(&["patch", "notes", "n1", r#"{"title": "plan A"}"#]);
        },
        |alone| {
            alone.json(&["rm", "notes", "n1"]);
        },
    );
    let a_name = device_name(&a, &a.peer_id);
    let b_name = device_name(&a, &b_peer);
    for (node, which) in [(&a, "A"), (&b, "B")] {
        let listed = eventually(&format!("the kept record listed on {which}"), || {
            let listed = node.json(&["conflicts", "notes"]);
            (listed.as_array()?.len() == 1).then_some(listed)
        });
        assert_eq!(listed[0]["id"], "n1", "{listed}");
        assert_eq!(
            listed[0]["deleted"]["deleted_on"],
            b_name.as_str(),
            "{listed}"
        );
        assert_eq!(
            listed[0]["deleted"]["edited_on"],
            json!([a_name]),
            "{listed}"
        );
        assert_eq!(
            node.json(&["get", "notes", "n1"]),
            json!({"id": "n1", "title": "plan A", "n": 1}),
            "on {which}"
        );
    }
    let said = a.run(&["get", "notes", "n1"]);
    let said = String::from_utf8_lossy(&said.stderr);
    assert!(
        said.contains(&format!("deleted on {b_name} while edited on {a_name}")),
        "{said}"
    );
    let text = String::from_utf8_lossy(&a.run(&["conflicts"]).stdout).to_string();
    assert!(
        text.contains(&format!(
            "deleted on {b_name}, edited on {a_name}: the edit was kept"
        )),
        "{text}"
    );
    // Keeping it ends the conflict on both devices.
    a.json(&["resolve", "notes", "n1", "--version", "1"]);
    assert_eq!(a.json(&["conflicts", "notes"]), json!([]));
    eventually("the conflict ended on B", || {
        (b.json(&["conflicts", "notes"]) == json!([])).then_some(())
    });

    // Deleted on A, edited on B: the same, the other way round.
    let b = apart(
        &a,
        b,
        r#"{"title": "draft", "n": 1}"#,
        |a| {
            a.json(&["rm", "notes", "n1"]);
        },
        |alone| {
            alone.json(&["patch", "notes", "n1", r#"{"n": 2}"#]);
        },
    );
    for (node, which) in [(&a, "A"), (&b, "B")] {
        let listed = eventually(&format!("the second kept record on {which}"), || {
            let listed = node.json(&["conflicts", "notes"]);
            (listed.as_array()?.len() == 1).then_some(listed)
        });
        assert_eq!(
            listed[0]["deleted"]["deleted_on"],
            a_name.as_str(),
            "{listed}"
        );
        assert_eq!(
            listed[0]["deleted"]["edited_on"],
            json!([b_name]),
            "{listed}"
        );
        assert_eq!(
            node.json(&["get", "notes", "n1"]),
            json!({"id": "n1", "title": "draft", "n": 2})
        );
    }
    // Deleting it again, now that both have seen the edit, holds everywhere and takes
    // the conflict with it.
    b.json(&["rm", "notes", "n1"]);
    eventually("the delete on A", || {
        (!a.run(&["get", "notes", "n1"]).status.success()).then_some(())
    });
    assert_eq!(a.json(&["conflicts", "notes"]), json!([]));
    assert_eq!(b.json(&["conflicts", "notes"]), json!([]));
    a.stop();
    b.stop();
}

/// The same record id created on two devices apart: both versions are kept whole
/// (every field of each), listed by `hearth conflicts` on both devices while `get`
/// shows one; keeping one (`--version 2`) or writing a merge (`--record`) ends it on
/// both devices. A wrong version number is an error that changes nothing.
#[test]
fn the_same_id_created_on_two_devices_keeps_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b_home = dir.path().join("b");
    let b = join_and_spawn(&a, &b_home);
    let b = apart(
        &a,
        b,
        r#"{"seed": true}"#,
        |a| {
            a.json(&["put", "notes", "twin", r#"{"from": "a", "only_a": 1}"#]);
            a.json(&["put", "notes", "pair", r#"{"x": "a"}"#]);
            a.json(&["put", "notes", "trio", r#"{"t": "a"}"#]);
        },
        |alone| {
            alone.json(&["put", "notes", "twin", r#"{"from": "b", "only_b": 2}"#]);
            alone.json(&["put", "notes", "pair", r#"{"x": "b"}"#]);
            alone.json(&["put", "notes", "trio", r#"{"t": "b"}"#]);
        },
    );
    let version_a = json!({"from": "a", "only_a": 1});
    let version_b = json!({"from": "b", "only_b": 2});
    for (node, which) in [(&a, "A"), (&b, "B")] {
        let listed = eventually(&format!("both versions on {which}"), || {
            let listed = node.json(&["conflicts", "notes"]);
            (listed.as_array()?.len() == 3).then_some(listed)
        });
        let twin = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "twin")
            .unwrap()
            .clone();
        let versions = twin["versions"].as_array().unwrap();
        assert_eq!(versions.len(), 2, "{twin}");
        assert!(
            versions.contains(&version_a) && versions.contains(&version_b),
            "{twin}"
        );
        let mut shown = node.json(&["get", "notes", "twin"]);
        shown.as_object_mut().unwrap().remove("id");
        assert_eq!(shown, versions[0], "get shows the first version on {which}");
    }
    let said = a.run(&["get", "notes", "twin"]);
    assert!(
        String::from_utf8_lossy(&said.stderr).contains("2 versions from different devices"),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );
    // A version that does not exist: an error, and nothing changes.
    let err = one_line_error(&a.run(&["resolve", "notes", "twin", "--version", "3"]));
    assert!(err.contains("no version 2"), "{err}");
    let err = one_line_error(&a.run(&["resolve", "notes", "twin", "--version", "0"]));
    assert!(err.contains("numbered from 1"), "{err}");
    assert_eq!(a.json(&["conflicts", "notes"]).as_array().unwrap().len(), 3);
    // The dashboard shows the versions, and keeps the one chosen there.
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let link = a.json(&["dashboard"])["url"].as_str().unwrap().to_owned();
    let login = http.get(&link).send().unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = http
        .get(format!("{}/data/notes/trio", a.base_url()))
        .header("Cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("Versions from different devices"), "{page}");
    assert!(
        page.contains("&#34;t&#34;: &#34;a&#34;") && page.contains("&#34;t&#34;: &#34;b&#34;"),
        "{page}"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let listed = a.json(&["conflicts", "notes"]);
    let trio = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "trio")
        .unwrap()
        .clone();
    let kept_trio = trio["versions"][1].clone();
    let answer = http
        .post(format!("{}/data/notes/trio/resolve", a.base_url()))
        .header("Cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("version", "1")])
        .send()
        .unwrap();
    assert_eq!(answer.status(), 303);
    let mut shown = a.json(&["get", "notes", "trio"]);
    shown.as_object_mut().unwrap().remove("id");
    assert_eq!(shown, kept_trio);
    assert_eq!(a.json(&["conflicts", "notes"]).as_array().unwrap().len(), 2);
    // Keep the version not shown.
    let listed = a.json(&["conflicts", "notes"]);
    let twin = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "twin")
        .unwrap();
    let other = twin["versions"][1].clone();
    let kept = a.json(&["resolve", "notes", "twin", "--version", "2"]);
    let mut expected = other.clone();
    expected["id"] = json!("twin");
    assert_eq!(kept, expected);
    // A merge of the other pair.
    a.json(&[
        "resolve",
        "notes",
        "pair",
        "--record",
        r#"{"x": "a and b"}"#,
    ]);
    assert_eq!(a.json(&["conflicts", "notes"]), json!([]));
    eventually("the choices on B, without conflicts", || {
        let clear = b.json(&["conflicts", "notes"]) == json!([]);
        let twin = b.json(&["get", "notes", "twin"]);
        let pair = b.json(&["get", "notes", "pair"]);
        (clear && twin == expected && pair == json!({"id": "pair", "x": "a and b"})).then_some(())
    });
    a.stop();
    b.stop();
}

/// When a device last synced with another survives a restart (even one without the
/// mesh, when nothing can sync).
#[test]
fn last_sync_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a_home = dir.path().join("a");
    let a = spawn_node(&a_home, &[]);
    let b_home = dir.path().join("b");
    let b = join_and_spawn(&a, &b_home);
    let b_peer = b.peer_id.clone();
    a.json(&["put", "notes", "n1", r#"{"text": "hello"}"#]);
    let synced = eventually("A has synced with B", || {
        let devices = a.json(&["devices"]);
        let entry = devices
            .as_array()?
            .iter()
            .find(|d| d["id"] == b_peer.as_str())?
            .clone();
        entry["last_sync"].as_u64()
    });
    b.stop();
    a.stop();
    let alone = spawn_node(&a_home, &["--no-mesh"]);
    let devices = alone.json(&["devices"]);
    let entry = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == b_peer.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["online"], false);
    let recorded = entry["last_sync"]
        .as_u64()
        .expect("a last sync after the restart");
    // Written at most every 30 s while syncing: never newer than what A showed, never
    // more than that much older.
    assert!(
        recorded <= synced && synced - recorded <= 31,
        "recorded {recorded}, shown before {synced}"
    );
    alone.stop();
}

/// A blob keeps the name and type it was stored with (the CLI takes them from the
/// file), `blob ls` lists it on both devices, and `blob rm` removes it everywhere: its
/// chunks are freed on both devices, while a large blob that is moving between them at
/// that moment arrives whole.
#[test]
fn blobs_have_names_and_removing_one_frees_it_on_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b_home = dir.path().join("b");
    let b = join_and_spawn(&a, &b_home);
    let pattern = |len: u32, seed: u32| -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    };
    let photo = dir.path().join("sunset at the lake.jpg");
    std::fs::write(&photo, pattern(300_000, 1)).unwrap();
    let put = a.json(&["blob", "put", photo.to_str().unwrap()]);
    assert_eq!(put["name"], "sunset at the lake.jpg", "{put}");
    assert_eq!(put["type"], "image/jpeg", "{put}");
    let photo_id = put["id"].as_str().unwrap().to_owned();
    let note = a.json(&["blob", "put", "-", "--name", "note.txt"]);
    assert_eq!(note["name"], "note.txt");

    let api = Api::new(&a);
    let got = api.send_raw(api.request(reqwest::Method::GET, &format!("/v1/blobs/{photo_id}")));
    assert_eq!(got.status, 200);
    assert_eq!(got.content_type.as_deref(), Some("image/jpeg"));
    let disposition = got.headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.contains("sunset%20at%20the%20lake.jpg"),
        "{disposition}"
    );
    assert_eq!(got.headers["x-content-type-options"], "nosniff");
    let (status, body) = api.send(
        api.request(reqwest::Method::POST, "/v1/blobs?name=../../etc/passwd")
            .body("x"),
    );
    assert_eq!(status, 400, "{body}");

    let listed_on = |node: &NodeProcess, id: &str| -> Option<serde_json::Value> {
        node.json(&["blob", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .cloned()
    };
    eventually("the photo reaches B with its name", || {
        listed_on(&b, &photo_id)
            .filter(|b| b["here"] == true && b["name"] == "sunset at the lake.jpg")
    });
    let text = String::from_utf8(b.run(&["blob", "ls"]).stdout).unwrap();
    assert!(
        text.contains("sunset at the lake.jpg") && text.contains("image/jpeg"),
        "{text}"
    );

    // A large blob starts moving to B; the photo is removed meanwhile.
    let big_content = pattern(24 << 20, 7);
    let big = dir.path().join("film.mkv");
    std::fs::write(&big, &big_content).unwrap();
    let big_id = a.json(&["blob", "put", big.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let chunks_on = |home: &std::path::Path| files_under(&home.join("blobs")).len();
    let before = chunks_on(&a.home);
    let removed = a.json(&["blob", "rm", &photo_id]);
    assert_eq!(removed["removed"], true);
    assert!(removed["chunks"].as_u64().unwrap() >= 1, "{removed}");
    assert_eq!(
        chunks_on(&a.home),
        before - removed["chunks"].as_u64().unwrap() as usize
    );
    assert!(listed_on(&a, &photo_id).is_none());
    let err = one_line_error(&a.run(&["blob", "rm", &photo_id]));
    assert!(err.contains("no blob"), "{err}");
    let err = one_line_error(&a.run(&["blob", "rm", "not-a-blob"]));
    assert!(err.contains("blob id"), "{err}");

    let out = dir.path().join("film-copy.mkv");
    eventually("the large blob reaches B whole", || {
        b.run(&[
            "blob",
            "get",
            &big_id,
            "-o",
            out.to_str().unwrap(),
            "--force",
        ])
        .status
        .success()
        .then_some(())
    });
    assert!(
        std::fs::read(&out).unwrap() == big_content,
        "the large blob arrived altered"
    );
    eventually("B drops the removed photo", || {
        (listed_on(&b, &photo_id).is_none() && chunks_on(&b_home) == chunks_on(&a.home))
            .then_some(())
    });
    let err = one_line_error(&b.run(&["blob", "get", &photo_id, "-o", "/tmp/never-written"]));
    assert!(err.contains("no blob"), "{err}");
    // Every blob still listed reads whole on A after both collections.
    let copy = dir.path().join("film-a.mkv");
    a.json(&["blob", "get", &big_id, "-o", copy.to_str().unwrap()]);
    assert!(std::fs::read(&copy).unwrap() == big_content);
    // A restart does not bring the photo back.
    b.stop();
    let b = spawn_node(&b_home, &[]);
    assert!(listed_on(&b, &photo_id).is_none());
    a.stop();
    b.stop();
}

/// A device removed from the vault is told (it was connected at the time): its status
/// and its log say so. A device that stops answering without closing its connections
/// (here: suspended with SIGSTOP) shows offline within seconds; one killed at once.
#[test]
fn a_removed_device_is_told_and_a_silent_one_shows_offline_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b = join_and_spawn(&a, &dir.path().join("b"));
    let c = join_and_spawn(&a, &dir.path().join("c"));
    let online = |node: &NodeProcess, peer: &str| -> bool {
        node.json(&["devices"])
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == peer && d["online"] == true)
    };
    eventually("B and C online on A", || {
        (online(&a, &b.peer_id) && online(&a, &c.peer_id)).then_some(())
    });

    a.json(&["devices", "remove", &b.peer_id[..12]]);
    let status = eventually("B learns it was removed", || {
        let status = b.json(&["status"]);
        status["removed_at"].as_u64().map(|_| status)
    });
    assert!(status["removed_at"].as_u64().unwrap() > 0);
    let text = String::from_utf8(b.run(&["status"]).stdout).unwrap();
    assert!(text.starts_with("REMOVED"), "{text}");
    eventually("B's log says so", || {
        b.stderr()
            .contains("this device was removed from the vault")
            .then_some(())
    });

    // Suspended: its sockets stay open, it answers nothing.
    c.signal("STOP");
    let stopped = std::time::Instant::now();
    eventually("C offline on A", || (!online(&a, &c.peer_id)).then_some(()));
    let took = stopped.elapsed();
    c.signal("CONT");
    assert!(
        took < std::time::Duration::from_secs(15),
        "C showed offline after {took:?}"
    );
    eventually("C back online", || online(&a, &c.peer_id).then_some(()));
    let c_id = c.peer_id.clone();
    c.kill9();
    let killed = std::time::Instant::now();
    eventually("C offline after a kill", || {
        (!online(&a, &c_id)).then_some(())
    });
    assert!(
        killed.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        killed.elapsed()
    );
    a.stop();
    b.stop();
}

/// Two devices each turn the same plain string into collaborative text while apart
/// (one runs without the mesh) and edit it: when they meet, both edits are kept, on
/// both devices, and nothing is left for a person to resolve.
#[test]
fn a_string_made_text_on_two_devices_apart_keeps_both_edits() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b_home = dir.path().join("b");
    let b = join_and_spawn(&a, &b_home);
    let edit = |node: &NodeProcess, at: usize, insert: &str| {
        let api = Api::new(node);
        let (status, body) = api.send(
            api.request(
                reqwest::Method::POST,
                "/v1/collections/notes/records/n1/text",
            )
            .json(&json!({"field": "body", "edits": [{"at": at, "insert": insert}]})),
        );
        assert_eq!(status, 200, "{body}");
    };
    let b = apart(
        &a,
        b,
        r#"{"body": "buy milk", "n": 1}"#,
        |a| edit(a, 0, "please "),
        |alone| edit(alone, 8, " and eggs"),
    );
    let expected = "please buy milk and eggs";
    for node in [&a, &b] {
        eventually("both edits on both devices", || {
            (node.json(&["get", "notes", "n1"])["body"] == expected).then_some(())
        });
    }
    assert_eq!(a.json(&["conflicts"]), json!([]));
    // Still one collaborative text: edits on both sides go on merging.
    edit(&a, 0, "1. ");
    // At the end of B's text as it is now (A's edit may be there already).
    let now = b.json(&["get", "notes", "n1"])["body"]
        .as_str()
        .unwrap()
        .chars()
        .count();
    edit(&b, now, "!");
    for node in [&a, &b] {
        eventually("the next edits on both devices", || {
            (node.json(&["get", "notes", "n1"])["body"] == "1. please buy milk and eggs!")
                .then_some(())
        });
    }
    a.stop();
    b.stop();
}

/// At the default log level the log tells a person what happens (a device connected,
/// changes synced, a grant used for the first time, a revocation, a device gone) and
/// nothing of the libraries' internals.
#[test]
fn the_default_log_says_what_a_person_wants_to_know() {
    let dir = tempfile::tempdir().unwrap();
    // No RUST_LOG: the default level.
    let a = spawn_node_with_env(&dir.path().join("a"), &[], &[("RUST_LOG", "")]);
    let code = a.json(&["pair"])["code"].as_str().unwrap().to_owned();
    let b_home = dir.path().join("b");
    hearth_json(&b_home, &["join", &code]);
    let b = spawn_node_with_env(&b_home, &[], &[("RUST_LOG", "")]);
    a.json(&["put", "notes", "n1", r#"{"text":"hello"}"#]);
    eventually("n1 on B", || {
        b.run(&["get", "notes", "n1"])
            .status
            .success()
            .then_some(())
    });
    let token = a.json(&["grant", "reader", "--read", "notes"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let api = Api::new(&a);
    for _ in 0..2 {
        let (status, _) = api.send(
            api.raw(reqwest::Method::GET, "/v1/view/notes")
                .bearer_auth(&token),
        );
        assert_eq!(status, 200);
    }
    let grant = a.json(&["grants"])[0]["id"].as_str().unwrap().to_owned();
    a.json(&["revoke", &grant]);
    let b_id = b.peer_id.clone();
    let log_b = b.stop().stderr;
    assert!(
        log_b.contains("synced 1 change(s) from a device"),
        "B's log:\n{log_b}"
    );
    assert!(log_b.contains("device connected"), "B's log:\n{log_b}");
    eventually("B's departure in A's log", || {
        a.stderr().contains("device disconnected").then_some(())
    });
    let log_a = a.stop().stderr;
    for said in [
        "device connected",
        "a grant was used for the first time",
        "grant revoked",
        "device disconnected",
    ] {
        assert!(
            log_a.contains(said),
            "{said:?} missing from A's log:\n{log_a}"
        );
    }
    assert!(log_a.contains(&b_id));
    assert_eq!(
        log_a.matches("used for the first time").count(),
        1,
        "{log_a}"
    );
    for line in log_a.lines().chain(log_b.lines()) {
        assert!(
            line.contains("hearth"),
            "a line that is not Hearth's own at the default level: {line}"
        );
    }
}

/// A new device killed (SIGKILL) again and again while it receives a vault of 3,000
/// contacts, in 256 parts, comes back each time (its store and commit record agree:
/// no rollback refusal) and ends with exactly the first device's records.
#[test]
fn a_new_device_killed_during_its_first_sync_comes_back_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let cards: String = (0..3000)
        .map(|i| {
            format!(
                "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:kill-{i}\r\nFN:Person {i}\r\nEMAIL:p{i}@example.org\r\nNOTE:{}\r\nEND:VCARD\r\n",
                "a note to make the card longer ".repeat(4)
            )
        })
        .collect();
    let file = dir.path().join("cards.vcf");
    std::fs::write(&file, cards).unwrap();
    a.json(&["import", "contacts", file.to_str().unwrap()]);
    let api_a = Api::new(&a);
    let all = api_a
        .send(api_a.request(reqwest::Method::GET, "/v1/collections/contacts/records"))
        .1;
    assert_eq!(all.as_array().map(Vec::len), Some(3000));

    let b_home = dir.path().join("b");
    let mut b = join_and_spawn(&a, &b_home);
    let count = |node: &NodeProcess| {
        let api = Api::new(node);
        let (_, listed) = api.send(api.request(reqwest::Method::GET, "/v1/collections"));
        listed
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == "contacts"))
            .and_then(|c| c["records"].as_u64())
            .unwrap_or(0)
    };
    // Kill it as soon as it holds more records than before its last start (so each
    // kill lands while it receives), three times or until it has them all.
    let (mut mid_sync, mut before) = (0, 0);
    let b = loop {
        let held = eventually("the new device receives records", || {
            let held = count(&b);
            (held > before).then_some(held)
        });
        b.kill9();
        if held < 3000 {
            mid_sync += 1;
            before = held;
        }
        b = spawn_node(&b_home, &[]);
        if held == 3000 || mid_sync == 3 {
            break b;
        }
    };
    eprintln!("{mid_sync} kill(s) in the middle of the sync");
    assert!(mid_sync > 0, "no kill came in the middle of the sync");
    let api_b = Api::new(&b);
    eventually("the new device has every record", || {
        let on_b = api_b
            .send(api_b.request(reqwest::Method::GET, "/v1/collections/contacts/records"))
            .1;
        (on_b == all).then_some(())
    });
    b.stop();
    a.stop();
}
