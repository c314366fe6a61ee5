//! Devices that cannot reach each other directly sync through a device of the vault
//! that relays (`hearth up --relay`: a home server), with real `hearth` processes on
//! loopback. libp2p's default relay cut every relayed connection after 128 KiB, and a
//! relay on an address no one had confirmed gave no reservation at all.

use hearth_tests::*;

/// A and B listen only through R (no address of their own): each sees the other online
/// through the relay, and a sync of far more than 128 KiB goes through with the relayed
/// connection never cut. C, a device with an address of its own, starts listening
/// through R by itself and records that address for the others. R restarts, and A and
/// B meet through it again.
#[test]
fn devices_reachable_only_through_a_relaying_device_sync_through_it() {
    let t = TestHome::new();
    let r = spawn_node(&t.path().join("r"), &["--relay"]);
    let r_addr = r
        .mesh_addrs()
        .into_iter()
        .find(|a| a.contains("/tcp/"))
        .expect("R listens on TCP");
    let circuit = format!("{r_addr}/p2p-circuit");
    let join_behind_relay = |name: &str| {
        let home = t.path().join(name);
        let code = r.json(&["pair"])["code"].as_str().unwrap().to_owned();
        hearth_json(&home, &["join", &code]);
        // At info, the log says when a device disconnects.
        spawn_node_with_env(
            &home,
            &["--listen", &circuit, "--peer", &r_addr],
            &[("RUST_LOG", "info")],
        )
    };
    let a = join_behind_relay("a");
    let b = join_behind_relay("b");
    let relayed =
        |from: &NodeProcess, to: &NodeProcess| {
            from.json(&["devices"]).as_array().unwrap().iter().any(|d| {
                d["id"] == to.peer_id.as_str() && d["online"] == true && d["relayed"] == true
            })
        };
    eventually("A and B online to each other through R", || {
        (relayed(&a, &b) && relayed(&b, &a)).then_some(())
    });

    let text = "x".repeat(2_000);
    for i in 0..200 {
        a.json(&[
            "put",
            "notes",
            &format!("n{i}"),
            &format!(r#"{{"text": "{text}"}}"#),
        ]);
    }
    eventually("B holds A's 200 notes (400 KB)", || {
        (b.json(&["ls", "notes"]).as_array().unwrap().len() == 200).then_some(())
    });
    assert!(
        relayed(&a, &b),
        "the relayed connection is still up after 400 KB"
    );
    // Not cut and made again on the way (libp2p's default relay cuts at 128 KiB).
    let cut = |node: &NodeProcess, other: &NodeProcess| {
        node.stderr()
            .lines()
            .any(|l| l.contains("device disconnected") && l.contains(other.peer_id.as_str()))
    };
    assert!(!cut(&a, &b) && !cut(&b, &a), "A and B never disconnected");
    let a_on_r = r.json(&["devices"]);
    assert!(
        a_on_r.to_string().contains("p2p-circuit"),
        "A's address through R is recorded: {a_on_r}"
    );

    let c = join_and_spawn(&r, &t.path().join("c"));
    eventually("C listens through R by itself and records it", || {
        r.json(&["devices"])
            .as_array()
            .unwrap()
            .iter()
            .any(|d| {
                d["id"] == c.peer_id.as_str()
                    && d["addrs"]
                        .to_string()
                        .contains(&format!("{}/p2p-circuit", r.peer_id))
            })
            .then_some(())
    });
    // The relay restarts (a home server's reboot): A and B listen through it again,
    // record that, and meet through it again.
    let port = r_addr
        .split("/tcp/")
        .nth(1)
        .and_then(|p| p.split('/').next())
        .unwrap()
        .to_owned();
    r.stop();
    eventually("A sees B gone", || (!relayed(&a, &b)).then_some(()));
    let r = spawn_node(
        &t.path().join("r"),
        &["--relay", "--listen", &format!("/ip4/127.0.0.1/tcp/{port}")],
    );
    eventually("A and B online to each other through R again", || {
        (relayed(&a, &b) && relayed(&b, &a)).then_some(())
    });
    for node in [a, b, c, r] {
        node.stop();
    }
}
