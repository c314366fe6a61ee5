//! The shared helper of the process-level tests: real `hearth` processes on 127.0.0.1,
//! each in its own temporary HOME, driven through the CLI and the HTTP API. Waits are
//! on conditions with deadlines, never bare sleeps.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any one wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The `hearth` binary: `$HEARTH_BIN`, else `target/<profile>/hearth` beside this test.
pub fn hearth_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HEARTH_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join("hearth");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p hearth-cli` or run `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// Runs `hearth` with `args` (give `--home` yourself), without inherited Hearth variables.
pub fn hearth(args: &[&str]) -> Output {
    hearth_with_env(args, &[])
}

pub fn hearth_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(hearth_bin());
    cmd.args(args)
        .env_remove("HEARTH_HOME")
        .env_remove("HEARTH_PASSPHRASE")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run hearth")
}

/// Runs `hearth --home HOME --json ARGS`, asserts success, and parses stdout.
pub fn hearth_json(home: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--home", home.to_str().expect("utf-8 path"), "--json"];
    all.extend_from_slice(args);
    let out = hearth(&all);
    assert!(
        out.status.success(),
        "hearth {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hearth {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Asserts a failed run with exactly one line on stderr, and returns that line.
pub fn one_line_error(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert_eq!(err.lines().count(), 1, "one line on stderr, got: {err:?}");
    assert!(!err.is_empty());
    err
}

/// A running `hearth up` process.
pub struct NodeProcess {
    pub home: PathBuf,
    pub api_addr: String,
    pub peer_id: String,
    child: Option<Child>,
}

/// Starts `hearth up` on `home` (loopback API on a free port, no mDNS, mesh on
/// 127.0.0.1 only) and waits until it serves.
pub fn spawn_node(home: &Path, extra: &[&str]) -> NodeProcess {
    spawn_node_with_env(home, extra, &[])
}

pub fn spawn_node_with_env(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> NodeProcess {
    let mut cmd = Command::new(hearth_bin());
    cmd.args([
        "--home",
        home.to_str().expect("utf-8 path"),
        "--json",
        "up",
        "--api",
        "127.0.0.1:0",
        "--no-mdns",
    ])
    .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
    .args(extra)
    .env_remove("HEARTH_HOME")
    .env_remove("HEARTH_PASSPHRASE")
    .env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn hearth up");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(DEADLINE) {
        Ok(line) if !line.trim().is_empty() => line,
        _ => {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "hearth up did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let ready: Value = serde_json::from_str(&line).expect("hearth up --json prints one JSON line");
    NodeProcess {
        home: home.to_path_buf(),
        api_addr: ready["api_addr"].as_str().expect("api_addr").to_owned(),
        peer_id: ready["peer_id"].as_str().expect("peer_id").to_owned(),
        child: Some(child),
    }
}

/// Starts `n` nodes, each on its own vault, in HOMEs under `dir`.
pub fn spawn_nodes(dir: &Path, n: usize) -> Vec<NodeProcess> {
    (0..n)
        .map(|i| spawn_node(&dir.join(format!("node{i}")), &[]))
        .collect()
}

impl NodeProcess {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    pub fn owner_token(&self) -> String {
        std::fs::read_to_string(self.home.join("owner.token"))
            .expect("owner.token")
            .trim()
            .to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait for a clean exit (status 0).
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
                }
                assert!(status.success(), "hearth up exited with {status}: {err}");
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "hearth up did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// `hearth --home HOME --json ARGS` against this node.
    pub fn json(&self, args: &[&str]) -> Value {
        hearth_json(&self.home, args)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--home", self.home.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        hearth(&all)
    }

    /// The node's mesh addresses with its PeerId, for `--peer`.
    pub fn mesh_addrs(&self) -> Vec<String> {
        let status = self.json(&["status"]);
        status["listen_addrs"]
            .as_array()
            .expect("listen_addrs")
            .iter()
            .map(|a| format!("{}/p2p/{}", a.as_str().expect("string"), self.peer_id))
            .collect()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `check` returns `Some`, or panics naming `what` after [`DEADLINE`].
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A blocking HTTP client with the node's owner token.
pub struct Api {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(node: &NodeProcess) -> Self {
        Self {
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
            base: node.base_url(),
            token: node.owner_token(),
        }
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::blocking::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    pub fn raw(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends and returns (status, JSON body or Null).
    pub fn send(&self, request: reqwest::blocking::RequestBuilder) -> (u16, Value) {
        let response = request.send().expect("the node answers");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
