//! Invite codes: how a new device finds the vault and proves it was invited.
//!
//! A code is `hearth1` followed by the lowercase base32 (no padding) of:
//!
//! ```text
//! 0        version (1)
//! 1..9     expiry, u64be seconds since the Unix epoch
//! 9..41    one-time secret (32 random bytes)
//! 41       length of the inviter's PeerId, then its bytes
//! then     number of addresses (u8, at most 16), each: u8 length ‖ multiaddr text
//! ```
//!
//! The secret never crosses the wire: the joiner proves it holds it with
//! [`pairing_proof`], a keyed hash over both Noise-authenticated PeerIds, which a
//! listener cannot replay from another PeerId (and cannot read: the channel is Noise).

use data_encoding::BASE32_NOPAD;
use zeroize::Zeroizing;

pub const INVITE_PREFIX: &str = "hearth1";
pub const INVITE_VERSION: u8 = 1;
pub const MAX_INVITE_ADDRS: usize = 16;
pub const PAIR_PROTOCOL: &str = "/hearth/pair/1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    #[error("not a Hearth invite code (it should start with \"hearth1\")")]
    Prefix,
    #[error(
        "this is a backup host's code: enroll the host with `hearth backup add CODE` on a device of the vault"
    )]
    HostCode,
    #[error("the invite code is damaged (not valid base32); copy it again")]
    Encoding,
    #[error("the invite code is damaged (truncated or malformed); copy it again")]
    Malformed,
    #[error("the invite code is damaged or from an incompatible Hearth (format version {0})")]
    Version(u8),
}

/// A decoded invite. The secret is zeroized on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    pub expires_unix: u64,
    pub secret: Zeroizing<[u8; 32]>,
    pub inviter_peer_id: Vec<u8>,
    pub addrs: Vec<String>,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("expires_unix", &self.expires_unix)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Invite {
    pub fn encode(&self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new(Vec::new());
        bytes.push(INVITE_VERSION);
        bytes.extend_from_slice(&self.expires_unix.to_be_bytes());
        bytes.extend_from_slice(&*self.secret);
        bytes.push(u8::try_from(self.inviter_peer_id.len()).expect("PeerIds are short"));
        bytes.extend_from_slice(&self.inviter_peer_id);
        let addrs: Vec<&String> = self
            .addrs
            .iter()
            .filter(|a| a.len() <= 255)
            .take(MAX_INVITE_ADDRS)
            .collect();
        bytes.push(addrs.len() as u8);
        for addr in addrs {
            bytes.push(addr.len() as u8);
            bytes.extend_from_slice(addr.as_bytes());
        }
        Zeroizing::new(format!(
            "{INVITE_PREFIX}{}",
            BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
        ))
    }

    pub fn decode(code: &str) -> Result<Self, InviteError> {
        let code = code.trim();
        if code.starts_with(crate::backup::HOST_INVITE_PREFIX) {
            return Err(InviteError::HostCode);
        }
        let body = code
            .strip_prefix(INVITE_PREFIX)
            .ok_or(InviteError::Prefix)?;
        let bytes = Zeroizing::new(
            BASE32_NOPAD
                .decode(body.to_ascii_uppercase().as_bytes())
                .map_err(|_| InviteError::Encoding)?,
        );
        let mut r = Reader(&bytes);
        let version = r.u8()?;
        if version != INVITE_VERSION {
            return Err(InviteError::Version(version));
        }
        let expires_unix = u64::from_be_bytes(r.take(8)?.try_into().expect("took 8"));
        let secret = Zeroizing::new(<[u8; 32]>::try_from(r.take(32)?).expect("took 32"));
        let peer_len = usize::from(r.u8()?);
        let inviter_peer_id = r.take(peer_len)?.to_vec();
        let count = usize::from(r.u8()?);
        if count > MAX_INVITE_ADDRS {
            return Err(InviteError::Malformed);
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(r.u8()?);
            let text = std::str::from_utf8(r.take(len)?).map_err(|_| InviteError::Malformed)?;
            addrs.push(text.to_owned());
        }
        if !r.0.is_empty() {
            return Err(InviteError::Malformed);
        }
        Ok(Self {
            expires_unix,
            secret,
            inviter_peer_id,
            addrs,
        })
    }
}

/// What the joiner sends to prove it holds the invite's secret: BLAKE3 keyed by the
/// secret over both PeerIds (as the Noise handshake authenticated them).
pub fn pairing_proof(secret: &[u8; 32], inviter_peer_id: &[u8], joiner_peer_id: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(b"hearth/pair/v1");
    hasher.update(&[inviter_peer_id.len() as u8]);
    hasher.update(inviter_peer_id);
    hasher.update(joiner_peer_id);
    *hasher.finalize().as_bytes()
}

/// The joiner's request on `/hearth/pair/1`: `0x01 ‖ proof (32) ‖ u8 len ‖ device name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRequest {
    pub proof: [u8; 32],
    pub device_name: String,
}

