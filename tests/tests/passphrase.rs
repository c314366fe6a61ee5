//! `hearth passphrase`: set, change and remove the passphrase of a vault with data in
//! it; a wrong old passphrase changes nothing; the node opens with the new one only.

use hearth_tests::*;
use serde_json::json;

#[test]
fn set_change_and_remove_the_passphrase_of_a_vault_with_data() {
    let t = TestHome::new();
    let home = t.path();
    cli_json(home, &["init"]);
    let node = spawn_node(home, &[]);
    node.json(&["put", "diary", "d1", r#"{"text": "kept"}"#]);
    node.stop();
    let first = t.file("first", "first passphrase\n");
    let second = t.file("second", "second passphrase\n");
    let (first, second) = (first.to_str().unwrap(), second.to_str().unwrap());

    let set = cli_json(home, &["passphrase", "--new-passphrase-file", first]);
    assert_eq!(set["passphrase"], true);
    for file in files_under(home) {
        assert!(
            !contains_bytes(&std::fs::read(&file).unwrap(), b"first passphrase"),
            "{} holds the passphrase",
            file.display()
        );
    }
    let err = one_line_error(&cli(home, &["passphrase", "--new-passphrase-file", second]));
    assert!(err.contains("passphrase"), "{err}");

    // A wrong old passphrase changes nothing.
    let keys_before = std::fs::read(home.join("keys")).unwrap();
    let err = one_line_error(&cli(
        home,
        &[
            "passphrase",
            "--passphrase-file",
            second,
            "--new-passphrase-file",
            second,
        ],
    ));
    assert!(err.contains("passphrase"), "{err}");
    assert_eq!(std::fs::read(home.join("keys")).unwrap(), keys_before);
    let err = one_line_error(&cli(home, &["passphrase", "--passphrase-file", first]));
    assert!(err.contains("--new-passphrase-file"), "{err}");

    let changed = cli_json(
        home,
        &[
            "passphrase",
            "--passphrase-file",
            first,
            "--new-passphrase-file",
            second,
        ],
    );
    assert_eq!(changed["passphrase"], true);
    let refused = hearth(&[
        "--home",
        t.as_str(),
        "up",
        "--no-mesh",
        "--api",
        "127.0.0.1:0",
        "--passphrase-file",
        first,
    ]);
    assert!(one_line_error(&refused).contains("passphrase"));
    let node = spawn_node(home, &["--passphrase-file", second]);
    assert_eq!(
        node.json(&["get", "diary", "d1"]),
        json!({"id": "d1", "text": "kept"})
    );
    node.stop();

    let removed = cli_json(
        home,
        &["passphrase", "--passphrase-file", second, "--remove"],
    );
    assert_eq!(removed["passphrase"], false);
    let node = spawn_node(home, &[]);
    assert_eq!(node.json(&["get", "diary", "d1"])["text"], "kept");
    node.stop();
}
