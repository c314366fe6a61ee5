//! Keys that rotate, with real `hearth` processes: removing a device makes a new epoch
//! key that reaches the other devices, new grants are signed with it and accepted on
//! every device, and the removed device's HOME, kept whole, opens and signs nothing of
//! the new epoch.

use std::collections::BTreeSet;

use hearth_node::epochs::{Epoch, View};
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
