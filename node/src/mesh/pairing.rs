//! Pairing: making a new device a member of the vault with a one-time invite code.
//!
//! The inviter (a running node) makes an [`Invite`] — its PeerId and addresses, a
//! random secret, an expiry — and keeps the secret in memory only. The joiner dials the
//! inviter, and on `/hearth/pair/1` sends [`pairing_proof`]: a keyed hash of both
//! Noise-authenticated PeerIds under the secret. The secret itself never crosses the
//! wire, and a proof is useless from any other PeerId. A matching proof consumes the
//! invite (it works once), adds the joiner to `_devices`, and answers with the vault's
//! shared secrets and the device list. Anything else gets a refusal and changes nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hearth_protocol::invite::{
    Invite, InviteError, PAIR_PROTOCOL, PairRequest, PairResponse, pairing_proof,
};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::MeshHandle;
use super::frames::{read_frame, write_frame};
use crate::Vault;
use crate::collections::{CollectionError, Collections};
use crate::devices;
use crate::home::Home;
use crate::keys::{self, KeysError, Passphrase, SharedSecrets};
use crate::store::{Store, StoreError};

/// Invites outstanding at once; making one more drops the oldest.
const MAX_PENDING: usize = 16;
/// How long a pairing exchange may take once the stream is open.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// A pairing stream must carry its request within this time.
pub const FIRST_FRAME: Duration = Duration::from_secs(5);
/// Pairing exchanges at once, all peers together, and per peer.
pub const MAX_EXCHANGES: usize = 64;
pub const MAX_PER_PEER: usize = 2;
pub const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairError {
    #[error(transparent)]
    Invite(#[from] InviteError),
    #[error("the invite code has expired; ask for a new one with `hearth pair`")]
    Expired,
    #[error("{0} already holds a vault; join with an empty HOME")]
    AlreadyAVault(String),
    #[error(
        "cannot reach the inviting device ({0}). Is its node still running? If it restarted, its addresses may have changed: run `hearth pair` there again for a new code"
    )]
    Unreachable(String),
    #[error("the inviting device refused: {0}")]
    Refused(String),
    #[error("pairing failed: {0}")]
    Protocol(String),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Collection(#[from] CollectionError),
}

struct Pending {
    secret: Zeroizing<[u8; 32]>,
    expires_unix: u64,
}

pub struct Pairing {
    vault: Arc<Vault>,
    mesh: MeshHandle,
    pending: Mutex<Vec<Pending>>,
}

