//! Mail from outside: `hearth import mail` of an mbox file and of a Maildir, `hearth
//! export mail` giving every message back byte for byte (compared by SHA-256), an
//! import killed midway and run again (no message twice, none lost), and a grant that
//! sees only two fields of one folder.

use std::collections::BTreeMap;
use std::path::Path;

use hearth_tests::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Message `n` of a test mailbox: every tenth without a Message-ID, every seventh
/// with an attachment, some with `From ` and `>From ` lines in the body, 8-bit bytes,
/// CRLF line ends.
fn message(n: usize) -> Vec<u8> {
    let mut m = Vec::new();
    let eol: &[u8] = if n.is_multiple_of(3) { b"\r\n" } else { b"\n" };
    let mut line = |text: &[u8]| {
        m.extend_from_slice(text);
        m.extend_from_slice(eol);
    };
    line(format!("From: Sender {n} <sender{n}@example.org>").as_bytes());
    line(format!("To: ada@example.org, bob{n}@example.net").as_bytes());
    if n.is_multiple_of(5) {
        line(b"Cc: carol@example.com");
    }
    line(format!("Subject: message number {n}").as_bytes());
    line(
        format!(
            "Date: Mon, {} Jan 2024 10:{:02}:00 +0100",
            1 + n % 28,
            n % 60
        )
        .as_bytes(),
    );
    if !n.is_multiple_of(10) {
        line(format!("Message-ID: <m{n}@example.org>").as_bytes());
    }
    if n > 0 && n.is_multiple_of(4) {
        line(format!("In-Reply-To: <m{}@example.org>", n - 1).as_bytes());
    }
    if n.is_multiple_of(7) {
        line(b"MIME-Version: 1.0");
        line(b"Content-Type: multipart/mixed; boundary=\"b\"");
        line(b"");
        line(b"--b");
        line(b"Content-Type: text/plain; charset=iso-8859-1");
        line(b"");
        line(b"Gr\xfc\xdfe aus K\xf6ln");
        line(b"From the start of a line");
        line(b"--b");
        line(format!("Content-Type: application/pdf; name=\"report{n}.pdf\"").as_bytes());
        line(b"Content-Disposition: attachment; filename=\"report.pdf\"");
        line(b"Content-Transfer-Encoding: base64");
        line(b"");
        line(b"JVBERi0xLjQKJcfsj6IK");
        line(b"--b--");
    } else {
        line(b"");
        line(format!("Hello {n}.").as_bytes());
        line(b"From here, a line an mbox must quote.");
        line(b">From already quoted once.");
        line(b"");
        line(b"-- ");
        line(b"sender");
    }
    m
}

/// An mbox of `messages` (mboxrd: `From ` lines inside quoted with one more `>`).
fn mbox(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, m) in messages.iter().enumerate() {
        out.extend_from_slice(
            format!("From sender{n}@example.org Mon Jan  1 10:00:00 2024\n").as_bytes(),
        );
        for line in m.split_inclusive(|&b| b == b'\n') {
            let quotes = line.iter().take_while(|&&b| b == b'>').count();
            if line[quotes..].starts_with(b"From ") {
                out.push(b'>');
            }
            out.extend_from_slice(line);
        }
        out.push(b'\n');
    }
    out
}

/// The messages of an mbox, read as mboxrd.
fn read_mbox(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut messages: Vec<Vec<u8>> = Vec::new();
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            messages.push(Vec::new());
            continue;
        }
        let Some(current) = messages.last_mut() else {
            continue;
        };
        let quotes = line.iter().take_while(|&&b| b == b'>').count();
        if quotes > 0 && line[quotes..].starts_with(b"From ") {
            current.extend_from_slice(&line[1..]);
        } else {
            current.extend_from_slice(line);
        }
    }
    for m in &mut messages {
        if m.ends_with(b"\n\n") || m.ends_with(b"\r\n\n") {
            m.pop();
        }
    }
    messages
}

