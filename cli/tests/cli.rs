//! The `hearth` binary on its own: help, argument errors, and what it says when there
//! is no vault or no node. (Tests with running nodes live in the `hearth-tests` crate;
//! this file also makes `cargo test --workspace` build the binary they drive.)

use std::process::{Command, Output};

fn hearth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env_remove("HEARTH_HOME")
        .env_remove("HEARTH_PASSPHRASE")
        .output()
        .expect("run hearth")
}

fn stderr_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line on stderr: {err:?}"
    );
    err
}

#[test]
fn help_names_every_command() {
    let out = hearth(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "init",
        "up",
        "status",
        "put",
        "get",
        "patch",
        "ls",
        "rm",
        "collections",
        "blob",
    ] {
        assert!(help.contains(command), "help lacks {command}: {help}");
    }
}

#[test]
fn a_home_without_a_vault_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_str().unwrap();
    let out = hearth(&["--home", home, "ls", "contacts"]);
    assert!(!out.status.success());
    assert!(stderr_line(&out).contains("is not a Hearth vault"));
}

#[test]
fn no_running_node_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("v");
    let home = home.to_str().unwrap();
    let init = hearth(&["init", "--home", home, "--json"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    assert!(made["peer_id"].as_str().unwrap().starts_with("12D3KooW"));
    assert_eq!(made["passphrase"], false);

    let out = hearth(&["status", "--home", home]);
    assert!(!out.status.success());
    let line = stderr_line(&out);
    assert!(
        line.contains("no Hearth node is running") && line.contains("up"),
        "{line}"
    );

    // A stale api.addr (a node killed with -9) reads the same way.
    std::fs::write(dir.path().join("v/api.addr"), "127.0.0.1:9\n").unwrap();
    let out = hearth(&["--json", "get", "contacts", "x", "--home", home]);
    assert!(stderr_line(&out).contains("no Hearth node is running"));
}

#[test]
fn bad_arguments_fail_with_usage() {
    let out = hearth(&["put"]);
    assert!(!out.status.success());
    let out = hearth(&["up", "--api", "not-an-address"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api"));
}
