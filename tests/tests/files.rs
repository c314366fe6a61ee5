//! Files (documents, photos, music, books) as records of the `files` collection, from
//! the CLI and the owner API: two files with the same bytes are two files, folders
//! hold what they list, moves and copies carry everything, wrong paths are refused,
//! and files reach the vault's other devices.

use hearth_tests::*;
use reqwest::Method;
use serde_json::Value;

fn said(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn names(node: &NodeProcess, folder: &str) -> Vec<String> {
    node.json(&["file", "ls", folder])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["path"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The same bytes stored under two names are two files naming one stored copy:
/// both are listed, removing one leaves the other whole, and the stored bytes cannot
/// be removed from under the file that still names them.
#[test]
fn two_files_with_the_same_bytes_are_two_files() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let a = t.file("a.txt", "the same words\n");
    let b = t.file("b-copy.txt", "the same words\n");
    let first = node.json(&["file", "put", a.to_str().unwrap(), "/Docs/"]);
    let second = node.json(&["file", "put", b.to_str().unwrap(), "/Docs/"]);
    assert_eq!(first["path"], "/Docs/a.txt");
    assert_eq!(second["path"], "/Docs/b-copy.txt");
    assert_eq!(first["blob"], second["blob"], "one stored copy");
    assert_ne!(first["id"], second["id"], "two records");
    assert_eq!(first["type"], "text/plain");
    assert_eq!(names(&node, "/Docs"), ["a.txt", "b-copy.txt"]);
    assert_eq!(node.json(&["blob", "ls"]).as_array().unwrap().len(), 1);

    let blob = first["blob"].as_str().unwrap();
    let out = node.run(&["blob", "rm", blob]);
    assert!(!out.status.success());
    assert!(said(&out).contains("named by 2 records"), "{}", said(&out));

    let removed = node.json(&["file", "rm", "/Docs/a.txt"]);
    assert_eq!(
        (removed["files"].as_u64(), removed["folders"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(names(&node, "/Docs"), ["b-copy.txt"]);
    let out = node.run(&["file", "get", "/Docs/b-copy.txt"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"the same words\n");
    let out = node.run(&["file", "get", "/Docs/a.txt"]);
    assert!(!out.status.success());
    assert!(
        said(&out).contains("no file or folder /Docs/a.txt"),
        "{}",
        said(&out)
    );
    node.stop();
}

/// Folders: a file needs its folder (409 through the API unless asked to make it),
/// a folder moves and copies with everything in it (a copy uses no new space), a
/// move never lands inside itself or over something without being asked, removing a
/// folder removes all it holds, and everything is still there after a restart. The
/// bytes come back with ranges, under the file's own name and type.
#[test]
fn folders_hold_what_they_list_through_moves_copies_and_restarts() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    let song: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (status, body) = api.send(
        api.request(Method::PUT, "/v1/files/Music/Album/01%20Intro.flac")
            .body(song.clone()),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("folder /Music does not exist"),
        "{body}"
    );
    let (status, body) = api.send(
        api.request(
            Method::PUT,
            "/v1/files/Music/Album/01%20Intro.flac?parents=true&modified=1700000000",
        )
        .header("Content-Type", "audio/flac")
        .body(song.clone()),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["path"], "/Music/Album/01 Intro.flac");
    assert_eq!(
        (body["size"].as_u64(), body["modified"].as_i64()),
        (Some(song.len() as u64), Some(1_700_000_000))
    );
    // The same path again replaces the content: 200, one file.
    let (status, _) = api.send(
        api.request(Method::PUT, "/v1/files/Music/Album/01%20Intro.flac")
            .header("Content-Type", "audio/flac")
            .body(song.clone()),
    );
    assert_eq!(status, 200);
    let response = api
        .request(Method::GET, "/v1/files/Music/Album/01%20Intro.flac")
        .header("Range", "bytes=100-199")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 206);
    assert_eq!(response.headers()["content-type"], "audio/flac");
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("01%20Intro.flac"),
        "{:?}",
        response.headers()
    );
    assert_eq!(response.bytes().unwrap().as_ref(), &song[100..200]);

    let notes = t.file("notes.md", "# notes\n");
    node.json(&["file", "put", notes.to_str().unwrap(), "/Music/Album/"]);
    node.json(&["file", "mkdir", "/Archive"]);
    node.json(&["file", "cp", "/Music", "/Archive/"]);
    node.json(&["file", "mv", "/Music/Album", "/Music/Best of"]);
    assert_eq!(names(&node, "/Music"), ["Best of"]);
    assert_eq!(
        names(&node, "/Music/Best of"),
        ["01 Intro.flac", "notes.md"]
    );
    assert_eq!(
        names(&node, "/Archive/Music/Album"),
        ["01 Intro.flac", "notes.md"]
    );
    assert_eq!(
        node.json(&["blob", "ls"]).as_array().unwrap().len(),
        2,
        "a copy stores nothing new"
    );
    // A folder into itself, and over something that is there, are refused.
    let out = node.run(&["file", "mv", "/Music", "/Music/Best of/Music"]);
    assert!(said(&out).contains("is inside /Music"), "{}", said(&out));
    let out = node.run(&["file", "mv", "/Archive/Music", "/Music"]);
    assert!(
        said(&out).contains("/Music already exists"),
        "{}",
        said(&out)
    );
    node.json(&["file", "mv", "--force", "/Archive/Music", "/Music"]);
    assert_eq!(names(&node, "/Music"), ["Album"]);
    assert_eq!(names(&node, "/Archive"), Vec::<String>::new());

    // Wrong paths and names are refused with the reason; nothing is stored.
    for (bad, reason) in [
        ("/Music/../x", "no name may be . or .."),
        ("/a\u{7}b", "control character"),
    ] {
        let source = t.file("x.txt", "x");
        let out = node.run(&["file", "put", source.to_str().unwrap(), bad]);
        assert!(!out.status.success());
        assert!(said(&out).contains(reason), "{bad}: {}", said(&out));
    }
    let (status, body) = api.send(api.request(Method::PUT, "/v1/files/a%5Cb").body("x"));
    assert_eq!(status, 400, "{body}");
    let (status, _) = api.send(api.request(Method::DELETE, "/v1/files/nothing/here"));
    assert_eq!(status, 404);
    assert_eq!(names(&node, "/"), ["Archive", "Music"]);

    let removed = node.json(&["file", "rm", "/Music"]);
    assert_eq!(
        (removed["files"].as_u64(), removed["folders"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(names(&node, "/"), ["Archive"]);
    // No record of a removed folder's content is left behind.
    let records = node.json(&["ls", "files"]);
    let paths: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert!(paths.iter().all(|p| !p.starts_with("/Music")), "{paths:?}");

    node.json(&["file", "put", notes.to_str().unwrap(), "/Archive/"]);
    let home = t.path().to_owned();
    node.stop();
    let node = spawn_node(&home, &[]);
    assert_eq!(names(&node, "/Archive"), ["notes.md"]);
    let out = node.run(&["file", "get", "/Archive/notes.md"]);
    assert_eq!(out.stdout, b"# notes\n");
    let check = node.run(&["check"]);
    assert!(check.status.success(), "{}", said(&check));
    node.stop();
}

/// A file stored on one device is on the other, bytes and all, and a removal there
/// reaches back.
#[test]
fn files_reach_the_other_devices() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b = join_and_spawn(&a, &dir.path().join("b"));
    let photo = dir.path().join("beach.jpg");
    std::fs::write(&photo, b"\xff\xd8\xff not really a jpeg").unwrap();
    a.json(&["file", "put", photo.to_str().unwrap(), "/Photos/2026/"]);
    let got = eventually("the photo on B", || {
        let out = b.run(&["file", "get", "/Photos/2026/beach.jpg"]);
        out.status.success().then_some(out.stdout)
    });
    assert_eq!(got, b"\xff\xd8\xff not really a jpeg");
    let listed: Value = b.json(&["file", "ls", "/Photos/2026"]);
    assert_eq!(listed["entries"][0]["type"], "image/jpeg");
    b.json(&["file", "rm", "/Photos/2026/beach.jpg"]);
    eventually("the removal on A", || {
        a.json(&["file", "ls", "/Photos/2026"])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    a.stop();
    b.stop();
}