/// Each message's SHA-256, counted.
fn digests<'a>(messages: impl IntoIterator<Item = &'a Vec<u8>>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in messages {
        *out.entry(hex(&Sha256::digest(m))).or_default() += 1;
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn records(node: &NodeProcess, collection: &str) -> Vec<Value> {
    node.json(&["ls", collection]).as_array().unwrap().clone()
}

#[test]
fn an_mbox_is_imported_once_and_exported_byte_for_byte() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let mut messages: Vec<Vec<u8>> = (0..120).map(message).collect();
    // The same message twice (a copy in the same file), and another message under a
    // Message-ID already taken: the copy is one record, the other is kept beside.
    messages.push(message(1));
    let mut reused = message(2);
    reused.extend_from_slice(b"a different body under the same Message-ID\n");
    messages.push(reused);
    let file = t.file("Archive.mbox", mbox(&messages));
    let report = node.json(&["import", "mail", file.to_str().unwrap()]);
    assert_eq!(report["imported"], 121, "{report}");
    assert_eq!(report["duplicates"], 1, "{report}");
    assert_eq!(report["failed"], json!([]), "{report}");
    let listed = records(&node, "mail");
    assert_eq!(listed.len(), 121);

    // The fields of one message.
    let seven = listed
        .iter()
        .find(|r| r["subject"] == "message number 7")
        .unwrap();
    assert_eq!(seven["from"], "sender7@example.org", "{seven}");
    assert_eq!(seven["from_name"], "Sender 7");
    assert_eq!(seven["to"], json!(["ada@example.org", "bob7@example.net"]));
    assert_eq!(seven["message_id"], "m7@example.org");
    assert_eq!(seven["folders"], json!(["Archive"]));
    assert_eq!(seven["size"], message(7).len());
    assert_eq!(seven["attachments"][0]["name"], "report.pdf", "{seven}");
    assert_eq!(seven["attachments"][0]["type"], "application/pdf");
    let eight = listed
        .iter()
        .find(|r| r["subject"] == "message number 8")
        .unwrap();
    assert_eq!(eight["in_reply_to"], json!(["m7@example.org"]));
    assert!(
        eight["date"]
            .as_str()
            .unwrap()
            .starts_with("2024-01-09T10:08:00"),
        "{eight}"
    );
    // Without a Message-ID it is still one record, found again by its bytes.
    assert!(
        listed
            .iter()
            .any(|r| r["subject"] == "message number 10" && r.get("message_id").is_none())
    );

    // Imported again: nothing new.
    let again = node.json(&["import", "mail", file.to_str().unwrap()]);
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(again["duplicates"], 122, "{again}");
    assert_eq!(records(&node, "mail").len(), 121);

    // Exported: every distinct message, byte for byte.
    let out = t.dir().join("out.mbox");
    node.json(&["export", "mail", "-o", out.to_str().unwrap()]);
    let exported = read_mbox(&std::fs::read(&out).unwrap());
    let mut distinct = messages.clone();
    distinct.pop();
    distinct.remove(120);
    distinct.push(messages[121].clone());
    assert_eq!(digests(&exported), digests(&distinct));
    node.stop();
}