/// The inviter's answer:
/// `0x02 ‖ vault id (16) ‖ storage key (32) ‖ signing key (32) ‖ device list document`
/// or `0x03 ‖ reason (UTF-8)`.
pub enum PairResponse {
    Accept {
        vault_id: [u8; 16],
        storage_key: Zeroizing<[u8; 32]>,
        signing_key: Zeroizing<[u8; 32]>,
        /// The `_devices` Automerge document, so the new device knows its peers.
        devices_doc: Vec<u8>,
    },
    Reject {
        reason: String,
    },
}

impl PairRequest {
    pub fn encode(&self) -> Vec<u8> {
        let name = truncate_name(&self.device_name);
        let mut out = vec![1];
        out.extend_from_slice(&self.proof);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, InviteError> {
        let mut r = Reader(bytes);
        if r.u8()? != 1 {
            return Err(InviteError::Malformed);
        }
        let proof = r.take(32)?.try_into().expect("took 32");
        let len = usize::from(r.u8()?);
        let device_name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| InviteError::Malformed)?
            .to_owned();
        if !r.0.is_empty() {
            return Err(InviteError::Malformed);
        }
        Ok(Self { proof, device_name })
    }
}

impl PairResponse {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        match self {
            PairResponse::Accept {
                vault_id,
                storage_key,
                signing_key,
                devices_doc,
            } => {
                out.push(2);
                out.extend_from_slice(vault_id);
                out.extend_from_slice(&**storage_key);
                out.extend_from_slice(&**signing_key);
                out.extend_from_slice(devices_doc);
            }
            PairResponse::Reject { reason } => {
                out.push(3);
                out.extend_from_slice(reason.as_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, InviteError> {
        let mut r = Reader(bytes);
        match r.u8()? {
            2 => Ok(PairResponse::Accept {
                vault_id: r.take(16)?.try_into().expect("took 16"),
                storage_key: Zeroizing::new(r.take(32)?.try_into().expect("took 32")),
                signing_key: Zeroizing::new(r.take(32)?.try_into().expect("took 32")),
                devices_doc: r.0.to_vec(),
            }),
            3 => Ok(PairResponse::Reject {
                reason: String::from_utf8_lossy(r.0).chars().take(200).collect(),
            }),
            _ => Err(InviteError::Malformed),
        }
    }
}

fn truncate_name(name: &str) -> &str {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], InviteError> {
        if self.0.len() < n {
            return Err(InviteError::Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, InviteError> {
        Ok(self.take(1)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn invite() -> Invite {
        Invite {
            expires_unix: 1_800_000_000,
            secret: Zeroizing::new([7; 32]),
            inviter_peer_id: vec![0, 36, 8, 1, 18, 32, 1, 2, 3],
            addrs: vec![
                "/ip4/127.0.0.1/tcp/4001".into(),
                "/ip4/127.0.0.1/udp/4001/quic-v1".into(),
            ],
        }
    }

    #[test]
    fn round_trip_and_errors() {
        let code = invite().encode();
        assert!(code.starts_with("hearth1"));
        assert_eq!(Invite::decode(&code).unwrap(), invite());
        assert_eq!(
            Invite::decode(&format!("  {}\n", &*code)).unwrap(),
            invite()
        );
        assert_eq!(Invite::decode("hello"), Err(InviteError::Prefix));
        assert_eq!(Invite::decode("hearth1!!!"), Err(InviteError::Encoding));
        assert_eq!(
            Invite::decode(&code[..code.len() - 8]),
            Err(InviteError::Malformed)
        );
        assert!(!format!("{:?}", invite()).contains("7, 7"));
    }

    #[test]
    fn proofs_bind_both_peers() {
        let s = [1; 32];
        let p = pairing_proof(&s, b"inviter", b"joiner");
        assert_ne!(p, pairing_proof(&s, b"inviter", b"other"));
        assert_ne!(p, pairing_proof(&s, b"other", b"joiner"));
        assert_ne!(p, pairing_proof(&[2; 32], b"inviter", b"joiner"));
    }

    #[test]
    fn pair_messages_round_trip() {
        let req = PairRequest {
            proof: [3; 32],
            device_name: "laptop".into(),
        };
        assert_eq!(PairRequest::decode(&req.encode()).unwrap(), req);
        let accept = PairResponse::Accept {
            vault_id: [1; 16],
            storage_key: Zeroizing::new([2; 32]),
            signing_key: Zeroizing::new([3; 32]),
            devices_doc: vec![9, 9],
        };
        match PairResponse::decode(&accept.encode()).unwrap() {
            PairResponse::Accept {
                vault_id,
                storage_key,
                devices_doc,
                ..
            } => {
                assert_eq!(
                    (vault_id, *storage_key, devices_doc),
                    ([1; 16], [2; 32], vec![9, 9])
                );
            }
            PairResponse::Reject { .. } => panic!("expected accept"),
        }
        assert!(PairResponse::decode(&[2, 1]).is_err());
        assert!(PairRequest::decode(&[1, 2, 3]).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "hearth1[a-z2-7]{0,120}", bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = Invite::decode(&s);
            let _ = PairRequest::decode(&bytes);
            let _ = PairResponse::decode(&bytes);
        }
    }
}
