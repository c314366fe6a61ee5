//! The shared helper of the process-level tests: real `hearth` processes on 127.0.0.1,
//! each in its own temporary HOME, driven through the CLI and the HTTP API. Waits are
//! on conditions with deadlines, never bare sleeps; a process that hangs fails the test
//! with what it printed instead of hanging the suite.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod natlab;
pub mod netns;
pub mod torture;

/// How long any one wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The `hearth` binary: `$HEARTH_BIN`, else `target/<profile>/hearth` beside this test
/// (in `target/<profile>/deps`) or beside this tool (`hearth-bench`).
pub fn hearth_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HEARTH_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    if let Some(beside) = exe.parent().map(|dir| dir.join("hearth"))
        && beside.is_file()
    {
        return beside;
    }
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

/// A temporary directory holding a HOME (`dir/vault`, not created: `init` or `up`
/// makes it) and room beside it for passphrase files, inputs and outputs.
pub struct TestHome {
    dir: tempfile::TempDir,
    home: PathBuf,
}

impl TestHome {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let home = dir.path().join("vault");
        Self { dir, home }
    }

    /// The HOME itself.
    pub fn path(&self) -> &Path {
        &self.home
    }

    /// The HOME as a string, for argument lists.
    pub fn as_str(&self) -> &str {
        self.home.to_str().expect("temporary paths are UTF-8")
    }

    /// The directory around HOME, for files that are not the vault's.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name` beside HOME and returns its path.
    pub fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }
}

impl Default for TestHome {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `cmd` to completion (stdin from `stdin`, or empty), failing the test if it
/// takes longer than [`DEADLINE`].
pub fn run_with_deadline(mut cmd: Command, stdin: Option<Vec<u8>>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run hearth");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        // A writer thread: a child that does not read its stdin must not block us.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("collect hearth's output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let output = rx.recv_timeout(DEADLINE).ok().and_then(Result::ok);
            panic!(
                "{cmd:?} did not finish within {DEADLINE:?}; stderr: {}",
                output
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            );
        }
    }
}

fn hearth_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(hearth_bin());
    cmd.args(args)
        .env_remove("HEARTH_HOME")
        .env_remove("HEARTH_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `hearth` with `args` (give `--home` yourself), without inherited Hearth variables.
pub fn hearth(args: &[&str]) -> Output {
    hearth_with_env(args, &[])
}

pub fn hearth_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_with_deadline(hearth_command(args, env), None)
}

/// Runs `hearth` with `args`, feeding `input` on stdin.
pub fn hearth_with_stdin(args: &[&str], input: &[u8]) -> Output {
    run_with_deadline(hearth_command(args, &[]), Some(input.to_vec()))
}

/// Runs `hearth --home HOME ARGS`.
pub fn cli(home: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--home", home.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    hearth(&all)
}

/// Runs `hearth --home HOME --json ARGS`, asserts success, and parses stdout.
pub fn cli_json(home: &Path, args: &[&str]) -> Value {
    hearth_json(home, args)
}

/// Runs `hearth --home HOME --json ARGS`, asserts success, and parses stdout.
pub fn hearth_json(home: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--home", home.to_str().expect("utf-8 path"), "--json"];
    all.extend_from_slice(args);
    parse_json_output(args, &hearth(&all))
}