#[test]
fn an_import_killed_midway_and_run_again_loses_nothing_and_adds_nothing_twice() {
    let t = TestHome::new();
    let messages: Vec<Vec<u8>> = (0..4000).map(message).collect();
    let file = t.file("INBOX.mbox", mbox(&messages));
    let node = spawn_node(t.path(), &[]);
    let mut import = std::process::Command::new(hearth_bin())
        .args([
            "--home",
            t.as_str(),
            "import",
            "mail",
            file.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill the node once part of the mailbox is in.
    eventually("part of the mailbox imported", || {
        let status = node.json(&["status"]);
        let count = status["collections"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == "mail")?["records"]
            .as_u64()?;
        (count > 0).then_some(())
    });
    node.kill9();
    let _ = import.wait();
    let node = spawn_node(t.path(), &[]);
    let before = records(&node, "mail").len();
    assert!(
        before < 4000,
        "the kill came too late to test anything: {before}"
    );
    let report = node.json(&["import", "mail", file.to_str().unwrap()]);
    assert_eq!(
        report["imported"].as_u64().unwrap() + report["duplicates"].as_u64().unwrap(),
        4000,
        "{report}"
    );
    assert_eq!(records(&node, "mail").len(), 4000);
    let out = t.dir().join("out.mbox");
    node.json(&["export", "mail", "-o", out.to_str().unwrap()]);
    assert_eq!(
        digests(&read_mbox(&std::fs::read(&out).unwrap())),
        digests(&messages)
    );
    node.stop();
}

fn write_maildir(dir: &Path, messages: &[(&str, &str, Vec<u8>)]) {
    for (n, (folder, flags, bytes)) in messages.iter().enumerate() {
        let base = if *folder == "INBOX" {
            dir.to_path_buf()
        } else {
            dir.join(format!(".{folder}"))
        };
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(base.join(sub)).unwrap();
        }
        std::fs::write(base.join("cur").join(format!("{n}.host:2,{flags}")), bytes).unwrap();
    }
}

#[test]
fn a_maildir_keeps_its_folders_and_flags_and_a_grant_sees_one_folder_s_two_fields() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let dir = t.dir().join("Maildir");
    let messages = vec![
        ("INBOX", "S", message(1)),
        ("INBOX", "FS", message(2)),
        ("Sent", "RS", message(3)),
        ("Sent", "", message(4)),
        // The same message in two folders: one record, both folders.
        ("Archive", "S", message(1)),
    ];
    write_maildir(&dir, &messages);
    let report = node.json(&[
        "import",
        "mail",
        dir.to_str().unwrap(),
        "--into",
        "mail-home",
    ]);
    assert_eq!(report["imported"], 4, "{report}");
    assert_eq!(report["duplicates"], 1, "{report}");
    let listed = records(&node, "mail-home");
    let by_subject = |s: &str| listed.iter().find(|r| r["subject"] == s).unwrap().clone();
    let one = by_subject("message number 1");
    let mut folders: Vec<String> = one["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    folders.sort();
    assert_eq!(folders, vec!["Archive", "INBOX"], "{one}");
    assert_eq!(
        by_subject("message number 2")["flags"],
        json!(["flagged", "seen"])
    );
    assert_eq!(
        by_subject("message number 3")["flags"],
        json!(["answered", "seen"])
    );
    assert_eq!(by_subject("message number 3")["folders"], json!(["Sent"]));

    // Exported as a Maildir: the same messages, flags in the file names.
    let out = t.dir().join("Exported");
    node.json(&[
        "export",
        "mail",
        "--from",
        "mail-home",
        "--maildir",
        out.to_str().unwrap(),
    ]);
    let mut found = Vec::new();
    let mut names = Vec::new();
    for sub in [out.join("cur"), out.join(".Sent").join("cur")] {
        for entry in std::fs::read_dir(&sub).unwrap() {
            let entry = entry.unwrap();
            names.push(entry.file_name().to_string_lossy().into_owned());
            found.push(std::fs::read(entry.path()).unwrap());
        }
    }
    let distinct: Vec<Vec<u8>> = messages[..4].iter().map(|(_, _, m)| m.clone()).collect();
    assert_eq!(digests(&found), digests(&distinct));
    assert!(names.iter().any(|n| n.ends_with(":2,FS")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(":2,RS")), "{names:?}");

    // A service that may read only subject and from of the INBOX sees exactly that.
    let grant = node.json(&[
        "grant",
        "mailreader",
        "--read",
        "mail-home.subject,mail-home.from",
        "--where",
        "folders=INBOX",
    ]);
    let token = grant["token"].as_str().unwrap();
    let api = Api::new(&node);
    let (status, view) = api.send(
        api.raw(reqwest::Method::GET, "/v1/view/mail-home")
            .bearer_auth(token),
    );
    assert_eq!(status, 200, "{view}");
    let seen = view
        .as_array()
        .or_else(|| view["records"].as_array())
        .unwrap_or_else(|| panic!("{view}"))
        .clone();
    assert_eq!(seen.len(), 2, "{view}");
    for r in &seen {
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, vec!["from", "id", "subject"], "{r}");
    }
    node.stop();
}

