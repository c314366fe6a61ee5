//! Storage faults injected under the store (write error, full disk, failed fsync): the
//! node refuses the write with a clear error, never acknowledges it, and what was
//! stored before stays intact, across a restart.

use std::collections::BTreeMap;
use std::path::Path;

use hearth_node::store::Fault;
use hearth_node::{Node, NodeConfig, NodeHandle};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

async fn start(home: &Path) -> NodeHandle {
    let mut config = NodeConfig::new(home);
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    config.mesh = None;
    Node::start(config).await.unwrap()
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(node: &NodeHandle) -> Self {
        Self {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: format!("http://{}", node.api_addr()),
            token: std::fs::read_to_string(node.home().join("owner.token"))
                .unwrap()
                .trim()
                .to_owned(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    async fn put(&self, id: &str, record: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::PUT,
            &format!("/v1/collections/notes/records/{id}"),
            Some(record),
        )
        .await
    }

    async fn get(&self, id: &str) -> Option<Value> {
        let (status, body) = self
            .send(
                reqwest::Method::GET,
                &format!("/v1/collections/notes/records/{id}"),
                None,
            )
            .await;
        match status {
            200 => Some(body),
            404 => None,
            other => panic!("reading {id}: {other} {body}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_or_a_write_error_refuses_the_write_and_keeps_what_was_stored() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let api = Client::new(&node);
    assert_eq!(api.put("n1", json!({"v": 1})).await.0, 201);
    let faults = node.vault().store().faults().clone();

    faults.inject(Fault::DiskFull);
    let (status, body) = api.put("n1", json!({"v": 2})).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk is full")
    );
    let (status, body) = api.put("n2", json!({"v": 1})).await;
    assert_eq!(status, 507, "{body}");
    let blob = api
        .http
        .post(format!("{}/v1/blobs", api.base))
        .bearer_auth(&api.token)
        .body(vec![7u8; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status().as_u16(), 507);
    // Nothing half-done is visible.
    assert_eq!(api.get("n1").await, Some(json!({"id": "n1", "v": 1})));
    assert_eq!(api.get("n2").await, None);
    let (_, blobs) = api.send(reqwest::Method::GET, "/v1/blobs", None).await;
    assert_eq!(blobs, json!([]));

    faults.inject(Fault::WriteError);
    let (status, body) = api.put("n1", json!({"v": 3})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "storage");
    assert_eq!(api.get("n1").await, Some(json!({"id": "n1", "v": 1})));

    // Space is back: writes work again, and a restart shows exactly what was acknowledged.
    faults.clear();
    assert_eq!(api.put("n2", json!({"v": 2})).await.0, 201);
    node.shutdown().await.unwrap();
    let node = start(dir.path()).await;
    let api = Client::new(&node);
    assert_eq!(api.get("n1").await, Some(json!({"id": "n1", "v": 1})));
    assert_eq!(api.get("n2").await, Some(json!({"id": "n2", "v": 2})));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_fsync_nothing_more_is_acknowledged_until_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let api = Client::new(&node);
    assert_eq!(api.put("n1", json!({"v": 1})).await.0, 201);
    let faults = node.vault().store().faults().clone();

    faults.inject(Fault::FlushError);
    let (status, body) = api.put("n1", json!({"v": 2})).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restart"),
        "{body}"
    );
    // The failure sticks, even once the fault is gone: the kernel may have dropped
    // what it could not write, so later flushes prove nothing.
    faults.clear();
    let (status, body) = api.put("n3", json!({"v": 1})).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restart"),
        "{body}"
    );
    node.shutdown().await.ok();

    let node = start(dir.path()).await;
    let api = Client::new(&node);
    // The unacknowledged write may or may not have reached the disk; whole either way.
    let n1 = api.get("n1").await.unwrap();
    assert!(
        n1 == json!({"id": "n1", "v": 1}) || n1 == json!({"id": "n1", "v": 2}),
        "{n1}"
    );
    assert_eq!(api.put("n3", json!({"v": 2})).await.0, 201);
    node.shutdown().await.unwrap();
}

/// Random writes with write faults switched on and off at random (past compaction):
/// after every answer the record reads as the model of acknowledged writes says, and
/// after a restart every acknowledged record is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_write_faults_never_lose_or_alter_acknowledged_records() {
    let seed: u64 = std::env::var("HEARTH_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let api = Client::new(&node);
    let faults = node.vault().store().faults().clone();
    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    let (mut refused, mut acknowledged) = (0, 0);
    for step in 0..600 {
        match rng.gen_range(0..20) {
            0 => faults.inject(Fault::DiskFull),
            1 => faults.inject(Fault::WriteError),
            2..=4 => faults.clear(),
            _ => {}
        }
        let id = format!("r{}", rng.gen_range(0..8));
        let record = json!({"step": step, "pad": "x".repeat(rng.gen_range(0..300))});
        let (status, body) = api.put(&id, record.clone()).await;
        match status {
            200 | 201 => {
                acknowledged += 1;
                let mut stored = record;
                stored["id"] = json!(id);
                model.insert(id.clone(), stored);
            }
            500 | 507 => refused += 1,
            other => panic!("seed {seed}, step {step}: {other} {body}"),
        }
        assert_eq!(
            api.get(&id).await.as_ref(),
            model.get(&id),
            "seed {seed}, step {step}: record {id}"
        );
    }
    // Faults are on ~40% of the steps (injected at 10%, cleared at 15% a step), so
    // about 360 of 600 are acknowledged, but runs of faults vary: seed
    // 12076830325031679789 acknowledges 293. Both paths taken, many times, is the point.
    assert!(
        refused > 50 && acknowledged > 150,
        "seed {seed}: {refused} refused, {acknowledged} acknowledged"
    );
    faults.clear();
    node.shutdown().await.unwrap();
    let node = start(dir.path()).await;
    let api = Client::new(&node);
    for (id, record) in &model {
        assert_eq!(
            api.get(id).await.as_ref(),
            Some(record),
            "seed {seed}: {id} after restart"
        );
    }
    node.shutdown().await.unwrap();
}

/// A real full disk: the vault on a small tmpfs, filled with blobs until the kernel
/// answers ENOSPC. Mounting needs root, so it is ignored by default (reported as such,
/// never as passed); `.ci/run` runs it with `--ignored` where it runs as root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (mounts a tmpfs); run as root with --ignored"]
async fn a_real_full_disk_is_refused_cleanly_and_what_was_stored_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(dir.path())
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        other => panic!("cannot mount a tmpfs here ({other:?}); this test needs root"),
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(dir.path());
    let home = dir.path().join("vault");
    let node = start(&home).await;
    let api = Client::new(&node);
    assert_eq!(
        api.put("kept", json!({"v": "before the disk filled"}))
            .await
            .0,
        201
    );
    let mut full = None;
    for i in 0..40u32 {
        let bytes: Vec<u8> = (0..1024 * 1024u32)
            .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 7) as u8)
            .collect();
        let answer = api
            .http
            .post(format!("{}/v1/blobs", api.base))
            .bearer_auth(&api.token)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        if status != 201 {
            full = Some((
                i,
                status,
                answer.json::<Value>().await.unwrap_or(Value::Null),
            ));
            break;
        }
    }
    let (after, status, body) = full.expect("24 MiB of tmpfs never filled");
    eprintln!("the disk filled after {after} blobs of 1 MiB: {status} {body}");
    assert!(
        status == 507 || status == 500,
        "a full disk answered {status}: {body}"
    );
    assert!(body["error"]["code"].is_string(), "{body}");
    // What was acknowledged is still served, and the node still answers.
    assert_eq!(
        api.get("kept").await,
        Some(json!({"id": "kept", "v": "before the disk filled"}))
    );
    let (status, _) = api.send(reqwest::Method::GET, "/v1/status", None).await;
    assert_eq!(status, 200);
    node.shutdown().await.ok();
    // The vault reopens on the full disk, with everything acknowledged.
    let node = start(&home).await;
    let api = Client::new(&node);
    assert_eq!(
        api.get("kept").await,
        Some(json!({"id": "kept", "v": "before the disk filled"}))
    );
    let (_, blobs) = api.send(reqwest::Method::GET, "/v1/blobs", None).await;
    assert_eq!(
        blobs.as_array().map(Vec::len),
        Some(after as usize),
        "{blobs}"
    );
    node.shutdown().await.ok();
}