/// Asserts `out` is a success that printed one JSON value, and returns it.
pub fn parse_json_output(what: &[&str], out: &Output) -> Value {
    assert!(
        out.status.success(),
        "hearth {what:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hearth {what:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Asserts a failed run with exactly one non-empty line on stderr, and returns that line.
pub fn one_line_error(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert_eq!(err.lines().count(), 1, "one line on stderr, got: {err:?}");
    assert!(!err.trim().is_empty(), "an empty line on stderr");
    err
}

/// A running `hearth up` process. Dropping it SIGKILLs the process.
pub struct NodeProcess {
    pub home: PathBuf,
    pub api_addr: String,
    pub peer_id: String,
    child: Option<Child>,
    /// Everything the process printed after its ready line, and on stderr.
    stdout_rest: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pipes_closed: mpsc::Receiver<()>,
}

/// The short name the brief uses.
pub type Node = NodeProcess;

/// What a node printed in its life, after it exited.
#[derive(Debug)]
pub struct Exited {
    /// What came on stdout after the ready line.
    pub stdout_rest: String,
    pub stderr: String,
}

/// Starts `hearth up` on `home` (loopback API on a free port, no mDNS, mesh on
/// 127.0.0.1 only) and waits until it serves.
pub fn spawn_node(home: &Path, extra: &[&str]) -> NodeProcess {
    spawn_node_with_env(home, extra, &[])
}

pub fn spawn_node_with_env(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> NodeProcess {
    spawn_node_wrapped(&[], home, extra, env)
}

/// Like [`spawn_node_with_env`], run through `wrapper` (e.g. `ip netns exec NS`).
pub fn spawn_node_wrapped(
    wrapper: &[&str],
    home: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> NodeProcess {
    let mut args = vec!["up", "--api", "127.0.0.1:0", "--no-mdns"];
    args.extend_from_slice(extra);
    let mut cmd = process_command(wrapper, home, &args, "warn");
    cmd.env_remove("HEARTH_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_ready(cmd, home)
}

/// `hearth --home HOME --json ARGS` (run through `wrapper`), listening on 127.0.0.1
/// only unless `args` gives `--listen`, logging at `RUST_LOG` or else `log`.
fn process_command(wrapper: &[&str], home: &Path, args: &[&str], log: &str) -> Command {
    let bin = hearth_bin();
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(&bin);
            cmd
        }
        None => Command::new(&bin),
    };
    cmd.args(["--home", home.to_str().expect("utf-8 path"), "--json"])
        .args(args)
        // A process given its own --listen listens only there (a device reachable
        // only through a relay has no address of its own).
        .args(if args.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "/ip4/127.0.0.1/tcp/0"][..]
        })
        .env_remove("HEARTH_HOME")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| log.into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Starts `hearth host` (a backup host) on `home`: loopback API on a free port, and
/// unless `extra` says where, listening on 127.0.0.1 only.
pub fn spawn_host(home: &Path, extra: &[&str]) -> NodeProcess {
    let mut args = vec!["host", "--api", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    spawn_ready(
        process_command(&[], home, &args, "warn,hearth_node=debug"),
        home,
    )
}

/// Spawns `cmd` (a `hearth up` or `hearth host` with `--json`) and waits for its ready
/// line.
fn spawn_ready(mut cmd: Command, home: &Path) -> NodeProcess {
    let mut child = cmd.spawn().expect("spawn hearth up");

    // Both pipes are drained for the whole life of the process: a full pipe would
    // block the node, and a closed one would make its next print fail.
    let (closed_tx, pipes_closed) = mpsc::channel();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    {
        let mut pipe = child.stderr.take().expect("piped stderr");
        let stderr = stderr.clone();
        let closed_tx = closed_tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                stderr
                    .lock()
                    .expect("stderr buffer")
                    .extend_from_slice(&buf[..n]);
            }
            let _ = closed_tx.send(());
        });
    }
    let stdout_rest = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    {
        let stdout = child.stdout.take().expect("piped stdout");
        let rest = stdout_rest.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = ready_tx.send(line);
            let _ = reader.read_to_end(&mut rest.lock().expect("stdout buffer"));
            let _ = closed_tx.send(());
        });
    }

    let line = match ready_rx.recv_timeout(DEADLINE) {
        Ok(line) if !line.trim().is_empty() => line,
        outcome => {
            let _ = child.kill();
            let status = child.wait().expect("reap hearth up");
            // Both pipes close once the process is gone.
            let _ = pipes_closed.recv_timeout(Duration::from_secs(5));
            let _ = pipes_closed.recv_timeout(Duration::from_secs(5));
            panic!(
                "hearth up on {} did not start ({}; {status}); stderr: {}",
                home.display(),
                if outcome.is_ok() {
                    "it exited without a ready line"
                } else {
                    "no ready line in time"
                },
                String::from_utf8_lossy(&stderr.lock().expect("stderr buffer"))
            );
        }
    };
    let ready: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("hearth up --json printed {line:?}, not one JSON line: {e}"));
    let api_addr = ready["api_addr"]
        .as_str()
        .unwrap_or_else(|| panic!("no api_addr in the ready line {ready}"))
        .to_owned();
    let peer_id = ready["peer_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no peer_id in the ready line {ready}"))
        .to_owned();
    NodeProcess {
        home: home.to_path_buf(),
        api_addr,
        peer_id,
        child: Some(child),
        stdout_rest,
        stderr,
        pipes_closed,
    }
}

/// A second device of `inviter`'s vault: paired with a fresh invite, joined in the
/// empty `home`, and started.
pub fn join_and_spawn(inviter: &NodeProcess, home: &Path) -> NodeProcess {
    let code = inviter.json(&["pair"])["code"]
        .as_str()
        .expect("an invite code")
        .to_owned();
    let joined = hearth_json(home, &["join", &code]);
    assert_eq!(joined["inviter"], inviter.peer_id.as_str());
    spawn_node(home, &[])
}