#[test]
fn mail_input_that_is_wrong_is_refused_with_its_reason() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let err = one_line_error(&node.run(&["import", "mail", "imap://me@localhost/INBOX"]));
    assert!(err.contains("--password-file"), "{err}");
    let password = t.file("password", "secret\n");
    let err = one_line_error(&node.run(&[
        "import",
        "mail",
        "imap://me@example.org/INBOX",
        "--password-file",
        password.to_str().unwrap(),
    ]));
    assert!(err.contains("imaps://"), "{err}");
    let err =
        one_line_error(&node.run(&["import", "mail", t.dir().join("nothing").to_str().unwrap()]));
    assert!(err.contains("cannot read"), "{err}");
    let err = one_line_error(&node.run(&["import", "mail", "x.mbox", "--into", "notes"]));
    assert!(err.contains("mail-"), "{err}");
    // A batch that is not one: the node says so, and stores nothing.
    let api = Api::new(&node);
    let (status, body) = api.send(
        api.request(reqwest::Method::POST, "/v1/import/mail")
            .body(vec![1u8, 0, 0, 0, 9, 0]),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mail batch"),
        "{body}"
    );
    assert!(records(&node, "mail").is_empty());
    // An import's state: an object of at most 4 KiB under a record id, of a collection
    // that is not the system's; nothing else is stored.
    let state = "/v1/import/mail/state/abc123";
    let (status, _) = api.send(api.request(reqwest::Method::GET, state));
    assert_eq!(status, 404);
    for (body, code) in [
        (b"[1, 2]".to_vec(), 400),
        (b"not json".to_vec(), 400),
        (
            format!("{{\"x\": \"{}\"}}", "y".repeat(5000)).into_bytes(),
            413,
        ),
    ] {
        let (status, answer) = api.send(api.request(reqwest::Method::PUT, state).body(body));
        assert_eq!(status, code, "{answer}");
    }
    let (status, _) = api.send(api.request(reqwest::Method::GET, state));
    assert_eq!(status, 404, "a refused state was stored");
    for (path, code) in [
        ("/v1/import/_access/state/abc", 403),
        ("/v1/import/mail/state/a%2Fb", 400),
    ] {
        let (status, answer) = api.send(api.request(reqwest::Method::PUT, path).body("{}"));
        assert_eq!(status, code, "{path}: {answer}");
    }
    let (status, _) = api.send(
        api.request(reqwest::Method::PUT, state)
            .body(r#"{"uidvalidity": 7, "next_uid": 12}"#),
    );
    assert_eq!(status, 204);
    let (status, got) = api.send(api.request(reqwest::Method::GET, state));
    assert_eq!(
        (status, got),
        (200, json!({"uidvalidity": 7, "next_uid": 12}))
    );
    node.stop();
}

/// A Dovecot of its own on 127.0.0.1 (Debian's `dovecot-imapd`, run as root: `.ci/run`
/// installs it and runs this test), serving `messages` from a Maildir: `(folder,
/// flags, bytes)`. Stopped when dropped.
struct Dovecot {
    dir: tempfile::TempDir,
    port: u16,
}

impl Dovecot {
    fn start(messages: &[(&str, &str, Vec<u8>)]) -> Self {
        Self::with_special_use(messages, &[])
    }

