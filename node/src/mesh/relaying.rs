//! The circuit relay a node runs for its vault's own devices (`hearth up --relay`: a
//! home server, later a backup host), so that two devices that cannot reach each other
//! directly (both behind NATs) still sync through it.
//!
//! libp2p's default relay is made for strangers: it cuts every relayed connection after
//! 2 minutes or 128 KiB, which no sync of a real vault fits in. This one serves only the
//! vault's devices, decided when a reservation or a circuit is asked for (a stranger is
//! refused before anything is relayed, not disconnected after), and cuts nothing by
//! bytes; a circuit lasts a day at most (the relay protocol needs a bound), after which
//! the devices reconnect. The counts of reservations and circuits stay libp2p's bounds.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId, relay};

/// How long one relayed connection may last before the two devices dial again.
pub(super) const CIRCUIT_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Whether a peer may use the relay: a device of this vault.
pub(super) type IsMember = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;

/// The relay's configuration: reservations and circuits for members only, no byte
/// limit, [`CIRCUIT_LIFETIME`] at most.
pub(super) fn server_config(is_member: IsMember) -> relay::Config {
    let gate = |is_member: IsMember| -> Box<dyn relay::RateLimiter> {
        Box::new(move |peer: PeerId, _: &Multiaddr, _: std::time::Instant| {
            let member = is_member(&peer);
            if !member {
                tracing::debug!(%peer, "refused the relay to a peer that is not a device of this vault");
            }
            member
        })
    };
    relay::Config {
        reservation_rate_limiters: vec![gate(is_member.clone())],
        circuit_src_rate_limiters: vec![gate(is_member)],
        max_circuit_duration: CIRCUIT_LIFETIME,
        // 0: no limit (libp2p's `CopyFuture` counts only when this is above 0).
        max_circuit_bytes: 0,
        ..relay::Config::default()
    }
}

#[cfg(test)]
mod tests {
    //! Three swarms in this process, with this node's transports: a relay with
    //! [`server_config`], and two peers that reach each other only through it.

    use std::collections::HashSet;

    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    use libp2p::swarm::behaviour::toggle::Toggle;
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
    use libp2p::{StreamProtocol, Swarm, identity, noise, tcp, yamux};

    use super::*;

    const ECHO: StreamProtocol = StreamProtocol::new("/hearth-test/bytes/1");

    /// A relay (with `server_config` for `members`) or a peer that may use one: the
    /// mesh's own shape, with only what the test needs.
    #[derive(NetworkBehaviour)]
    struct Node {
        server: Toggle<relay::Behaviour>,
        client: relay::client::Behaviour,
        streams: libp2p_stream::Behaviour,
    }

    fn swarm(key: identity::Keypair, members: Option<HashSet<PeerId>>) -> Swarm<Node> {
        libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|key, client| Node {
                server: Toggle::from(members.map(|members| {
                    relay::Behaviour::new(
                        key.public().to_peer_id(),
                        server_config(Arc::new(move |p| members.contains(p))),
                    )
                })),
                client,
                streams: libp2p_stream::Behaviour::new(),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    }

    /// Runs `swarm` in the background, reporting its events.
    fn drive<B>(mut swarm: Swarm<B>, events: tokio::sync::mpsc::UnboundedSender<String>)
    where
        B: NetworkBehaviour + Send + 'static,
        B::ToSwarm: std::fmt::Debug + Send,
    {
        tokio::spawn(async move {
            loop {
                let event = swarm.select_next_some().await;
                let _ = events.send(format!("{event:?}"));
            }
        });
    }

    /// 4 MiB each way through one circuit (libp2p's default relay cuts at 128 KiB), and
    /// a peer that is not a member gets no reservation and no circuit to a member.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_relay_megabytes_and_strangers_get_no_reservation_or_circuit() {
        let (a_key, b_key, stranger_key) = (
            identity::Keypair::generate_ed25519(),
            identity::Keypair::generate_ed25519(),
            identity::Keypair::generate_ed25519(),
        );
        let (a_id, b_id) = (a_key.public().to_peer_id(), b_key.public().to_peer_id());
        let mut relay = swarm(
            identity::Keypair::generate_ed25519(),
            Some(HashSet::from([a_id, b_id])),
        );
        let relay_id = *relay.local_peer_id();
        relay
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let relay_addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = relay.select_next_some().await {
                break address;
            }
        };
        // A relay hands its own addresses out in a reservation: without one it has none
        // to give, and the reservation fails.
        relay.add_external_address(relay_addr.clone());
        let (relay_events, _) = tokio::sync::mpsc::unbounded_channel();
        drive(relay, relay_events);
        let circuit = relay_addr
            .with(libp2p::multiaddr::Protocol::P2p(relay_id))
            .with(libp2p::multiaddr::Protocol::P2pCircuit);

        let listen_through_relay = |key| {
            let mut peer = swarm(key, None);
            peer.listen_on(circuit.clone()).unwrap();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let control = peer.behaviour().streams.new_control();
            drive(peer, tx);
            (control, rx)
        };
        let wait_for = |mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
                        what: &'static str| async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(event) = rx.recv().await {
                    if event.contains(what) {
                        return event;
                    }
                }
                panic!("the swarm stopped before {what}");
            })
            .await
            .unwrap_or_else(|_| panic!("no {what} within 10 s"))
        };

        // A stranger asks for a reservation: refused.
        let (_, stranger_events) = listen_through_relay(stranger_key.clone());
        let refused = wait_for(stranger_events, "ResourceLimitExceeded");
        let (mut b_control, b_events) = listen_through_relay(b_key);
        let accepted = wait_for(b_events, "ReservationReqAccepted");
        refused.await;
        accepted.await;

        let mut incoming = b_control.accept(ECHO).unwrap();
        tokio::spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = stream.close().await;
                });
            }
        });

        let mut a = swarm(a_key, None);
        let mut a_control = a.behaviour().streams.new_control();
        a.dial(circuit.clone().with(libp2p::multiaddr::Protocol::P2p(b_id)))
            .unwrap();
        let (a_events, _) = tokio::sync::mpsc::unbounded_channel();
        drive(a, a_events);

        let stream = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match a_control.open_stream(b_id, ECHO).await {
                    Ok(stream) => break stream,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await
        .expect("a stream to B through the relay within 10 s");
        // A stranger (not a member) asking the relay for a circuit to B: refused.
        let mut stranger = swarm(stranger_key, None);
        stranger
            .dial(circuit.clone().with(libp2p::multiaddr::Protocol::P2p(b_id)))
            .unwrap();
        let (stranger_dials, stranger_dialled) = tokio::sync::mpsc::unbounded_channel();
        drive(stranger, stranger_dials);
        let no_circuit = wait_for(stranger_dialled, "OutgoingConnectionError");
        assert!(no_circuit.await.contains("ResourceLimitExceeded"));

        let sent: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        let (mut read, mut write) = stream.split();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                write.write_all(&sent).await.unwrap();
                write.close().await.unwrap();
            })
        };
        let mut echoed = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut echoed))
            .await
            .expect("the echo within 30 s")
            .expect("the circuit carried every byte");
        writer.await.unwrap();
        assert_eq!(echoed.len(), sent.len());
        assert!(echoed == sent);
    }
}
