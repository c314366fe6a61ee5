//! Secrets never reach the logs: two devices run at trace level through pairing, sync,
//! a grant, a view, a revocation and the audit log, and every byte they log is searched
//! for the owner tokens, the grant token, the passphrase, the invite code and record
//! contents.

use hearth_tests::*;
use reqwest::Method;
use serde_json::json;

const TRACE: &[(&str, &str)] = &[("RUST_LOG", "trace")];

/// Pieces of `secret` long enough to identify it: a log holding any of them has leaked
/// it, even cut up or wrapped.
fn pieces(secret: &str) -> Vec<&str> {
    const PIECE: usize = 16;
    if secret.len() <= PIECE {
        return vec![secret];
    }
    (0..=secret.len() - PIECE)
        .step_by(4)
        .map(|i| &secret[i..i + PIECE])
        .collect()
}

#[test]
fn a_full_run_at_trace_level_logs_no_secret() {
    let t = TestHome::new();
    let passphrase = format!("pass-{}-phrase", std::process::id());
    let passphrase_file = t.file("passphrase", &passphrase);
    let passphrase_arg = passphrase_file.to_str().unwrap();
    let marker = format!("RecordSecretMarker{}", std::process::id());

    let a = spawn_node_with_env(t.path(), &["--passphrase-file", passphrase_arg], TRACE);
    let api = Api::new(&a);
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/collections/notes/records/n1")
            .json(&json!({"text": marker, "title": "plain"})),
    );
    assert_eq!(status, 201);

    // A second device, paired and syncing, also at trace level.
    let invite = a.json(&["pair"]);
    let code = invite["code"].as_str().unwrap().to_owned();
    let b_home = t.dir().join("b");
    let joined = hearth_with_env(
        &["--home", b_home.to_str().unwrap(), "--json", "join", &code],
        TRACE,
    );
    assert!(joined.status.success(), "{}", one_line_error(&joined));
    let b = spawn_node_with_env(&b_home, &[], TRACE);
    eventually("the record on B", || {
        b.run(&["get", "notes", "n1"])
            .status
            .success()
            .then_some(())
    });

    // A service reads the record through a grant, then is revoked.
    let (status, grant) = api.send(
        api.request(Method::POST, "/v1/grants")
            .json(&json!({"service": "reader", "read": "notes"})),
    );
    assert_eq!(status, 201, "{grant}");
    let token = grant["token"].as_str().unwrap().to_owned();
    let view = api.send_raw(api.raw(Method::GET, "/v1/view/notes").bearer_auth(&token));
    assert_eq!(view.status, 200);
    // The marker really went through the node (so its absence from the logs means
    // something).
    assert!(contains_bytes(&view.body, marker.as_bytes()));
    let id = grant["id"].as_str().unwrap();
    let (status, _) = api.send(api.request(Method::POST, &format!("/v1/grants/{id}/revoke")));
    assert_eq!(status, 200);
    let refused = api.send_raw(api.raw(Method::GET, "/v1/view/notes").bearer_auth(&token));
    assert_eq!(refused.status, 403);
    let (status, audit) = api.send(api.request(Method::GET, "/v1/audit/verify"));
    assert_eq!((status, audit["ok"].clone()), (200, json!(true)));

    let secrets = [
        ("A's owner token", a.owner_token()),
        ("B's owner token", b.owner_token()),
        ("the grant token", token.clone()),
        ("the passphrase", passphrase.clone()),
        ("the invite code", code.clone()),
        ("a record's content", marker.clone()),
    ];
    let mut logs = Vec::new();
    logs.extend_from_slice(&joined.stderr);
    let (a_out, b_out) = (a.stop(), b.stop());
    logs.extend_from_slice(a_out.stderr.as_bytes());
    logs.extend_from_slice(b_out.stderr.as_bytes());
    let logs = String::from_utf8_lossy(&logs).into_owned();
    // Trace level was really on, on both devices, through sync.
    assert!(
        logs.matches("TRACE").count() > 100,
        "few trace lines:\n{logs}"
    );
    assert!(logs.len() > 50_000, "only {} bytes of logs", logs.len());
    for (what, secret) in &secrets {
        for piece in pieces(secret) {
            if let Some(at) = logs.find(piece) {
                let start = logs[..at].rfind('\n').map_or(0, |n| n + 1);
                let end = logs[at..].find('\n').map_or(logs.len(), |n| at + n);
                panic!("{what} is in the logs: {}", &logs[start..end]);
            }
        }
    }
}
