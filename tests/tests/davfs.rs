//! The file share mounted as a file system by davfs2 (Linux's WebDAV mount, over
//! FUSE): what is made, read, renamed and removed through the mount is what the owner
//! sees, and what the owner put is in the mount. Needs root (a mount) and davfs2:
//! ignored by `cargo test`, run by `.ci/run` as root, which installs davfs2.

use std::path::Path;
use std::process::Command;

use hearth_tests::*;

fn said(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A davfs2 mount that is undone when dropped (also when the test fails).
struct Mount {
    at: std::path::PathBuf,
    mounted: bool,
}

impl Mount {
    fn new(url: &str, at: &Path, conf: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let mut command = Command::new("mount");
        command.args(["-t", "davfs", url, at.to_str().unwrap(), "-o"]);
        command.arg(format!("conf={}", conf.display()));
        let out = run_with_deadline(command, None);
        assert!(out.status.success(), "mount: {}", said(&out));
        Self {
            at: at.to_owned(),
            mounted: true,
        }
    }

    /// Unmounts: davfs2 uploads what is still waiting, and returns once it has.
    fn unmount(&mut self) {
        let mut command = Command::new("umount");
        command.arg(&self.at);
        let out = run_with_deadline(command, None);
        assert!(out.status.success(), "umount: {}", said(&out));
        self.mounted = false;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    names.sort();
    names
}

#[test]
#[ignore = "needs root and davfs2: run by .ci/run as root, which installs davfs2"]
fn davfs2_mounts_the_share_and_what_it_writes_is_the_owners() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let (_, password) =
        grant_app_password(&node, "davfs2", &["--read", "files", "--write", "files"]);
    let before = t.file("before.txt", "put by the owner before the mount");
    node.json(&["file", "put", before.to_str().unwrap(), "/Docs/"]);

    // davfs2 drops root for its own user once mounted: the mount point must be
    // reachable by it (its cache stays in /var/cache/davfs2, emptied at unmount).
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let url = format!("{}/files/", node.base_url());
    let secrets = t.file("secrets", format!("{url} me {password}\n"));
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // Uploads when a file is closed (not 10 s later), and listings read again at
    // once. `buf_size 64`: davfs2 1.6's default buffer makes Linux 6.16 and later
    // refuse its directory reads (EINVAL; davfs2 issue #22).
    let conf = t.file(
        "davfs2.conf",
        format!(
            "secrets {}\ndelay_upload 0\ndir_refresh 1\nfile_refresh 1\nbuf_size 64\n",
            secrets.display(),
        ),
    );
    let at = work.path().join("mnt");
    let mut mount = Mount::new(&url, &at, &conf);

    // What the owner put is there.
    assert_eq!(names(&at.join("Docs")), ["before.txt"]);
    assert_eq!(
        std::fs::read_to_string(at.join("Docs/before.txt")).unwrap(),
        "put by the owner before the mount"
    );
    // Made, written, renamed and removed through the mount.
    let bytes = noise_bytes(300_000);
    std::fs::create_dir_all(at.join("Photos/2026")).unwrap();
    std::fs::write(at.join("Photos/2026/beach.jpg"), &bytes).unwrap();
    std::fs::write(at.join("Docs/draft.txt"), b"first words").unwrap();
    std::fs::rename(at.join("Docs/draft.txt"), at.join("Docs/final.txt")).unwrap();
    std::fs::write(at.join("Docs/gone.txt"), b"soon gone").unwrap();
    std::fs::remove_file(at.join("Docs/gone.txt")).unwrap();
    assert_eq!(
        std::fs::read(at.join("Photos/2026/beach.jpg")).unwrap(),
        bytes
    );
    mount.unmount();

    // The owner sees what the mount made, byte for byte.
    let docs: Vec<String> = node.json(&["file", "ls", "/Docs"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(docs, ["/Docs/before.txt", "/Docs/final.txt"]);
    let out = work.path().join("beach.jpg");
    node.run(&[
        "file",
        "get",
        "/Photos/2026/beach.jpg",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    // Mounted again: what the owner changed meanwhile is there.
    let later = t.file("later.txt", "put while nothing was mounted");
    node.json(&["file", "put", later.to_str().unwrap(), "/Docs/"]);
    let mut mount = Mount::new(&url, &at, &conf);
    assert_eq!(
        names(&at.join("Docs")),
        ["before.txt", "final.txt", "later.txt"]
    );
    assert_eq!(
        std::fs::read_to_string(at.join("Docs/final.txt")).unwrap(),
        "first words"
    );
    mount.unmount();
    node.stop();
}
