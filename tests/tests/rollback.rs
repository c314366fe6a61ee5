//! A store that goes back in time is refused, not silently trusted: restoring an older
//! copy of `store/`, truncating sled's log, or flipping a bit at its tail would
//! otherwise bring a revoked grant back to life with `audit --verify` still passing.
//! `hearth up --accept-rollback` is the documented way out.

use std::path::Path;

use hearth_tests::*;
use reqwest::Method;

/// A node with a grant and a record; returns the grant's id and token.
fn grant_and_stop(home: &Path) -> (String, String) {
    let node = spawn_node(home, &[]);
    node.json(&["put", "notes", "n1", r#"{"text": "hello"}"#]);
    let grant = node.json(&["grant", "reader", "--read", "notes"]);
    let id = grant["id"].as_str().unwrap().to_owned();
    let token = grant["token"].as_str().unwrap().to_owned();
    let api = Api::new(&node);
    assert_eq!(
        api.send(api.raw(Method::GET, "/v1/view/notes").bearer_auth(&token))
            .0,
        200
    );
    node.stop();
    (id, token)
}

fn revoke(home: &Path, id: &str) {
    let node = spawn_node(home, &[]);
    node.json(&["revoke", id]);
    node.stop();
}

#[test]
fn an_older_copy_of_the_store_is_refused_until_accepted() {
    let t = TestHome::new();
    let home = t.path();
    let (id, token) = grant_and_stop(home);
    let saved = t.dir().join("store-before-revocation");
    copy_dir(&home.join("store"), &saved);
    revoke(home, &id);

    std::fs::remove_dir_all(home.join("store")).unwrap();
    copy_dir(&saved, &home.join("store"));
    let refused = up_refused(home, &[]);
    assert!(refused.contains("went back in time"), "{refused}");
    assert!(refused.contains("--accept-rollback"), "{refused}");

    // The way out: accepted on purpose, the node starts with what the copy holds (with
    // no other device, the revocation is gone: the owner asked for exactly this).
    let node = spawn_node(home, &["--accept-rollback"]);
    let api = Api::new(&node);
    assert_eq!(
        api.send(api.raw(Method::GET, "/v1/view/notes").bearer_auth(&token))
            .0,
        200
    );
    assert_eq!(node.json(&["audit", "--verify"])["ok"], true);
    node.json(&["revoke", &id]);
    node.stop();
    // From then on it starts as usual, and the revocation holds.
    let node = spawn_node(home, &[]);
    let api = Api::new(&node);
    assert_eq!(
        api.send(api.raw(Method::GET, "/v1/view/notes").bearer_auth(&token))
            .0,
        403
    );
    node.stop();
}

/// Where the log's written part ends: sled pre-allocates its segments with zeros.
fn end_of_log(log: &[u8]) -> usize {
    log.iter()
        .rposition(|&b| b != 0)
        .expect("the log holds something")
        + 1
}

#[test]
fn a_damaged_or_truncated_log_tail_is_refused() {
    for damage in ["flip", "truncate"] {
        let t = TestHome::new();
        let home = t.path();
        let (id, _) = grant_and_stop(home);
        let log = home.join("store").join("db");
        let before = end_of_log(&std::fs::read(&log).unwrap());
        revoke(home, &id);
        let after = std::fs::read(&log).unwrap();
        // The revocation's commit is the last thing written to the log.
        let end = end_of_log(&after);
        assert!(
            end > before,
            "the revocation was written after the earlier end of the log"
        );
        let tail = end - 8;
        match damage {
            "flip" => {
                let mut damaged = after.clone();
                damaged[tail] ^= 0x20;
                std::fs::write(&log, damaged).unwrap();
            }
            _ => {
                let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
                file.set_len(tail as u64).unwrap();
            }
        }
        let refused = up_refused(home, &[]);
        assert!(
            refused.contains("went back in time") || refused.contains("corrupt"),
            "{damage}: {refused}"
        );
    }
}

#[test]
fn a_missing_or_damaged_commit_record_is_refused() {
    let t = TestHome::new();
    let home = t.path();
    grant_and_stop(home);
    for name in ["commit.0", "commit.1"] {
        let _ = std::fs::remove_file(home.join(name));
    }
    let refused = up_refused(home, &[]);
    assert!(refused.contains("commit record"), "{refused}");
    assert!(refused.contains("missing"), "{refused}");

    let t = TestHome::new();
    let home = t.path();
    grant_and_stop(home);
    for name in ["commit.0", "commit.1"] {
        if let Ok(mut bytes) = std::fs::read(home.join(name)) {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            std::fs::write(home.join(name), bytes).unwrap();
        }
    }
    let refused = up_refused(home, &[]);
    assert!(refused.contains("damaged"), "{refused}");
}
