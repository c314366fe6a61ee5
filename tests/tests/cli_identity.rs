//! After a crash `HOME/api.addr` may name a port that another local process now holds.
//! The CLI must learn that it talks to this HOME's node before it presents the owner
//! token: a stranger on the port never sees it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use hearth_tests::*;

/// A process squatting on a port: answers every request with `answer` and keeps what
/// it was sent.
fn squatter(answer: &'static str) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(300)));
            let mut buf = [0u8; 65536];
            let mut got = Vec::new();
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            keep.lock().unwrap().extend_from_slice(&got);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (addr, seen)
}

#[test]
fn the_owner_token_goes_only_to_this_homes_node() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let token = node.owner_token();
    node.kill9();
    for answer in [
        r#"{"proof": "0000000000000000000000000000000000000000000000000000000000000000"}"#,
        r#"{"error": {"code": "not_found", "message": "no"}}"#,
        r#"[]"#,
    ] {
        let (addr, seen) = squatter(answer);
        std::fs::write(t.path().join("api.addr"), format!("{addr}\n")).unwrap();
        let out = cli(t.path(), &["status"]);
        let err = one_line_error(&out);
        assert!(err.contains("not the node of"), "{err}");
        let seen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        assert!(
            seen.contains("/v1/hello"),
            "the CLI asked for a proof first: {seen}"
        );
        assert!(!seen.contains(&token), "the squatter saw the owner token");
        assert!(
            !seen.to_ascii_lowercase().contains("authorization"),
            "{seen}"
        );
    }
    // The real node proves itself and the CLI works as usual.
    let node = spawn_node(t.path(), &[]);
    assert!(cli_json(t.path(), &["status"])["peer_id"].is_string());
    node.stop();
}