/// Grants `service` what `args` say, with an app password: (the grant's id, the
/// password).
pub fn grant_app_password(node: &NodeProcess, service: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["grant", service];
    all.extend_from_slice(args);
    all.push("--app-password");
    let g = node.json(&all);
    (
        g["id"].as_str().expect("a grant id").to_owned(),
        g["password"].as_str().expect("an app password").to_owned(),
    )
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

    /// Sends the process a signal (`"HUP"`, `"STOP"`, `"CONT"`…).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{name} failed");
    }

    /// What the node has printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer")).into_owned()
    }

    /// SIGTERM, then wait for a clean exit: status 0 and `HOME/api.addr` removed.
    pub fn stop(mut self) -> Exited {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM failed");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "hearth up did not stop within {DEADLINE:?} of SIGTERM; stderr: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let exited = self.collect_output();
        assert!(
            status.success(),
            "hearth up exited with {status} on SIGTERM; stderr: {}",
            exited.stderr
        );
        assert!(
            !self.home.join("api.addr").exists(),
            "a clean shutdown leaves HOME/api.addr behind"
        );
        exited
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) -> Exited {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        self.collect_output()
    }

    fn collect_output(&self) -> Exited {
        for _ in 0..2 {
            let _ = self.pipes_closed.recv_timeout(Duration::from_secs(5));
        }
        Exited {
            stdout_rest: String::from_utf8_lossy(&self.stdout_rest.lock().expect("stdout"))
                .into_owned(),
            stderr: self.stderr(),
        }
    }

    /// `hearth --home HOME --json ARGS` against this node.
    pub fn json(&self, args: &[&str]) -> Value {
        hearth_json(&self.home, args)
    }

    /// `hearth --home HOME ARGS` against this node.
    pub fn run(&self, args: &[&str]) -> Output {
        cli(&self.home, args)
    }

    /// Stores `bytes` as a blob named `name` (`hearth blob put`, through a file in
    /// `dir`); returns its id.
    pub fn blob_put(&self, dir: &Path, name: &str, bytes: &[u8]) -> String {
        let file = dir.join(name);
        std::fs::write(&file, bytes).expect("write the blob's file");
        self.json(&["blob", "put", file.to_str().expect("a UTF-8 path")])["id"]
            .as_str()
            .expect("a blob id")
            .to_owned()
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

/// A whole answer: status, content type and body bytes.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Api {
    pub fn new(node: &NodeProcess) -> Self {
        Self {
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(DEADLINE)
                .build()
                .expect("http client"),
            base: node.base_url(),
            token: node.owner_token(),
        }
    }

    /// A request with the owner token.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::blocking::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// A request without any token.
    pub fn raw(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends and returns (status, JSON body or Null).
    pub fn send(&self, request: reqwest::blocking::RequestBuilder) -> (u16, Value) {
        let answer = self.send_raw(request);
        (
            answer.status,
            serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
        )
    }

    /// Sends and returns the whole answer, failing if the body does not arrive whole.
    pub fn send_raw(&self, request: reqwest::blocking::RequestBuilder) -> RawAnswer {
        let response = request.send().expect("the node answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let headers = response.headers().clone();
        let body = response.bytes().expect("the whole body").to_vec();
        RawAnswer {
            status,
            content_type,
            headers,
            body,
        }
    }
}

/// Every file under `dir`, recursively (not the directories themselves).
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
    out.sort();
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A loopback address where nothing listens (a port just bound and released).
pub fn dead_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr.to_string()
}

/// Copies a directory tree (a HOME, a store) file by file.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    for entry in std::fs::read_dir(from).expect("read a directory to copy") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Runs `hearth up` on `home` expecting it to refuse to start; returns the one line
/// it printed on stderr.
pub fn up_refused(home: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "--home",
        home.to_str().expect("utf-8 path"),
        "up",
        "--api",
        "127.0.0.1:0",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ];
    args.extend_from_slice(extra);
    let out = hearth(&args);
    assert!(
        !out.status.success(),
        "hearth up on {} started, but it should have refused",
        home.display()
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    err.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line from hearth up: {err}"))
        .to_owned()
}

/// `len` bytes that do not compress (xorshift64 from a fixed seed: the same every run).
pub fn noise_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len.div_ceil(8))
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .take(len)
        .collect()
}