impl Pairing {
    pub(super) fn new(vault: Arc<Vault>, mesh: MeshHandle) -> Self {
        Self {
            vault,
            mesh,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// A new invite code, valid once within `ttl`.
    pub async fn invite(
        &self,
        ttl: Duration,
    ) -> Result<(Zeroizing<String>, u64), super::MeshError> {
        let addrs: Vec<String> = self
            .mesh
            .listen_addrs()
            .await?
            .into_iter()
            .filter(|a| {
                !a.iter()
                    .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified()))
            })
            .map(|a| a.to_string())
            .collect();
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *secret);
        let expires_unix = crate::clock::now_unix() + ttl.as_secs();
        let invite = Invite {
            expires_unix,
            secret: secret.clone(),
            inviter_peer_id: self.mesh.local_peer_id().to_bytes(),
            addrs,
        };
        let mut pending = self.pending.lock().expect("pending lock is never poisoned");
        pending.retain(|p| p.expires_unix > crate::clock::now_unix());
        if pending.len() >= MAX_PENDING {
            pending.remove(0);
        }
        pending.push(Pending {
            secret,
            expires_unix,
        });
        Ok((invite.encode(), expires_unix))
    }

    /// Answers pairing attempts, several at once: an idle or slow peer holds only its
    /// own stream (each must send its request within [`FIRST_FRAME`]), at most
    /// [`MAX_PER_PEER`] per peer and [`MAX_EXCHANGES`] in all.
    pub(super) async fn accept_loop(
        self: Arc<Self>,
        mut incoming: libp2p_stream::IncomingStreams,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut exchanges = tokio::task::JoinSet::new();
        let per_peer: Arc<Mutex<std::collections::HashMap<PeerId, usize>>> = Arc::default();
        loop {
            let Some((peer, mut stream)) = super::next_stream(&mut incoming, &mut stop).await
            else {
                break;
            };
            while exchanges.try_join_next().is_some() {}
            if exchanges.len() >= MAX_EXCHANGES {
                tracing::warn!(%peer, "too many pairing attempts at once; refusing one more");
                continue;
            }
            {
                let mut counts = per_peer.lock().expect("per-peer lock is never poisoned");
                let count = counts.entry(peer).or_default();
                if *count >= MAX_PER_PEER {
                    tracing::info!(%peer, "this peer has too many pairing attempts open; refusing one more");
                    continue;
                }
                *count += 1;
            }
            let this = self.clone();
            let per_peer = per_peer.clone();
            exchanges.spawn(async move {
                match tokio::time::timeout(PAIR_TIMEOUT, this.answer(peer, &mut stream)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "pairing attempt failed"),
                    Err(_) => tracing::info!(%peer, "pairing attempt timed out"),
                }
                let mut counts = per_peer.lock().expect("per-peer lock is never poisoned");
                if let Some(count) = counts.get_mut(&peer) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(&peer);
                    }
                }
            });
        }
        exchanges.shutdown().await;
    }

    async fn answer(&self, peer: PeerId, stream: &mut libp2p::Stream) -> Result<(), PairError> {
        let frame = tokio::time::timeout(FIRST_FRAME, read_frame(stream))
            .await
            .map_err(|_| PairError::Protocol("no pairing request in time".into()))?
            .map_err(|e| PairError::Protocol(e.to_string()))?
            .ok_or_else(|| PairError::Protocol("the peer closed the stream".into()))?;
        let request = PairRequest::decode(&frame)?;
        let response = match self.take_matching(&peer, &request.proof) {
            false => PairResponse::Reject {
                reason: "the invite code is wrong, expired or already used".into(),
            },
            true => {
                let vault = self.vault.clone();
                let name = request.device_name.clone();
                let doc =
                    tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, PairError> {
                        devices::add(&vault.collections, &peer, &name)?;
                        // A removed device stays removed, even with a valid invite.
                        if !devices::is_member(&vault.collections, &peer) {
                            return Ok(None);
                        }
                        Ok(Some(
                            vault.collections.save_document(&devices::collection())?,
                        ))
                    })
                    .await
                    .map_err(|e| PairError::Protocol(e.to_string()))??;
                self.vault.store.commit().await?;
                match doc {
                    None => PairResponse::Reject {
                        reason: "this device was removed from the vault".into(),
                    },
                    Some(doc) => {
                        tracing::info!(%peer, "a new device joined the vault");
                        let shared = self.vault.keys.shared_secrets();
                        PairResponse::Accept {
                            vault_id: shared.vault_id,
                            storage_key: shared.storage_key,
                            signing_key: shared.signing_key,
                            devices_doc: doc,
                        }
                    }
                }
            }
        };
        write_frame(stream, &response.encode())
            .await
            .map_err(|e| PairError::Protocol(e.to_string()))?;
        futures::AsyncWriteExt::close(stream).await.ok();
        Ok(())
    }

    /// Finds and consumes the pending invite whose proof matches.
    fn take_matching(&self, joiner: &PeerId, proof: &[u8; 32]) -> bool {
        let local = self.mesh.local_peer_id().to_bytes();
        let now = crate::clock::now_unix();
        let mut pending = self.pending.lock().expect("pending lock is never poisoned");
        pending.retain(|p| p.expires_unix > now);
        let found = pending.iter().position(|p| {
            bool::from(pairing_proof(&p.secret, &local, &joiner.to_bytes()).ct_eq(proof))
        });
        match found {
            Some(index) => {
                pending.remove(index);
                true
            }
            None => false,
        }
    }
}

/// What joining made.
pub struct Joined {
    pub peer_id: PeerId,
    pub inviter: PeerId,
    pub vault_id: String,
}

