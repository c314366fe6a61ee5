//! Keys that rotate, with real `hearth` processes: removing a device makes a new epoch
//! key that reaches the other devices, new grants are signed with it and accepted on
//! every device, and the removed device's HOME, kept whole, opens and signs nothing of
//! the new epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hearth_node::blobs::CHUNK_DOMAIN;
use hearth_node::epochs::{Epoch, View};
use hearth_protocol::seal::Binding;
use hearth_tests::*;
use reqwest::Method;
use serde_json::Value;

fn service_get(node: &NodeProcess, token: &str, path: &str) -> (u16, Value) {
    let api = Api::new(node);
    api.send(api.raw(Method::GET, path).bearer_auth(token))
}

fn epochs_of(node: &NodeProcess) -> Vec<Epoch> {
    node.json(&["ls", "_epochs"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| Epoch::from_record(r).expect("an epoch record"))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn removing_a_device_rotates_the_keys_and_its_kept_home_opens_and_signs_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b = join_and_spawn(&a, &dir.path().join("b"));
    let x_home = dir.path().join("x");
    let x = join_and_spawn(&a, &x_home);
    // Epoch 0 (the vault's first keys) until a device leaves.
    let keys = a.json(&["keys"]);
    assert_eq!(
        (keys["epoch"].as_u64(), &keys["held"]),
        (Some(0), &Value::Bool(true))
    );
    a.json(&["put", "contacts", "ada", r#"{"name": "Ada"}"#]);
    let old = a.json(&["grant", "before", "--read", "contacts"]);
    let old_token = old["token"].as_str().unwrap().to_owned();
    eventually("B knows X and its exchange key", || {
        let devices = b.json(&["devices"]);
        (devices.as_array()?.len() == 3).then_some(())
    });
    let x_peer = x.peer_id.clone();
    x.stop();

    let removed = a.json(&["devices", "remove", &x_peer]);
    assert_eq!(removed["epoch"], 1, "{removed}");
    let keys = a.json(&["keys"]);
    assert_eq!(keys["epoch"], 1);
    assert_eq!(keys["held"], true);
    let holders: BTreeSet<String> = serde_json::from_value(keys["sealed_to"].clone()).unwrap();
    assert_eq!(holders, set(&[&a.peer_id, &b.peer_id]));
    let text = String::from_utf8(a.run(&["keys"]).stdout).unwrap();
    assert!(text.contains("epoch 1 (made by"), "{text}");

    // The epoch reaches B, sealed to it.
    eventually("B holds epoch 1", || {
        let keys = b.json(&["keys"]);
        (keys["epoch"] == 1 && keys["held"] == true).then_some(())
    });
    // A grant made on B now is signed under epoch 1, and A accepts its token; the
    // grant made before still works.
    let new = b.json(&["grant", "after", "--read", "contacts"]);
    let new_token = new["token"].as_str().unwrap().to_owned();
    eventually("A accepts B's new token", || {
        (service_get(&a, &new_token, "/v1/view/contacts").0 == 200).then_some(())
    });
    assert_eq!(service_get(&b, &old_token, "/v1/view/contacts").0, 200);

    // On demand: a second rotation, followed by B.
    let rotated = a.json(&["keys", "rotate"]);
    assert_eq!(
        (rotated["epoch"].as_u64(), &rotated["rotated"]),
        (Some(2), &Value::Bool(true))
    );
    eventually("B holds epoch 2", || {
        let keys = b.json(&["keys"]);
        (keys["epoch"] == 2 && keys["held"] == true).then_some(())
    });
    // (Two devices that rotate at once both write an epoch; both pick the same one.)
    // A device paired after the rotation is given the current key (and the older
    // ones) by a device that holds it, and then makes grants the others accept.
    let c = join_and_spawn(&a, &dir.path().join("c"));
    eventually("C holds epoch 2", || {
        let keys = c.json(&["keys"]);
        (keys["epoch"] == 2 && keys["held"] == true && keys["epochs_held"] == keys["epochs"])
            .then_some(())
    });
    let from_c = c.json(&["grant", "from-c", "--read", "contacts"]);
    let from_c = from_c["token"].as_str().unwrap().to_owned();
    eventually("A accepts C's token", || {
        (service_get(&a, &from_c, "/v1/view/contacts").0 == 200).then_some(())
    });
    c.stop();
    let epochs = epochs_of(&a);
    assert!(epochs.len() >= 2);
    assert_eq!(epochs.iter().map(|e| e.n).max(), Some(2));

    // X's HOME, kept whole: its keys open no epoch key, and cannot sign under the
    // current one even with every record in hand.
    let x_keys = hearth_node::keys::open(&hearth_node::home::Home::new(&x_home), None).unwrap();
    let vault_id = x_keys.vault_id;
    for epoch in &epochs {
        assert!(epoch.verifies(&vault_id));
        assert!(!epoch.sealed.contains_key(&x_peer));
        assert!(epoch.open(&x_keys.identity()).is_none());
    }
    let mut view = View {
        epochs: epochs.clone(),
        ..View::default()
    };
    for d in a.json(&["devices"]).as_array().unwrap() {
        let peer = d["id"].as_str().unwrap().parse().unwrap();
        if d["removed_at"].is_u64() {
            view.removed.push(peer);
        } else {
            view.members.push(hearth_node::epochs::Member {
                peer,
                exchange: None,
            });
        }
    }
    x_keys.epochs.refresh(&view, &x_keys.identity());
    assert!(x_keys.epochs.signer().is_err());
    drop(x_keys);

    // X's node, started from that HOME on its own, does not take the new token.
    let x = spawn_node(&x_home, &["--no-mesh"]);
    let (status, body) = service_get(&x, &new_token, "/v1/view/contacts");
    assert_eq!(status, 401, "{body}");
    x.stop();
    a.stop();
    b.stop();
}

/// Every sealed value of a store (tree, key, value) and every chunk file (its hash,
/// its bytes), read from a stopped node's HOME.
type Sealed = (
    BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>,
    BTreeMap<[u8; 32], Vec<u8>>,
);

fn sealed_in(home: &Path) -> Sealed {
    let db = sled::open(home.join("store")).expect("the store opens");
    let mut values = BTreeMap::new();
    for name in db.tree_names() {
        if name.as_ref() == b"__sled__default" {
            continue;
        }
        for entry in db.open_tree(&name).unwrap().iter() {
            let (key, value) = entry.unwrap();
            values.insert((name.to_vec(), key.to_vec()), value.to_vec());
        }
    }
    let mut chunks = BTreeMap::new();
    for file in files_under(&home.join("blobs")) {
        let shard = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let name = file.file_name().unwrap().to_str().unwrap();
        let Ok(hash) = data_encoding::HEXLOWER.decode(format!("{shard}{name}").as_bytes()) else {
            continue;
        };
        if let Ok(hash) = <[u8; 32]>::try_from(hash) {
            chunks.insert(hash, std::fs::read(&file).unwrap());
        }
    }
    (values, chunks)
}

/// A device's keys as its HOME holds them: the key file, and the epoch keys its store
/// kept (loaded by opening the store).
fn keys_of(home: &Path) -> std::sync::Arc<hearth_node::keys::VaultKeys> {
    let home = hearth_node::home::Home::new(home);
    let keys = std::sync::Arc::new(hearth_node::keys::open(&home, None).unwrap());
    let store = hearth_node::store::Store::open(&home.store_dir(), keys.clone()).unwrap();
    drop(store);
    keys
}

/// What a device writes after another was removed is sealed at rest under the new
/// epoch's key: a copy of its store and blobs, tried with every key the removed
/// device's HOME holds, gives none of it (what was written before still opens: the
/// removed device held that key, and had those values).
#[test]
fn what_is_kept_after_a_removal_does_not_open_with_the_removed_devices_keys() {
    let dir = tempfile::tempdir().unwrap();
    let a_home = dir.path().join("a");
    let a = spawn_node(&a_home, &[]);
    let x_home = dir.path().join("x");
    let x = join_and_spawn(&a, &x_home);
    let x_peer = x.peer_id.clone();
    a.json(&["put", "contacts", "before", r#"{"name": "canary before"}"#]);
    a.blob_put(dir.path(), "before.bin", &[1u8; 300_000]);
    x.stop();
    assert_eq!(a.json(&["devices", "remove", &x_peer])["epoch"], 1);
    a.stop();
    let (values_before, chunks_before) = sealed_in(&a_home);

    let a = spawn_node(&a_home, &[]);
    a.json(&["put", "contacts", "after", r#"{"name": "canary after"}"#]);
    a.json(&["put", "notes", "n1", r#"{"text": "a new collection"}"#]);
    a.blob_put(dir.path(), "after.bin", &[2u8; 300_000]);
    a.stop();
    let (values_after, chunks_after) = sealed_in(&a_home);

    let x_keys = keys_of(&x_home);
    let a_keys = keys_of(&a_home);
    let opens = |keys: &hearth_node::keys::VaultKeys, tree: &[u8], key: &[u8], value: &[u8]| {
        keys.open_at_rest(Binding::new(tree, key), value).is_ok()
    };
    // The test can see: X's keys open what A kept before (chunks and values alike).
    assert!(
        values_before
            .iter()
            .any(|((t, k), v)| opens(&x_keys, t, k, v))
    );
    assert!(
        chunks_before
            .iter()
            .any(|(h, c)| opens(&x_keys, CHUNK_DOMAIN, h, c))
    );
    let new_values: Vec<_> = values_after
        .iter()
        .filter(|(at, v)| values_before.get(*at) != Some(*v))
        .collect();
    let new_chunks: Vec<_> = chunks_after
        .iter()
        .filter(|(h, _)| !chunks_before.contains_key(*h))
        .collect();
    assert!(new_values.len() >= 3, "{} new values", new_values.len());
    assert!(!new_chunks.is_empty());
    for ((tree, key), value) in &new_values {
        if tree.as_slice() == b"epoch_keys" {
            continue; // sealed under A's own key, not an at-rest key
        }
        assert!(
            opens(&a_keys, tree, key, value),
            "A opens its own value in {}",
            String::from_utf8_lossy(tree)
        );
        assert!(
            !opens(&x_keys, tree, key, value),
            "X's keys open a value A kept after X's removal, in tree {}",
            String::from_utf8_lossy(tree)
        );
    }
    for (hash, chunk) in &new_chunks {
        assert!(opens(&a_keys, CHUNK_DOMAIN, *hash, chunk));
        assert!(!opens(&x_keys, CHUNK_DOMAIN, *hash, chunk));
    }
    // A's kept epoch key itself opens only with A's own key file.
    let kept = values_after
        .iter()
        .filter(|((t, _), _)| t.as_slice() == b"epoch_keys")
        .count();
    assert_eq!(kept, 1);
}

/// `hearth recovery-kit`: its words, its file (plain or under a passphrase, with a QR
/// code) and its shares each bring back a secret that opens every epoch key of the
/// vault, on every device; a new kit replaces the old one, which opens nothing made
/// afterwards.
#[test]
fn a_recovery_kit_opens_every_epoch_and_a_new_one_replaces_it() {
    use hearth_node::recovery::{RecoverySecret, Share};

    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let b = join_and_spawn(&a, &dir.path().join("b"));
    let opens_all = |node: &NodeProcess, secret: &RecoverySecret| {
        let kit = secret.public();
        let seed = secret.exchange_seed();
        let vault: [u8; 16] = data_encoding::HEXLOWER
            .decode(
                node.json(&["status"])["vault_id"]
                    .as_str()
                    .unwrap()
                    .as_bytes(),
            )
            .unwrap()
            .try_into()
            .unwrap();
        let epochs = epochs_of(node);
        !epochs.is_empty()
            && epochs
                .iter()
                .all(|e| e.open_as(&vault, &kit.recipient(), &seed).is_some())
    };

    // The words: a kit on epoch 0 calls for an epoch key to seal to it.
    let made = a.json(&["recovery-kit"]);
    let words = made["words"].as_str().unwrap();
    assert_eq!(words.split(' ').count(), 24);
    assert_eq!(made["epoch"], 1, "{made}");
    let first = RecoverySecret::from_words(words).unwrap();
    assert_eq!(first.public().id, made["kit"].as_str().unwrap());
    assert!(opens_all(&a, &first));
    eventually("B seals to the kit too", || {
        (b.json(&["keys"])["epoch"] == 1 && opens_all(&b, &first)).then_some(())
    });
    let status = a.json(&["status"]);
    assert_eq!(
        (
            &status["key_epoch"],
            &status["key_held"],
            &status["recovery_kit"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(true),
            &made["kit"]
        )
    );
    let shown = String::from_utf8(a.run(&["status"]).stdout).unwrap();
    assert!(
        shown.contains(&format!(
            "keys     epoch 1; recovery kit {}",
            first.public().id
        )),
        "{shown}"
    );
    // The person checks the words they wrote down.
    let a_home = dir.path().join("a");
    let home = a_home.to_str().unwrap();
    let check = |input: &str, extra: &[&str]| {
        let mut args = vec!["--home", home, "recovery-kit", "--check"];
        args.extend_from_slice(extra);
        hearth_with_stdin(&args, input.as_bytes())
    };
    let checked = check(words, &[]);
    assert!(checked.status.success(), "{}", one_line_error(&checked));
    assert!(String::from_utf8_lossy(&checked.stdout).contains("is the vault's recovery kit"));
    let mut wrong: Vec<&str> = words.split(' ').collect();
    wrong.swap(0, 1);
    if wrong[0] != wrong[1] {
        assert!(!check(&wrong.join(" "), &[]).status.success());
    }
    let text = String::from_utf8(a.run(&["recovery-kit"]).stdout).unwrap();
    assert!(text.contains("recovery kit "), "{text}");

    // A file under a passphrase, and its QR code; no words anywhere in it.
    let file = dir.path().join("kit.json");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "under the stairs\n").unwrap();
    let made = a.json(&[
        "recovery-kit",
        "-o",
        file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(made.get("words").is_none(), "{made}");
    let bytes = std::fs::read(&file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(dir.path().join("kit.json.svg"))
            .unwrap()
            .contains("<svg")
    );
    let passphrase = hearth_node::keys::Passphrase::from_file(&pass).unwrap();
    let (sealed_kit, info) = RecoverySecret::from_file(&bytes, Some(&passphrase)).unwrap();
    assert_eq!(info.kit, made["kit"].as_str().unwrap());
    assert!(RecoverySecret::from_file(&bytes, None).is_err());
    // The new kit replaced the first: a new epoch, which the first does not open; the
    // new one opens every epoch, the older ones included.
    let keys = a.json(&["keys"]);
    assert!(keys["epoch"].as_u64().unwrap() >= 2, "{keys}");
    assert!(opens_all(&a, &sealed_kit));
    assert!(!opens_all(&a, &first));
    // The first kit's words no longer check out; the file does, with its passphrase.
    let stale = check(words, &[]);
    assert!(!stale.status.success());
    assert!(
        one_line_error(&stale).contains("not the vault's recovery kit"),
        "{}",
        one_line_error(&stale)
    );
    let by_file = check(
        "",
        &[
            file.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
    );
    assert!(by_file.status.success(), "{}", one_line_error(&by_file));
    let refused = a.run(&["recovery-kit", "-o", file.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(one_line_error(&refused).contains("--force"));

    // Shares: any two bring back the kit the vault now counts.
    let made = a.json(&["recovery-kit", "--shares", "2-of-3"]);
    let mut shares: Vec<Share> = made["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Share::parse(s.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(shares.len(), 3);
    let third = shares.pop().unwrap();
    let pair = [shares.remove(0), third];
    let back = RecoverySecret::combine(&pair).unwrap();
    // (An epoch the other device made meanwhile is sealed to this kit once it arrives.)
    let api = Api::new(&a);
    eventually("every epoch sealed to the kit", || {
        let kit = api.send(api.request(Method::GET, "/v1/recovery")).1;
        assert_eq!(kit["kit"].as_str(), Some(back.public().id.as_str()));
        (kit["epochs_sealed"] == kit["epochs"]).then_some(())
    });
    assert!(opens_all(&a, &back));
    let two = format!(
        "{}\n{}\n",
        made["shares"][2].as_str().unwrap(),
        made["shares"][0].as_str().unwrap()
    );
    let by_shares = check(&two, &["--json"]);
    assert!(by_shares.status.success(), "{}", one_line_error(&by_shares));

    assert!(
        !a.run(&["recovery-kit", "--shares", "1-of-3"])
            .status
            .success()
    );
    a.stop();
    b.stop();
}

/// A device that made the vault's kit, then is removed (stolen, and it may have kept
/// the kit's secret): its kit stops counting the moment it is removed, on every
/// device, whatever time it wrote; the epoch made then is not sealed to it; the kit
/// before it is the vault's again, and `recovery-kit --check` asks for a new kit,
/// since epochs were made meanwhile that the older one never received.
#[test]
fn a_kit_made_on_a_device_since_removed_no_longer_counts() {
    use hearth_node::recovery::RecoverySecret;

    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(&dir.path().join("a"), &[]);
    let x = join_and_spawn(&a, &dir.path().join("x"));
    let vault: [u8; 16] = data_encoding::HEXLOWER
        .decode(a.json(&["status"])["vault_id"].as_str().unwrap().as_bytes())
        .unwrap()
        .try_into()
        .unwrap();
    let first = a.json(&["recovery-kit"]);
    let first_words = first["words"].as_str().unwrap().to_owned();
    eventually("X knows A's kit", || {
        (x.json(&["status"])["recovery_kit"] == first["kit"]).then_some(())
    });
    let planted = x.json(&["recovery-kit"]);
    let planted_secret = RecoverySecret::from_words(planted["words"].as_str().unwrap()).unwrap();
    eventually("A counts X's kit", || {
        (a.json(&["status"])["recovery_kit"] == planted["kit"]).then_some(())
    });
    let x_peer = x.peer_id.clone();
    x.stop();

    let removed = a.json(&["devices", "remove", &x_peer]);
    assert_eq!(removed["recovery_kit_dropped"], planted["kit"], "{removed}");
    assert_eq!(a.json(&["status"])["recovery_kit"], first["kit"]);
    // The epochs that count are the members' (X's own no longer do).
    let epochs: Vec<Epoch> = epochs_of(&a)
        .into_iter()
        .filter(|e| e.made_by.to_string() != x_peer)
        .collect();
    let current = epochs.iter().max_by_key(|e| e.n).unwrap();
    assert_eq!(a.json(&["keys"])["epoch"], current.n);
    assert!(
        !current
            .sealed
            .contains_key(&planted_secret.public().recipient())
    );
    assert!(
        current
            .open_as(
                &vault,
                &planted_secret.public().recipient(),
                &planted_secret.exchange_seed()
            )
            .is_none()
    );

    let a_home = dir.path().join("a");
    let check = |words: &str| {
        hearth_with_stdin(
            &[
                "--home",
                a_home.to_str().unwrap(),
                "recovery-kit",
                "--check",
            ],
            words.as_bytes(),
        )
    };
    // The first kit opens every epoch A made, unless A made one while X's kit was
    // the vault's (then it was never sealed to the first): the check says which.
    let first_id = format!("kit:{}", first["kit"].as_str().unwrap());
    let skipped = epochs.iter().any(|e| e.excluded.contains(&first_id));
    let stale = check(&first_words);
    if skipped {
        assert!(!stale.status.success());
        assert!(
            one_line_error(&stale).contains("make a new kit"),
            "{}",
            one_line_error(&stale)
        );
    } else {
        assert!(stale.status.success(), "{}", one_line_error(&stale));
    }
    let fresh = a.json(&["recovery-kit"]);
    let checked = check(fresh["words"].as_str().unwrap());
    assert!(checked.status.success(), "{}", one_line_error(&checked));
    a.stop();
}