    /// As [`Dovecot::start`], the folders `special` (name, RFC 6154 attribute) marked
    /// for their special use.
    fn with_special_use(messages: &[(&str, &str, Vec<u8>)], special: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let maildir = root.join("mail/alice/Maildir");
        write_maildir(&maildir, messages);
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(root.join("state")).unwrap();
        std::fs::write(root.join("passwd"), "alice:{PLAIN}wonderland\n").unwrap();
        let conf = format!(
            "protocols = imap\nlisten = 127.0.0.1\nbase_dir = {r}/run\nstate_dir = {r}/state\nlog_path = {r}/dovecot.log\n\
             ssl = no\ndisable_plaintext_auth = no\nauth_mechanisms = plain login\n\
             default_internal_user = dovecot\ndefault_internal_group = dovecot\ndefault_login_user = dovenull\n\
             mail_location = maildir:{r}/mail/%u/Maildir\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {r}/passwd\n}}\n\
             userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={r}/mail/%u\n}}\n\
             service imap-login {{\n  chroot =\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             service anvil {{\n  chroot =\n}}\n\
             namespace inbox {{\n  inbox = yes\n{mailboxes}}}\n",
            r = root.display(),
            mailboxes = special
                .iter()
                .map(|(name, usage)| format!(
                    "  mailbox \"{name}\" {{\n    special_use = {usage}\n  }}\n"
                ))
                .collect::<String>(),
        );
        std::fs::write(root.join("dovecot.conf"), conf).unwrap();
        // Dovecot's own users must reach its directories; the mail user owns the mail.
        let status = std::process::Command::new("chmod")
            .args(["-R", "a+rX", root.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = std::process::Command::new("chown")
            .args(["-R", "65534:65534", root.join("mail").to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        let started = std::process::Command::new("dovecot")
            .args(["-c", root.join("dovecot.conf").to_str().unwrap()])
            .status()
            .expect("dovecot is installed (Debian's dovecot-imapd)");
        assert!(started.success());
        eventually("dovecot listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        Dovecot { dir, port }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = std::process::Command::new("doveadm")
            .args([
                "-c",
                self.dir.path().join("dovecot.conf").to_str().unwrap(),
                "stop",
            ])
            .status();
    }
}

/// An IMAP folder (and then every folder) of a real Dovecot: every message byte for
/// byte as the server gives it, with its flags; a wrong password refused; a message in
/// two folders one record; the second import adding only what was not there, and
/// flags changed on the server since (CONDSTORE). Needs
/// root and Dovecot: run by `.ci/run`.
#[test]
#[ignore = "needs root and Debian's dovecot-imapd; run by .ci/run"]
fn an_imap_folder_of_a_real_dovecot_is_imported_and_again_adds_nothing() {
    let messages = vec![
        ("INBOX", "S", message(1)),
        ("INBOX", "F", message(2)),
        ("INBOX", "", message(10)),
        ("Sent", "RS", message(3)),
        ("Archive", "S", message(1)),
    ];
    let dovecot = Dovecot::start(&messages);
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let password = t.file("password", "wonderland\n");
    let url = |folder: &str| format!("imap://alice@127.0.0.1:{}/{folder}", dovecot.port);
    let import = |source: &str| {
        node.json(&[
            "import",
            "mail",
            source,
            "--password-file",
            password.to_str().unwrap(),
        ])
    };
    let report = import(&url("INBOX"));
    assert_eq!(report["imported"], 3, "{report}");
    let listed = records(&node, "mail");
    let subject = |s: &str| listed.iter().find(|r| r["subject"] == s).unwrap().clone();
    assert_eq!(subject("message number 2")["flags"], json!(["flagged"]));
    assert_eq!(subject("message number 1")["folders"], json!(["INBOX"]));
    // A wrong password is refused with the server's word, and nothing changes.
    let wrong = t.file("wrong", "nope\n");
    let err = one_line_error(&node.run(&[
        "import",
        "mail",
        &url("INBOX"),
        "--password-file",
        wrong.to_str().unwrap(),
    ]));
    assert!(err.contains("refused the login"), "{err}");
    // A message arrives: the next import fetches it alone (UIDVALIDITY and the next
    // UID are kept in the vault); --full fetches all again.
    let new = dovecot.dir.path().join("mail/alice/Maildir/new/9.host");
    std::fs::write(&new, message(11)).unwrap();
    let owned = std::process::Command::new("chown")
        .args(["65534:65534", new.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(owned.success());
    let report = import(&url("INBOX"));
    assert_eq!(
        (report["imported"].as_u64(), report["duplicates"].as_u64()),
        (Some(1), Some(0)),
        "{report}"
    );
    let report = import(&url("INBOX"));
    assert_eq!(
        (report["imported"].as_u64(), report["duplicates"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );
    // A flag set on the server since (another mail client answered message 2): with
    // CONDSTORE, the next import brings that message's new flags and nothing else.
    let flagged = std::process::Command::new("doveadm")
        .args([
            "-c",
            dovecot.dir.path().join("dovecot.conf").to_str().unwrap(),
            "flags",
            "add",
            "-u",
            "alice",
            "\\Answered",
            "mailbox",
            "INBOX",
            "header",
            "Subject",
            "message number 2",
        ])
        .status()
        .unwrap();
    assert!(flagged.success());
    let report = import(&url("INBOX"));
    assert_eq!(
        (report["imported"].as_u64(), report["duplicates"].as_u64()),
        (Some(0), Some(1)),
        "{report}"
    );
    let listed = records(&node, "mail");
    let two = listed
        .iter()
        .find(|r| r["subject"] == "message number 2")
        .unwrap();
    assert_eq!(two["flags"], json!(["answered", "flagged"]), "{two}");
    let full = node.json(&[
        "import",
        "mail",
        &url("INBOX"),
        "--password-file",
        password.to_str().unwrap(),
        "--full",
    ]);
    assert_eq!(
        (full["imported"].as_u64(), full["duplicates"].as_u64()),
        (Some(0), Some(4)),
        "{full}"
    );
    // Every folder: the Archive copy joins message 1's record, Sent is new, INBOX has
    // nothing new.
    let report = import(&format!("imap://alice@127.0.0.1:{}", dovecot.port));
    assert_eq!(report["imported"], 1, "{report}");
    assert_eq!(report["duplicates"], 1, "{report}");
    let listed = records(&node, "mail");
    assert_eq!(listed.len(), 5);
    let one = listed
        .iter()
        .find(|r| r["subject"] == "message number 1")
        .unwrap();
    let mut folders: Vec<&str> = one["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    folders.sort_unstable();
    assert_eq!(folders, vec!["Archive", "INBOX"], "{one}");
    // Byte for byte as the server gave them (IMAP serves every line with CRLF).
    let out = t.dir().join("out.mbox");
    node.json(&["export", "mail", "-o", out.to_str().unwrap()]);
    let crlf = |m: &[u8]| {
        let mut out = Vec::new();
        for (i, &b) in m.iter().enumerate() {
            if b == b'\n' && (i == 0 || m[i - 1] != b'\r') {
                out.push(b'\r');
            }
            out.push(b);
        }
        out
    };
    let mut distinct: Vec<Vec<u8>> = messages[..4].iter().map(|(_, _, m)| crlf(m)).collect();
    distinct.push(crlf(&message(11)));
    assert_eq!(
        digests(&read_mbox(&std::fs::read(&out).unwrap())),
        digests(&distinct)
    );
    node.stop();
}

/// Special-use folders (RFC 6154) of a real Dovecot, all imported at once: a sent
/// folder by any name is recorded as "Sent"; the folder of all messages (as Gmail's
/// "All Mail") adds no folder to a message found elsewhere and keeps one found only
/// there as archived; the folder of flagged messages (Gmail's "Starred") is not
/// imported unless named. Needs root and Dovecot: run by `.ci/run`.
#[test]
#[ignore = "needs root and Debian's dovecot-imapd; run by .ci/run"]
fn special_use_folders_map_to_their_use_without_duplicates() {
    let messages = vec![
        ("INBOX", "S", message(1)),
        ("Gesendet", "S", message(3)),
        ("All Mail", "S", message(1)),
        ("All Mail", "S", message(3)),
        ("All Mail", "", message(12)),
        ("Starred", "F", message(1)),
    ];
    let dovecot = Dovecot::with_special_use(
        &messages,
        &[
            ("Gesendet", "\\Sent"),
            ("All Mail", "\\All"),
            ("Starred", "\\Flagged"),
        ],
    );
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let password = t.file("password", "wonderland\n");
    let import = |folder: &str| {
        node.json(&[
            "import",
            "mail",
            &format!("imap://alice@127.0.0.1:{}{folder}", dovecot.port),
            "--password-file",
            password.to_str().unwrap(),
        ])
    };
    let report = import("");
    assert_eq!(
        (report["imported"].as_u64(), report["duplicates"].as_u64()),
        (Some(3), Some(2)),
        "{report}"
    );
    let listed = records(&node, "mail");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let folders = |subject: &str| {
        listed
            .iter()
            .find(|r| r["subject"] == subject)
            .unwrap_or_else(|| panic!("{subject} in {listed:?}"))["folders"]
            .clone()
    };
    assert_eq!(folders("message number 1"), json!(["INBOX"]));
    assert_eq!(folders("message number 3"), json!(["Sent"]));
    assert_eq!(folders("message number 12"), json!(["Archive"]));
    // Named, the folder of flagged messages is imported as a view: nothing new.
    let report = import("/Starred");
    assert_eq!(
        (report["imported"].as_u64(), report["duplicates"].as_u64()),
        (Some(0), Some(1)),
        "{report}"
    );
    assert_eq!(records(&node, "mail"), listed);
    node.stop();
}

/// Every message of a Maildir++ tree (INBOX at the top, folders in `.NAME`), by the
/// SHA-256 of its bytes with CRLF read as LF (mbsync stores LF, Hearth what the server
/// sent) and without mbsync's own `X-TUID` header: the folders it is in and its flags
/// (the letters after `:2,`).
fn maildir_tree(root: &Path) -> BTreeMap<String, (Vec<String>, String)> {
    let mut out: BTreeMap<String, (Vec<String>, String)> = BTreeMap::new();
    let mut folders = vec![("INBOX".to_owned(), root.to_path_buf())];
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(folder) = name.strip_prefix('.')
            && entry.path().join("cur").is_dir()
        {
            folders.push((folder.to_owned(), entry.path()));
        }
    }
    for (folder, dir) in folders {
        for sub in ["cur", "new"] {
            for file in std::fs::read_dir(dir.join(sub)).unwrap() {
                let path = file.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let mut flags: Vec<char> = name
                    .rsplit_once(":2,")
                    .map(|(_, f)| f.chars().collect())
                    .unwrap_or_default();
                flags.sort_unstable();
                let bytes = std::fs::read(&path).unwrap();
                let mut lf = Vec::with_capacity(bytes.len());
                for (i, &b) in bytes.iter().enumerate() {
                    if !(b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
                        lf.push(b);
                    }
                }
                // mbsync adds a header of its own (its tracking id) to what it stores.
                let head_end = lf
                    .windows(2)
                    .position(|w| w == b"\n\n")
                    .map_or(lf.len(), |p| p + 1);
                if let Some(at) = lf[..head_end]
                    .split_inclusive(|&b| b == b'\n')
                    .scan(0, |offset, line| {
                        let start = *offset;
                        *offset += line.len();
                        Some((start, line))
                    })
                    .find(|(_, line)| line.starts_with(b"X-TUID: "))
                {
                    lf.drain(at.0..at.0 + at.1.len());
                }
                let entry = out.entry(hex(&Sha256::digest(&lf))).or_default();
                entry.0.push(folder.clone());
                entry.0.sort();
                entry.1 = flags.into_iter().collect();
            }
        }
    }
    out
}

/// The same Dovecot mailbox fetched by mbsync (isync, the reference IMAP syncer) and
/// imported by Hearth: the same messages byte for byte (line ends aside), in the same
/// folders (a message in two folders is one record in Hearth, and a copy in each when
/// exported as a Maildir), with the same flags. Needs root, Dovecot and mbsync: run by `.ci/run`.
#[test]
#[ignore = "needs root, Debian's dovecot-imapd and isync; run by .ci/run"]
fn hearth_and_mbsync_fetch_the_same_mailbox() {
    let messages = vec![
        ("INBOX", "S", message(1)),
        ("INBOX", "FS", message(2)),
        ("INBOX", "", message(10)),
        ("Sent", "RS", message(3)),
        ("Archive", "S", message(4)),
        ("Archive", "S", message(7)),
        ("Archive", "S", message(1)),
        ("Lists.Rust", "", message(14)),
    ];
    let dovecot = Dovecot::start(&messages);
    let t = TestHome::new();

    // mbsync, pulling every folder into a Maildir++ tree.
    let by_mbsync = t.dir().join("mbsync");
    std::fs::create_dir_all(&by_mbsync).unwrap();
    let config = t.file(
        "mbsyncrc",
        format!(
            "IMAPAccount dove\nHost 127.0.0.1\nPort {port}\nUser alice\nPass wonderland\n\
             SSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore dove-remote\nAccount dove\n\n\
             MaildirStore local\nInbox {dir}\nSubFolders Maildir++\n\n\
             Channel dove\nFar :dove-remote:\nNear :local:\nPatterns *\nCreate Near\nSync Pull\nSyncState *\n",
            port = dovecot.port,
            dir = by_mbsync.display()
        ),
    );
    let synced = std::process::Command::new("mbsync")
        .args(["-c", config.to_str().unwrap(), "-a", "-q"])
        .output()
        .expect("mbsync is installed (Debian's isync)");
    assert!(
        synced.status.success(),
        "mbsync: {}",
        String::from_utf8_lossy(&synced.stderr)
    );

    // Hearth, importing every folder and exporting them as Maildir++.
    let node = spawn_node(t.path(), &[]);
    let password = t.file("password", "wonderland\n");
    let report = node.json(&[
        "import",
        "mail",
        &format!("imap://alice@127.0.0.1:{}", dovecot.port),
        "--password-file",
        password.to_str().unwrap(),
    ]);
    assert_eq!(report["imported"], 7, "{report}");
    let by_hearth = t.dir().join("hearth");
    node.json(&["export", "mail", "--maildir", by_hearth.to_str().unwrap()]);
    node.stop();

    let mbsync = maildir_tree(&by_mbsync);
    assert_eq!(mbsync.len(), 7, "mbsync fetched {mbsync:?}");
    assert_eq!(maildir_tree(&by_hearth), mbsync);
}
