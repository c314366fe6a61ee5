//! Backups to a host that sees nothing (`hearth host`, `hearth backup`), across real
//! processes: a vault enrolls a host with its code, uploads what changed as it changes,
//! and the host keeps it sealed (no record, name or blob byte on its disk or in its
//! log); a host that serves an older chain, or an altered one, is refused, saying so.

use std::path::Path;

use hearth_tests::{
    Api, NodeProcess, cli, eventually, hearth_json, one_line_error, spawn_host, spawn_node,
};
use reqwest::Method;
use serde_json::Value;

const CANARIES: [&str; 3] = [
    "canary-note-QUINCE-7431",
    "canary-contact-Wilhelmina-Zabriskie",
    "canary-blob-PERSIMMON-0099",
];

fn invite(host: &NodeProcess) -> String {
    host.json(&["host", "invite"])["code"]
        .as_str()
        .expect("a code")
        .to_owned()
}

/// A host started on `home`, its address (with /p2p/) and where it listens (to
/// start it there again).
fn host_at(home: &Path) -> (NodeProcess, String, String) {
    let host = spawn_host(home, &[]);
    let addr = host.json(&["host", "vaults"])["addrs"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let listen = addr.split("/p2p/").next().unwrap().to_owned();
    (host, addr, listen)
}

fn status(device: &NodeProcess) -> Value {
    device.json(&["backup", "status"])["hosts"][0].clone()
}

/// Waits until the device's first host holds everything, past manifest `after`;
/// returns its status.
fn up_to_date(device: &NodeProcess, after: u64) -> Value {
    up_to_date_beside(device, after, &[])
}

/// [`up_to_date`] with other devices of the vault, one of which may be the uploader:
/// on failure, their status and log are shown too.
fn up_to_date_beside(device: &NodeProcess, after: u64, others: &[&NodeProcess]) -> Value {
    let mut last = Value::Null;
    let started = std::time::Instant::now();
    loop {
        let s = status(device);
        if s["up_to_date"] == true && s["seq"].as_u64().unwrap_or(0) > after {
            return s;
        }
        if started.elapsed() >= std::time::Duration::from_secs(30) {
            let others: Vec<String> = others
                .iter()
                .map(|o| format!("another device: {}\n{}", status(o), tail(&o.stderr())))
                .collect();
            panic!(
                "the backup host is not up to date past manifest {after} after 30 s: {last}\n{}\n{}",
                tail(&device.stderr()),
                others.join("\n")
            );
        }
        last = s;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The last 40 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn host_bytes(host: &NodeProcess) -> u64 {
    host.json(&["host", "vaults"])["vaults"][0]["bytes"]
        .as_u64()
        .expect("bytes")
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Which of `needles` a running process (a child of this one) holds in memory: every
/// region `/proc/PID/maps` marks readable, read through `/proc/PID/mem`.
fn memory_holds(pid: u32, needles: &[&str]) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let finders: Vec<memchr::memmem::Finder<'_>> = needles
        .iter()
        .map(|n| memchr::memmem::Finder::new(n.as_bytes()))
        .collect();
    let mut found = std::collections::BTreeSet::new();
    let mut read = 0u64;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        // In pieces of 64 MiB, each with the end of the one before (a needle across
        // two pieces is found).
        let mut at = start;
        let mut tail: Vec<u8> = Vec::new();
        while at < end {
            let len = (end - at).min(64 << 20) as usize;
            let mut buf = std::mem::take(&mut tail);
            let kept = buf.len();
            buf.resize(kept + len, 0);
            if mem.seek(SeekFrom::Start(at)).is_err() || mem.read_exact(&mut buf[kept..]).is_err() {
                break;
            }
            read += len as u64;
            for (needle, finder) in needles.iter().zip(&finders) {
                if finder.find(&buf).is_some() {
                    found.insert((*needle).to_owned());
                }
            }
            tail = buf[buf.len().saturating_sub(64)..].to_vec();
            at += len as u64;
        }
    }
    assert!(read > 1 << 20, "read only {read} bytes of process {pid}");
    found.into_iter().collect()
}

#[test]
fn a_host_keeps_a_vault_sealed_and_one_edit_uploads_a_few_kib() {
    let dir = tempfile::tempdir().unwrap();
    let host = spawn_host(&dir.path().join("host"), &[]);
    let a = spawn_node(&dir.path().join("a"), &[]);

    // Codes that are not a host's, and a vault without a kit, are refused.
    let device_code = a.json(&["pair"])["code"].as_str().unwrap().to_owned();
    let err = one_line_error(&cli(&a.home, &["backup", "add", &device_code]));
    assert!(err.contains("hearth join"), "{err}");
    let err = one_line_error(&cli(&a.home, &["backup", "add", "hearthhost1zzzz"]));
    assert!(err.contains("damaged"), "{err}");
    let err = one_line_error(&cli(&a.home, &["backup", "add", "hello"]));
    assert!(err.contains("not a backup host's code"), "{err}");
    let err = one_line_error(&cli(&a.home, &["backup", "add", &invite(&host)]));
    assert!(err.contains("recovery kit"), "{err}");
    let err = one_line_error(&cli(&host.home, &["backup", "status"]));
    assert!(err.contains("backup host's HOME"), "{err}");

    let kit = dir.path().join("kit.json");
    a.run(&["recovery-kit", "-o", kit.to_str().unwrap()]);
    a.run(&[
        "put",
        "notes",
        "n1",
        &format!(r#"{{"text": "{}"}}"#, CANARIES[0]),
    ]);
    a.run(&[
        "put",
        "contacts",
        "c1",
        &format!(r#"{{"name": "{}"}}"#, CANARIES[1]),
    ]);
    let blob = dir.path().join("blob.bin");
    std::fs::write(&blob, CANARIES[2].repeat(50_000)).unwrap();
    a.run(&["blob", "put", blob.to_str().unwrap()]);

    let code = invite(&host);
    let added = a.json(&["backup", "add", &code]);
    assert_eq!(added["peer"], host.peer_id.as_str());
    // The code is used up: another vault cannot enroll with it.
    let other = spawn_node(&dir.path().join("other"), &[]);
    other.run(&[
        "recovery-kit",
        "-o",
        dir.path().join("kit2.json").to_str().unwrap(),
    ]);
    let err = one_line_error(&cli(&other.home, &["backup", "add", &code]));
    assert!(err.contains("not valid here"), "{err}");
    let err = one_line_error(&cli(&a.home, &["backup", "add", &invite(&host)]));
    assert!(err.contains("already a backup host"), "{err}");

    let first = up_to_date(&a, 0);
    let vaults = host.json(&["host", "vaults"])["vaults"].clone();
    assert_eq!(vaults.as_array().unwrap().len(), 1, "{vaults}");
    let name = vaults[0]["name"].as_str().unwrap();
    assert_eq!(name.len(), 32);
    assert!(!name.contains(a.json(&["status"])["vault_id"].as_str().unwrap()));
    // The 1.3 MB blob is there, in a 1 MiB and a 256 KiB bucket: padding to buckets
    // hides sizes without doubling them.
    let bytes = vaults[0]["bytes"].as_u64().unwrap();
    assert!((1_300_000..1_400_000).contains(&bytes), "{vaults}");

    // One edited record: a few KiB more on the host.
    let before = host_bytes(&host);
    a.run(&[
        "put",
        "notes",
        "n1",
        &format!(r#"{{"text": "{} edited"}}"#, CANARIES[0]),
    ]);
    up_to_date(&a, first["seq"].as_u64().unwrap());
    let grew = host_bytes(&host) - before;
    eprintln!("one edited record uploaded {grew} bytes");
    assert!(grew <= 4096, "one edit uploaded {grew} bytes");

    // The host proves it holds what a restore reads; an object it lost, or one with
    // a flipped byte, fails the proof, named.
    let verified = a.json(&["backup", "verify"]);
    assert_eq!(verified["ok"], true, "{verified}");
    let sampled = verified["hosts"][0]["sampled"].as_u64().unwrap();
    assert!(
        sampled >= 5 && sampled == verified["hosts"][0]["objects"].as_u64().unwrap(),
        "{verified}"
    );
    let objects_dir = std::fs::read_dir(host.home.join("vaults"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("objects");
    let mut objects: Vec<std::path::PathBuf> = files_under(&objects_dir)
        .into_iter()
        .map(|(path, _)| path.into())
        .collect();
    objects.sort();
    let kept = dir.path().join("kept-object");
    std::fs::copy(&objects[0], &kept).unwrap();
    std::fs::remove_file(&objects[0]).unwrap();
    let out = cli(&a.home, &["backup", "verify"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("is missing"),
        "{said}"
    );
    let mut flipped = std::fs::read(&kept).unwrap();
    flipped[100] ^= 1;
    std::fs::write(&objects[0], flipped).unwrap();
    let out = cli(&a.home, &["backup", "verify"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("does not prove"),
        "{said}"
    );
    std::fs::copy(&kept, &objects[0]).unwrap();
    assert_eq!(a.json(&["backup", "verify"])["ok"], true);

    // Nor in the running host's memory (every readable page of it). The same scan of
    // the device, which holds them in the clear, finds them: it can see.
    let in_device = memory_holds(a.pid(), &CANARIES);
    assert!(
        !in_device.is_empty(),
        "the scan finds nothing even on the device"
    );
    let in_host = memory_holds(host.pid(), &CANARIES);
    assert!(in_host.is_empty(), "{in_host:?} in the host's memory");

    // Nothing readable on the host: its files, and its log at debug level.
    let host_home = host.home.clone();
    let log = host.stop().stderr;
    for (path, bytes) in files_under(&host_home) {
        for canary in CANARIES {
            assert!(!contains(&bytes, canary), "{canary} in {path}");
        }
    }
    for canary in CANARIES {
        assert!(!log.contains(canary), "{canary} in the host's log");
    }
    assert!(
        log.contains("a vault enrolled"),
        "the log is the host's: {log}"
    );
}

#[test]
fn a_host_that_serves_an_older_or_altered_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host_home = dir.path().join("host");
    let (host, _, listen) = host_at(&host_home);
    let a = spawn_node(&dir.path().join("a"), &[]);
    a.run(&[
        "recovery-kit",
        "-o",
        dir.path().join("kit.json").to_str().unwrap(),
    ]);
    a.run(&["put", "notes", "n1", r#"{"text": "first"}"#]);
    a.run(&["backup", "add", &invite(&host)]);
    let first = up_to_date(&a, 0)["seq"].as_u64().unwrap();

    // The host's disk as it is now, kept aside.
    host.stop();
    let old = dir.path().join("host-old");
    copy_dir(&host_home, &old);
    let host = spawn_host(&host_home, &["--listen", &listen]);
    a.run(&["put", "notes", "n2", r#"{"text": "second"}"#]);
    let newest = up_to_date(&a, first)["seq"].as_u64().unwrap();
    host.stop();
    let new = dir.path().join("host-new");
    copy_dir(&host_home, &new);

    // It comes back with last week's disk: refused, saying so.
    std::fs::remove_dir_all(&host_home).unwrap();
    copy_dir(&old, &host_home);
    let host = spawn_host(&host_home, &["--listen", &listen]);
    a.run(&["put", "notes", "n3", r#"{"text": "third"}"#]);
    let refused = eventually("the rolled-back host is refused", || {
        let s = status(&a);
        s["error"].as_str().map(str::to_owned)
    });
    assert!(
        refused.contains(&format!("holds manifest {first}"))
            && refused.contains(&format!("has seen {newest}")),
        "{refused}"
    );
    assert_eq!(status(&a)["up_to_date"], false);
    host.stop();

    // Its newest manifest with one byte flipped: refused too.
    std::fs::remove_dir_all(&host_home).unwrap();
    copy_dir(&new, &host_home);
    let manifest = std::fs::read_dir(
        std::fs::read_dir(host_home.join("vaults"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("manifests"),
    )
    .unwrap()
    .map(|e| e.unwrap().path())
    .max()
    .unwrap();
    let mut bytes = std::fs::read(&manifest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&manifest, bytes).unwrap();
    let host = spawn_host(&host_home, &["--listen", &listen]);
    a.run(&["put", "notes", "n4", r#"{"text": "fourth"}"#]);
    let refused = eventually("the altered host is refused", || {
        let s = status(&a);
        s["error"]
            .as_str()
            .filter(|e| e.contains("altered"))
            .map(str::to_owned)
    });
    assert!(refused.contains(&format!("manifest {newest}")), "{refused}");
    host.stop();

    // Its true disk back: uploads go on.
    std::fs::remove_dir_all(&host_home).unwrap();
    copy_dir(&new, &host_home);
    let host = spawn_host(&host_home, &["--listen", &listen]);
    a.run(&["put", "notes", "n5", r#"{"text": "fifth"}"#]);
    up_to_date(&a, newest);
    drop(host);
}

#[test]
fn a_vault_home_and_a_host_home_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let out = cli(&a.home, &["host", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("holds a vault"),
        "{err}"
    );
    drop(a);
    let host = spawn_host(&dir.path().join("host"), &[]);
    let home = host.home.clone();
    host.stop();
    let out = cli(&home, &["up", "--api", "127.0.0.1:0", "--no-mdns"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("backup host's HOME"),
        "{err}"
    );
    let err = one_line_error(&cli(&home, &["host", "invite"]));
    assert!(
        err.contains("hearth --home") && err.contains(" host`"),
        "{err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn two_devices_share_one_chain_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = spawn_host(&dir.path().join("host"), &[]);
    let a = spawn_node(&dir.path().join("a"), &[]);
    a.run(&[
        "recovery-kit",
        "-o",
        dir.path().join("kit.json").to_str().unwrap(),
    ]);
    a.run(&["backup", "add", &invite(&host)]);
    let first = up_to_date(&a, 0)["seq"].as_u64().unwrap();
    let b = hearth_tests::join_and_spawn(&a, &dir.path().join("b"));
    // B learns of the host through sync, reads the chain A made, and adds to it.
    eventually("B knows the host", || {
        (b.json(&["backup", "status"])["hosts"][0]["peer"] == host.peer_id.as_str()).then_some(())
    });
    b.run(&["put", "notes", "from-b", r#"{"text": "written on B"}"#]);
    let on_b = up_to_date(&b, first);
    let on_a = up_to_date(&a, first);
    assert_eq!(on_a["seq"], on_b["seq"], "one chain: {on_a} {on_b}");
    let vaults = host.json(&["host", "vaults"])["vaults"].clone();
    assert_eq!(vaults.as_array().unwrap().len(), 1, "{vaults}");
}

/// A host's quota per vault holds across real processes: what does not fit is refused,
/// the device says so, and the host keeps no more than the quota.
#[test]
fn a_vault_over_its_quota_on_the_host_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let host = spawn_host(&dir.path().join("host"), &["--quota-mb", "1"]);
    let a = spawn_node(&dir.path().join("a"), &[]);
    a.run(&["recovery-kit"]);
    a.run(&["backup", "add", &invite(&host)]);
    up_to_date(&a, 0);
    let blob = dir.path().join("big.bin");
    std::fs::write(&blob, hearth_tests::noise_bytes(1_500_000)).unwrap();
    a.run(&["blob", "put", blob.to_str().unwrap()]);
    let error = eventually("the device says the quota is used up", || {
        let s = status(&a);
        s["error"]
            .as_str()
            .filter(|e| e.contains("quota"))
            .map(str::to_owned)
    });
    assert!(error.contains("used up"), "{error}");
    assert_eq!(status(&a)["up_to_date"], false);
    let used = host_bytes(&host);
    assert!(used <= 1024 * 1024, "the host keeps {used} bytes");
}

/// A device backed up to a host in `dir`, then the host stopped: the host's home,
/// where it listened, the device, and the manifest it reached.
fn backed_up_then_host_stopped(dir: &Path) -> (std::path::PathBuf, String, NodeProcess, u64) {
    let host_home = dir.join("host");
    let (host, _, listen) = host_at(&host_home);
    let a = spawn_node(&dir.join("a"), &[]);
    a.run(&["recovery-kit"]);
    a.run(&["backup", "add", &invite(&host)]);
    let seq = up_to_date(&a, 0)["seq"].as_u64().unwrap();
    host.stop();
    (host_home, listen, a, seq)
}

/// A host that accepts connections and then says nothing: `hearth backup status`
/// answers within seconds anyway, naming it unreachable, with what it knew before.
#[test]
fn a_host_that_hangs_does_not_hang_backup_status() {
    let dir = tempfile::tempdir().unwrap();
    let (_, listen, a, seq) = backed_up_then_host_stopped(dir.path());
    // Its port now answers TCP, and nothing more.
    let port: u16 = listen.rsplit('/').next().unwrap().parse().unwrap();
    let silent = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for stream in silent.incoming().flatten() {
                held.lock().unwrap().push(stream);
            }
        });
    }
    let started = std::time::Instant::now();
    let shown = status(&a);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "status took {took:?}"
    );
    let error = shown["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot reach"), "{shown}");
    assert_eq!(shown["seq"].as_u64(), Some(seq), "what it knew: {shown}");
    assert_eq!(shown["up_to_date"], false);
    assert!(
        !held.lock().unwrap().is_empty(),
        "the device did dial the silent port"
    );
}

/// A round that failed (the host was away) is tried again within seconds, with no
/// new change to start it: once the host is back, the backup catches up by itself
/// (it waited for the next change, or five minutes, before).
#[test]
fn a_failed_upload_is_tried_again_soon_without_a_new_change() {
    let dir = tempfile::tempdir().unwrap();
    let (host_home, listen, a, seq) = backed_up_then_host_stopped(dir.path());
    a.run(&[
        "put",
        "notes",
        "n1",
        r#"{"text": "written while the host was away"}"#,
    ]);
    // The round after the change gives up dialing (a status's read gives up sooner,
    // saying "no answer").
    eventually("the upload round fails", || {
        a.stderr().contains("no connection within").then_some(())
    });
    let _host = spawn_host(&host_home, &["--listen", &listen]);
    // No new change: only a retry brings it up to date.
    up_to_date(&a, seq);
}

/// The upload token follows the vault's epoch: once a device is removed (and its
/// removal makes a new epoch), the devices move the host to a token derived from the
/// new epoch key, which the removed device cannot derive; the host no longer takes the
/// token it held. Backups go on under the new one.
#[test]
fn a_removed_devices_upload_token_no_longer_opens_the_vault_on_the_host() {
    use hearth_protocol::backup::token_hash;

    let dir = tempfile::tempdir().unwrap();
    let host_home = dir.path().join("host");
    let host = spawn_host(&host_home, &[]);
    let a = spawn_node(&dir.path().join("a"), &[]);
    let x = hearth_tests::join_and_spawn(&a, &dir.path().join("x"));
    a.run(&["recovery-kit"]);
    a.run(&["backup", "add", &invite(&host)]);
    let first = up_to_date(&a, 0)["seq"].as_u64().unwrap();
    let hex = data_encoding::HEXLOWER;
    let record = |node: &NodeProcess| node.json(&["ls", "_backup"])[0].clone();
    let kept_hash = |handle: &str| -> String {
        let file = host_home.join("vaults").join(handle).join("vault.json");
        let vault: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        vault["token_hash"].as_str().unwrap().to_owned()
    };
    let hash_of = |token: &str| -> String {
        let token: [u8; 32] = hex.decode(token.as_bytes()).unwrap().try_into().unwrap();
        hex.encode(&token_hash(&token))
    };
    // X holds the token the host takes now.
    let held = eventually("X knows the host", || {
        let r = record(&x);
        (r["token"] == record(&a)["token"]).then_some(r)
    });
    let handle = held["handle"].as_str().unwrap().to_owned();
    let x_token = held["token"].as_str().unwrap().to_owned();
    assert_eq!(kept_hash(&handle), hash_of(&x_token));
    let x_peer = x.peer_id.clone();
    x.stop();

    assert_eq!(a.json(&["devices", "remove", &x_peer])["removed"], true);
    a.run(&["put", "notes", "after", r#"{"text": "after X left"}"#]);
    up_to_date(&a, first);
    let moved = eventually("the host has the new epoch's token", || {
        let r = record(&a);
        (r["token"] != x_token.as_str() && kept_hash(&handle) == hash_of(r["token"].as_str()?))
            .then_some(r)
    });
    assert!(
        moved["token_epoch"].as_u64().is_some(),
        "derived from an epoch: {moved}"
    );
    assert_ne!(
        kept_hash(&handle),
        hash_of(&x_token),
        "X's token is refused"
    );
    // Backups go on under it.
    let seq = status(&a)["seq"].as_u64().unwrap();
    a.run(&["put", "notes", "later", r#"{"text": "later still"}"#]);
    up_to_date(&a, seq);
}

/// Everything is lost but the kit and the host: `hearth recover` brings back every
/// record, blob, grant (its token still works) and the audit log into an empty HOME,
/// which becomes a new device of the vault and goes on backing up to the same chain.
#[test]
fn the_kit_alone_brings_the_vault_back_from_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = spawn_host(&dir.path().join("host"), &[]);
    let a = spawn_node(&dir.path().join("a"), &[]);
    let kit = dir.path().join("kit.json");
    a.run(&["recovery-kit", "-o", kit.to_str().unwrap()]);
    a.run(&["put", "notes", "n1", r#"{"text": "the first note"}"#]);
    a.run(&[
        "put",
        "contacts",
        "ada",
        r#"{"name": "Ada", "tag": ["work"]}"#,
    ]);
    let blob = dir.path().join("photo.jpg");
    let bytes: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&blob, &bytes).unwrap();
    let blob_id = a.json(&["blob", "put", blob.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let grant = a.json(&["grant", "newsletter", "--read", "contacts.name"]);
    let token = grant["token"].as_str().unwrap().to_owned();
    let api = Api::new(&a);
    let (status, _) = api.send(
        api.raw(Method::GET, "/v1/view/contacts")
            .bearer_auth(&token),
    );
    assert_eq!(status, 200);
    a.run(&[
        "put",
        "notes",
        "n1",
        r#"{"text": "the first note, edited"}"#,
    ]);
    a.run(&["backup", "add", &invite(&host)]);
    // The host goes into the kit file the person keeps (its secret untouched).
    let named = a.json(&["recovery-kit", "--hosts", kit.to_str().unwrap()]);
    assert_eq!(named["hosts"][0]["peer"], host.peer_id.as_str(), "{named}");
    let uploaded = up_to_date(&a, 0);
    // The drill first, while the device lives: restored into a scratch HOME and
    // compared record by record and blob by blob, it matches.
    let drill = a.json(&[
        "backup",
        "verify",
        "--restore",
        "--kit",
        kit.to_str().unwrap(),
    ]);
    assert_eq!(drill["ok"], true, "{drill}");
    assert_eq!(
        drill["restore"]["differences"],
        serde_json::json!([]),
        "{drill}"
    );
    assert_eq!(drill["restore"]["blobs"], 1, "{drill}");
    assert_eq!(
        drill["restore"]["records"], 2,
        "a note and a contact: {drill}"
    );
    let audit_before = a.json(&["audit"]).as_array().unwrap().len();
    let old_device = a.peer_id.clone();
    let addr = host.json(&["host", "vaults"])["addrs"][0]
        .as_str()
        .unwrap()
        .to_owned();

    // The fire: the device and its HOME are gone.
    drop(a);
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();

    let r_home = dir.path().join("r");
    // A kit of another vault finds nothing on the host.
    let other = spawn_node(&dir.path().join("other"), &[]);
    let other_kit = dir.path().join("other-kit.json");
    other.run(&["recovery-kit", "-o", other_kit.to_str().unwrap()]);
    let err = one_line_error(&cli(
        &r_home,
        &[
            "recover",
            "--kit",
            other_kit.to_str().unwrap(),
            "--host",
            &addr,
        ],
    ));
    assert!(err.contains("no such vault"), "{err}");
    assert!(!r_home.join("keys").exists(), "nothing written");
    // Nor does an address without the host's id.
    let err = one_line_error(&cli(
        &r_home,
        &[
            "recover",
            "--kit",
            kit.to_str().unwrap(),
            "--host",
            "/ip4/127.0.0.1/tcp/1",
        ],
    ));
    assert!(err.contains("/p2p/"), "{err}");
    // A kit file that names no host, without --host: says what to give.
    let err = one_line_error(&cli(
        &r_home,
        &["recover", "--kit", other_kit.to_str().unwrap()],
    ));
    assert!(err.contains("names no backup host"), "{err}");

    // The kit file alone: it names the host.
    let started = std::time::Instant::now();
    let recovered = hearth_json(&r_home, &["recover", "--kit", kit.to_str().unwrap()]);
    eprintln!("recovered in {:?}: {recovered}", started.elapsed());
    assert_eq!(recovered["seq"], uploaded["seq"]);
    assert_eq!(recovered["blobs"], 1);
    // Into a HOME that is not empty: refused.
    let err = one_line_error(&cli(
        &r_home,
        &["recover", "--kit", kit.to_str().unwrap(), "--host", &addr],
    ));
    assert!(err.contains("not empty"), "{err}");

    let r = spawn_node(&r_home, &[]);
    assert_eq!(r.peer_id, recovered["peer_id"].as_str().unwrap());
    assert_ne!(r.peer_id, old_device, "a new device");
    assert_eq!(
        r.json(&["get", "notes", "n1"])["text"],
        "the first note, edited"
    );
    assert_eq!(r.json(&["get", "contacts", "ada"])["name"], "Ada");
    let out = dir.path().join("out.jpg");
    r.run(&["blob", "get", &blob_id, "-o", out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == bytes,
        "the blob, byte for byte"
    );
    // The grant's token still opens its view, on the restored vault.
    let api = Api::new(&r);
    let (status, view) = api.send(
        api.raw(Method::GET, "/v1/view/contacts")
            .bearer_auth(&token),
    );
    assert_eq!(status, 200, "{view}");
    assert!(r.json(&["audit"]).as_array().unwrap().len() >= audit_before);
    r.run(&["audit", "--verify"]);
    r.run(&["check"]);
    let devices = r.json(&["devices"]);
    let ids: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert!(
        ids.contains(&old_device.as_str()) && ids.contains(&r.peer_id.as_str()),
        "{devices}"
    );
    // It goes on with the same chain: what it adds is uploaded after what A did.
    r.run(&["put", "notes", "n2", r#"{"text": "after the fire"}"#]);
    let after = up_to_date(&r, uploaded["seq"].as_u64().unwrap());
    assert!(after["error"].is_null(), "{after}");
}

/// The figures of issue 27 (docs/BENCHMARKS.md): a vault of 10,000 contacts and a
/// blob of `HEARTH_BENCH_BLOB_MB` MiB (1024 unless set) backed up to a host on
/// loopback, and restored from the kit alone into an empty HOME, each against a
/// device-to-device sync of the same vault in the same run (each must take at most
/// twice as long); and restic backing up the same vault's `export --all`, for
/// reference, when it is installed. Long: run it by hand,
/// `cargo test -p hearth-tests --test backup -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark of minutes; run by hand with --ignored --nocapture"]
fn backup_and_restore_measured_against_a_device_sync() {
    use std::time::Instant;
    let mib: usize = std::env::var("HEARTH_BENCH_BLOB_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let host = spawn_host(&dir.path().join("host"), &[]);
    let a = spawn_node(&dir.path().join("a"), &[]);
    let kit = dir.path().join("kit.json");
    a.run(&["recovery-kit", "-o", kit.to_str().unwrap()]);
    let cards: String = (0..10_000)
        .map(|i| format!("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:p{i}\r\nFN:Person {i}\r\nEMAIL:p{i}@example.org\r\nEND:VCARD\r\n"))
        .collect();
    let vcf = dir.path().join("people.vcf");
    std::fs::write(&vcf, cards).unwrap();
    a.run(&["import", "contacts", vcf.to_str().unwrap()]);
    let blob = hearth_tests::noise_bytes(mib * 1024 * 1024);
    let file = dir.path().join("big.bin");
    std::fs::write(&file, &blob).unwrap();
    drop(blob);
    let id = a.json(&["blob", "put", file.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let holds_all = |node: &NodeProcess| {
        let contacts = node.json(&["status"])["collections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "contacts" && c["records"] == 10_000);
        contacts
            && node
                .json(&["blob", "ls"])
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["id"] == id.as_str() && b["here"] == true)
    };
    let wait = |what: &str, check: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !check() {
            assert!(
                started.elapsed().as_secs() < 3600,
                "{what}: not within an hour"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };

    // A device-to-device sync of the vault.
    let started = Instant::now();
    let b = hearth_tests::join_and_spawn(&a, &dir.path().join("b"));
    wait("B holds the vault", &|| holds_all(&b));
    let sync = started.elapsed();
    drop(b);

    // The backup to the host.
    let started = Instant::now();
    a.run(&["backup", "add", &invite(&host)]);
    wait("the host is up to date", &|| {
        status(&a)["up_to_date"] == true
    });
    let backup = started.elapsed();
    let stored = host_bytes(&host);
    let seq = status(&a)["seq"].as_u64().unwrap();
    a.run(&["put", "contacts", "p17", r#"{"name": "Person 17, edited"}"#]);
    up_to_date(&a, seq);
    let edit = host_bytes(&host) - stored;

    // The restore from the kit alone.
    let addr = host.json(&["host", "vaults"])["addrs"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let r_home = dir.path().join("r");
    hearth_json(
        &r_home,
        &["recover", "--kit", kit.to_str().unwrap(), "--host", &addr],
    );
    let restore = started.elapsed();
    let r = spawn_node(&r_home, &["--no-mesh"]);
    assert!(holds_all(&r), "the restore holds the vault");
    drop(r);

    // restic, for reference, over the same vault exported.
    let restic = std::process::Command::new("restic")
        .arg("version")
        .output()
        .is_ok()
        .then(|| {
            let export = dir.path().join("export");
            a.run(&["export", "--all", "-o", export.to_str().unwrap()]);
            let repo = dir.path().join("restic");
            let run = |args: &[&str]| {
                let out = std::process::Command::new("restic")
                    .args(["--repo", repo.to_str().unwrap(), "--quiet"])
                    .args(args)
                    .env("RESTIC_PASSWORD", "bench")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "restic {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run(&["init"]);
            let started = Instant::now();
            run(&["backup", export.to_str().unwrap()]);
            started.elapsed()
        });

    eprintln!(
        "10,000 contacts + {mib} MiB: device sync {sync:.1?}; backup to the host {backup:.1?} ({:.2}x, {} bytes on the host); one edit {edit} bytes; restore from the kit {restore:.1?} ({:.2}x); restic backup of the export {}",
        backup.as_secs_f64() / sync.as_secs_f64(),
        stored,
        restore.as_secs_f64() / sync.as_secs_f64(),
        restic.map_or("(restic not installed)".to_owned(), |t| format!("{t:.1?}")),
    );
    assert!(edit <= 4096, "one edit uploaded {edit} bytes");
    assert!(
        backup.as_secs_f64() <= 2.0 * sync.as_secs_f64(),
        "backup {backup:?} vs sync {sync:?}"
    );
    assert!(
        restore.as_secs_f64() <= 2.0 * sync.as_secs_f64(),
        "restore {restore:?} vs sync {sync:?}"
    );
}

/// A new recovery kit made after the host was added: the devices enroll the vault on
/// the host again under the new kit (with the upload token, no new code) and upload a
/// new chain, which the new kit restores from; the old kit then deletes the copy
/// kept under it (`backup prune --kit OLD`).
#[test]
fn a_new_kit_finds_the_vault_on_a_host_added_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = spawn_host(&dir.path().join("host"), &[]);
    let a = spawn_node(&dir.path().join("a"), &[]);
    let old_kit = dir.path().join("old-kit.json");
    a.run(&["recovery-kit", "-o", old_kit.to_str().unwrap()]);
    a.run(&["put", "notes", "n1", r#"{"text": "before the new kit"}"#]);
    a.run(&["backup", "add", &invite(&host)]);
    up_to_date(&a, 0);
    let new_kit = dir.path().join("new-kit.json");
    a.run(&["recovery-kit", "-o", new_kit.to_str().unwrap()]);
    a.run(&["put", "notes", "n2", r#"{"text": "after the new kit"}"#]);
    // The old chain and the new, under the new kit's name.
    eventually("the vault enrolled again under the new kit", || {
        (host.json(&["host", "vaults"])["vaults"]
            .as_array()
            .unwrap()
            .len()
            == 2)
            .then_some(())
    });
    up_to_date(&a, 0);
    // The old kit deletes the copy kept under it, once the new one holds everything.
    let pruned = a.json(&["backup", "prune", "--kit", old_kit.to_str().unwrap()]);
    assert_eq!(pruned["ok"], true, "{pruned}");
    let report = &pruned["hosts"][0];
    assert!(report["replaced_kit"].is_string(), "{report}");
    assert!(report["objects_dropped"].as_u64().unwrap() > 0, "{report}");
    let vaults = host.json(&["host", "vaults"])["vaults"].clone();
    assert_eq!(vaults.as_array().unwrap().len(), 1, "{vaults}");
    // Again: nothing is kept under it any more.
    let again = a.json(&["backup", "prune", "--kit", old_kit.to_str().unwrap()]);
    assert_eq!(again["hosts"][0]["objects_dropped"], 0, "{again}");
    // A kit made after the host was added names it in its file: no --host needed.
    let r_home = dir.path().join("r");
    hearth_json(&r_home, &["recover", "--kit", new_kit.to_str().unwrap()]);
    let r = spawn_node(&r_home, &["--no-mesh"]);
    assert_eq!(
        r.json(&["get", "notes", "n1"])["text"],
        "before the new kit"
    );
    assert_eq!(r.json(&["get", "notes", "n2"])["text"], "after the new kit");
}

/// `hearth backup prune` with the kit frees what the vault no longer needs on the
/// host — earlier versions of an edited note, a removed blob — and nothing else: the
/// chain goes on from the new first manifest, `backup verify` holds, and the kit
/// alone still restores the vault as it is. Another vault's kit prunes nothing; a
/// host that drops manifests without the owner's signature is refused.
#[test]
fn pruning_with_the_kit_frees_what_the_vault_no_longer_needs() {
    let dir = tempfile::tempdir().unwrap();
    let host_home = dir.path().join("host");
    let (host, addr, listen) = host_at(&host_home);
    let a = spawn_node(&dir.path().join("a"), &[]);
    let kit = dir.path().join("kit.json");
    a.run(&["recovery-kit", "-o", kit.to_str().unwrap()]);
    a.run(&["backup", "add", &invite(&host)]);
    let blob_of = |name: &str, seed: u32| {
        let path = dir.path().join(name);
        let bytes: Vec<u8> = (0..600_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let id = a.json(&["blob", "put", path.to_str().unwrap()])["id"]
            .as_str()
            .unwrap()
            .to_owned();
        (id, bytes)
    };
    let (kept_id, kept_bytes) = blob_of("kept.bin", 1);
    let (gone_id, _) = blob_of("gone.bin", 2);
    let mut seq = 0;
    // A note edited again and again, each version uploaded.
    for i in 0..6 {
        let text = format!("version {i}: {}", "words ".repeat(3000));
        a.run(&[
            "put",
            "notes",
            "n1",
            &serde_json::json!({ "text": text }).to_string(),
        ]);
        seq = up_to_date(&a, seq)["seq"].as_u64().unwrap();
    }
    a.run(&["blob", "rm", &gone_id]);
    a.run(&["put", "notes", "n2", r#"{"text": "the last word"}"#]);
    seq = up_to_date(&a, seq)["seq"].as_u64().unwrap();
    // A second device reads the chain as it is now.
    let b = hearth_tests::join_and_spawn(&a, &dir.path().join("b"));
    up_to_date(&b, seq - 1);
    seq = up_to_date(&a, seq - 1)["seq"].as_u64().unwrap();
    let before = host_bytes(&host);

    // Another vault's kit: refused, nothing deleted.
    let other = spawn_node(&dir.path().join("other"), &[]);
    let other_kit = dir.path().join("other-kit.json");
    other.run(&["recovery-kit", "-o", other_kit.to_str().unwrap()]);
    let refused = a.run(&["backup", "prune", "--kit", other_kit.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("not the one the vault is kept under"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert_eq!(host_bytes(&host), before);

    let pruned = a.json(&["backup", "prune", "--kit", kit.to_str().unwrap()]);
    assert_eq!(pruned["ok"], true, "{pruned}");
    let report = &pruned["hosts"][0];
    let base = report["base"].as_u64().unwrap();
    assert!(base > seq, "the chain starts at a new manifest: {report}");
    assert!(report["objects_dropped"].as_u64().unwrap() >= 6, "{report}");
    let after = host_bytes(&host);
    assert_eq!(report["bytes"].as_u64(), Some(after));
    // The removed blob (600 kB) and five old versions of the note are gone.
    assert!(after + 600_000 < before, "{before} -> {after}");
    eprintln!("pruned: {before} -> {after} bytes, {report}");
    let vaults = host.json(&["host", "vaults"]);
    assert!(
        vaults["vaults"][0]["manifests"].as_u64().unwrap() <= 2,
        "{vaults}"
    );

    // The chain goes on from there, and holds up.
    a.run(&["put", "notes", "n3", r#"{"text": "after the prune"}"#]);
    let latest = up_to_date_beside(&a, base, &[&b])["seq"].as_u64().unwrap();
    let verified = a.json(&["backup", "verify"]);
    assert_eq!(verified["ok"], true, "{verified}");
    // Another device, which last read the chain before the prune, follows it to its
    // new start (the owner's signature) and finds it whole.
    let on_b = up_to_date(&b, seq);
    assert_eq!(on_b["seq"].as_u64(), Some(latest), "{on_b}");

    // The kit alone brings back the vault as it is.
    let r_home = dir.path().join("r");
    let recovered = hearth_json(
        &r_home,
        &["recover", "--kit", kit.to_str().unwrap(), "--host", &addr],
    );
    assert_eq!(recovered["seq"].as_u64(), Some(latest));
    let r = spawn_node(&r_home, &["--no-mesh"]);
    assert!(
        r.json(&["get", "notes", "n1"])["text"]
            .as_str()
            .unwrap()
            .starts_with("version 5:")
    );
    assert_eq!(r.json(&["get", "notes", "n3"])["text"], "after the prune");
    let out = dir.path().join("kept.out");
    r.run(&["blob", "get", &kept_id, "-o", out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == kept_bytes,
        "the blob kept, byte for byte"
    );
    assert!(
        !r.run(&[
            "blob",
            "get",
            &gone_id,
            "-o",
            dir.path().join("gone.out").to_str().unwrap()
        ])
        .status
        .success()
    );
    r.stop();

    // A host that drops the owner's first manifest too, claiming the chain starts
    // later: whoever reads the chain from its start refuses it.
    host.stop();
    let vault_dir = std::fs::read_dir(host_home.join("vaults"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut base_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vault_dir.join("base")).unwrap()).unwrap();
    base_file["seq"] = serde_json::json!(base + 1);
    std::fs::write(vault_dir.join("base"), base_file.to_string()).unwrap();
    std::fs::remove_file(vault_dir.join("manifests").join(format!("{base:020}"))).unwrap();
    let _host = spawn_host(&host_home, &["--listen", &listen]);
    let verified = a.run(&["backup", "verify"]);
    let said = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert!(!verified.status.success(), "{said}");
    assert!(said.contains("without the owner's signature"), "{said}");
}