/// Makes `home` (which must hold no vault) a new device of the inviter's vault.
pub async fn join(
    home: &Home,
    code: &str,
    passphrase: Option<&Passphrase>,
    device_name: &str,
) -> Result<Joined, PairError> {
    if home.has_vault() || home.store_dir().exists() {
        return Err(PairError::AlreadyAVault(home.root().display().to_string()));
    }
    let invite = Invite::decode(code)?;
    if invite.expires_unix <= crate::clock::now_unix() {
        return Err(PairError::Expired);
    }
    let inviter =
        PeerId::from_bytes(&invite.inviter_peer_id).map_err(|_| InviteError::Malformed)?;
    let addrs: Vec<Multiaddr> = invite.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    if addrs.is_empty() {
        return Err(PairError::Unreachable(
            "the code lists no usable address".into(),
        ));
    }

    let device = libp2p::identity::Keypair::generate_ed25519();
    let joiner = device.public().to_peer_id();
    let device_secret: [u8; 32] = device
        .clone()
        .try_into_ed25519()
        .map_err(|e| PairError::Protocol(e.to_string()))?
        .secret()
        .as_ref()
        .try_into()
        .map_err(|_| PairError::Protocol("unexpected device key length".into()))?;
    let device_secret = Zeroizing::new(device_secret);

    let response = exchange(device, inviter, &addrs, &invite.secret, joiner, device_name).await?;
    let (shared, devices_doc) = match response {
        PairResponse::Accept {
            vault_id,
            storage_key,
            signing_key,
            devices_doc,
        } => (
            SharedSecrets {
                vault_id,
                storage_key,
                signing_key,
            },
            devices_doc,
        ),
        PairResponse::Reject { reason } => return Err(PairError::Refused(reason)),
    };

    let made = keys::init_joined(home, passphrase, shared, device_secret)?;
    let keys = Arc::new(made.keys);
    let store = Arc::new(Store::open(&home.store_dir(), keys.clone())?);
    let collections = Collections::open(store.clone(), crate::collections::actor_for(&joiner))?;
    collections.merge_document(&devices::collection(), &devices_doc)?;
    store.commit().await?;
    store.shutdown().await?;
    Ok(Joined {
        peer_id: joiner,
        inviter,
        vault_id: keys.vault_id_hex(),
    })
}

/// Dials the inviter with a minimal swarm and runs the pairing exchange.
async fn exchange(
    device: libp2p::identity::Keypair,
    inviter: PeerId,
    addrs: &[Multiaddr],
    secret: &[u8; 32],
    joiner: PeerId,
    device_name: &str,
) -> Result<PairResponse, PairError> {
    let mut swarm =
        super::lone_swarm(device, Duration::from_secs(30)).map_err(PairError::Protocol)?;
    let mut control = swarm.behaviour().new_control();
    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(inviter)
        .addresses(addrs.to_vec())
        .build();
    swarm
        .dial(opts)
        .map_err(|e| PairError::Unreachable(e.to_string()))?;

    let proof = pairing_proof(secret, &inviter.to_bytes(), &joiner.to_bytes());
    let request = PairRequest {
        proof,
        device_name: device_name.to_owned(),
    };
    let talk = async {
        let mut stream = control
            .open_stream(inviter, StreamProtocol::new(PAIR_PROTOCOL))
            .await
            .map_err(|e| PairError::Unreachable(e.to_string()))?;
        write_frame(&mut stream, &request.encode())
            .await
            .map_err(|e| PairError::Protocol(e.to_string()))?;
        let answer = read_frame(&mut stream)
            .await
            .map_err(|e| PairError::Protocol(e.to_string()))?
            .ok_or_else(|| PairError::Protocol("the inviting device closed the stream".into()))?;
        Ok::<_, PairError>(PairResponse::decode(&answer)?)
    };
    tokio::pin!(talk);
    let deadline = tokio::time::sleep(PAIR_TIMEOUT);
    tokio::pin!(deadline);
    // The stream is asked for only once connected: one asked for while this dial is
    // still in flight races libp2p-stream's own dial (which has no address) and could
    // wait until the deadline, though the inviting device was there all along.
    let mut connected = false;
    loop {
        tokio::select! {
            result = &mut talk, if connected => return result,
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == inviter => {
                    connected = true;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(PairError::Unreachable(dial_reason(&error)));
                }
                _ => {}
            },
            _ = &mut deadline => return Err(PairError::Unreachable("timed out".into())),
        }
    }
}

/// What a failed dial comes to, in a few words: the first address and the innermost
/// reason ("127.0.0.1:4001: Connection refused (os error 111)"), not libp2p's nested
/// list of every address with each cause repeated.
fn dial_reason(error: &libp2p::swarm::DialError) -> String {
    fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
        let mut e = e;
        while let Some(next) = e.source() {
            e = next;
        }
        e.to_string()
    }
    match error {
        libp2p::swarm::DialError::Transport(errors) => match errors.first() {
            Some((addr, e)) => {
                let place: String = addr
                    .iter()
                    .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                    .map(|p| p.to_string())
                    .collect();
                format!("{place}: {}", innermost(e))
            }
            None => "no address to dial".into(),
        },
        other => innermost(other),
    }
}
