//! A hostile HTTP client can close its own connection, never the node: garbage bytes,
//! a huge head, a client that sends its head slowly, and more connections than the
//! node serves at once. After each, the node still answers a real request, and its
//! threads and memory stay bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hearth_tests::*;
use reqwest::Method;

fn proc_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Sends `bytes` and returns whatever comes back until the node closes or 15 s pass.
fn exchange(addr: &str, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    // The node may close before taking everything: that is an answer too.
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (answer, started.elapsed())
}

fn healthy(api: &Api) {
    let (status, body) = api.send(api.request(Method::GET, "/v1/status"));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn garbage_huge_heads_slow_clients_and_floods_do_not_stop_the_node() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &["--no-mesh"]);
    let api = Api::new(&node);
    let addr = node.base_url().trim_start_matches("http://").to_owned();
    healthy(&api);
    let threads_before = proc_field(node.pid(), "Threads:");

    // Bytes that are not HTTP: a 400 and the connection closed.
    let (answer, _) = exchange(&addr, b"\x00\x01\x02garbage\xff\xfe\r\n\r\n");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    healthy(&api);

    // A 1 MB head: refused (431) or cut off, never read into memory whole.
    let mut huge = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let (answer, _) = exchange(&addr, &huge);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    healthy(&api);

    // A body far over the record limit: 413, the node reads no further than the limit.
    let (status, body) = api.send(
        api.request(Method::PUT, "/v1/collections/c/records/r")
            .header("content-type", "application/json")
            .body(vec![b' '; 3 * 1024 * 1024]),
    );
    assert_eq!(status, 413, "{body}");

    // A slow client that never finishes its head is disconnected.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "a client that never finished its head was kept {waited:?}"
    );
    healthy(&api);

    // More idle connections than the node serves at once: it stays up, bounded, and
    // a real request is answered once idle ones time out.
    let idle: Vec<TcpStream> = (0..520)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let threads_during = proc_field(node.pid(), "Threads:");
    assert!(
        threads_during <= threads_before + 8,
        "threads grew from {threads_before} to {threads_during} with idle connections"
    );
    let started = Instant::now();
    healthy(&api);
    assert!(started.elapsed() < Duration::from_secs(25));
    drop(idle);
    healthy(&api);
    node.stop();
}
