//! Epochs: vault keys that rotate when a device leaves.
//!
//! Every device holds the vault's storage key and signing key for good (a removed
//! device keeps what it had). What is made from now on must not open or verify with
//! anything a removed device holds, so the vault has a chain of **epoch keys**: 32
//! random bytes each, made when a device is removed (or on demand), sealed with HPKE
//! (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, base mode)
//! to each remaining device's own **exchange key**, and never to the removed one.
//! Epoch 0 is the vault's first signing key, which every device ever paired holds.
//!
//! Each epoch is a record of the system collection `_epochs`, keyed by its id:
//!
//! ```json
//! {"n": 2, "prev": "<id of the epoch it follows, or \"\">", "made_by": "<PeerId>",
//!  "made_by_key": "<B64 protobuf public key>", "made_at": 1765000000,
//!  "signing_key": "<hex Ed25519 public key>", "commitment": "<hex>",
//!  "signature": "<B64>", "sealed": {"<PeerId>": "<B64 enc || ciphertext>", ...}}
//! ```
//!
//! The id is the first 16 bytes (hex) of the BLAKE3 hash of the signed part (every
//! field but `signature` and `sealed`); `made_by` signs it with its device key. The
//! epoch's grant signing key (an Ed25519 seed) is derived from the epoch key; its
//! public half is in the record, so a token verifies on every device, and the
//! `commitment` (also derived) lets a device check that what a sealed entry opened to
//! is the epoch's key. Any member that holds an epoch key seals it to a member that
//! lacks it (a device paired later, one that had no exchange key yet), so `sealed` grows
//! and the signed part never changes.
//!
//! **Which epoch is current**: among the records made by devices that are members now
//! (a removed device's epochs are set aside: it knows their keys), the highest `n`,
//! and among those the smallest id. Two devices that rotate apart both write an epoch
//! `n`; once they sync, both pick the same one, and the other stays readable. An epoch
//! that is sealed to a device that is no longer a member (epoch 0, once any device is
//! removed) is replaced by the first member that sees it: [`plan`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};

use data_encoding::{BASE64, HEXLOWER};
use hearth_protocol::{CollectionName, RecordId};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use libp2p_identity::{Keypair, PeerId, PublicKey};
use rand::RngCore;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::collections::{CollectionError, Collections};
use crate::keys::VaultKeys;
use crate::store::Store;

pub const EPOCHS: &str = "_epochs";

type Kem = X25519HkdfSha256;

const SIGNED_DOMAIN: &[u8] = b"hearth 2026-12 epoch record v1\0";
const SEAL_INFO: &[u8] = b"hearth 2026-12 epoch key v1\0";
const COMMITMENT_CONTEXT: &str = "hearth 2026-12 epoch commitment v1";
const GRANT_SIGNING_CONTEXT: &str = "hearth 2026-12 epoch grant signing v1";
const AT_REST_CONTEXT: &str = "hearth 2026-12 epoch store seal v1";
/// An X25519 encapsulated key (32 bytes), then the sealed epoch key (32) and its tag (16).
const SEALED_LEN: usize = 32 + 32 + 16;

pub fn collection() -> CollectionName {
    CollectionName::parse(EPOCHS).expect("_epochs is a valid system collection name")
}

/// The public half of a device's exchange key, from its seed (in the key file).
pub fn exchange_public(seed: &[u8; 32]) -> [u8; 32] {
    let (_, public) = Kem::derive_keypair(seed);
    public
        .to_bytes()
        .as_slice()
        .try_into()
        .expect("an X25519 public key is 32 bytes")
}

/// What a device needs of its own keys to take part.
pub struct Identity<'a> {
    pub vault_id: [u8; 16],
    pub device: &'a Keypair,
    pub exchange: &'a [u8; 32],
}

impl Identity<'_> {
    fn peer(&self) -> PeerId {
        self.device.public().to_peer_id()
    }
}

/// One epoch, as recorded in `_epochs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub id: String,
    pub n: u32,
    pub prev: String,
    pub made_by: PeerId,
    made_by_key: Vec<u8>,
    pub made_at: u64,
    /// The Ed25519 public key that verifies this epoch's tokens.
    pub signing_key: [u8; 32],
    commitment: [u8; 32],
    /// Who must never be given this epoch's key (signed): the devices removed and the
    /// kits replaced when it was made. A device that tops up another never seals to
    /// these, even before it learns of the removal itself.
    pub excluded: Vec<String>,
    signature: Vec<u8>,
    /// The epoch key sealed to each device (by PeerId) and to the kit (`kit:ID`):
    /// [`PUBLIC_TAG_LEN`] bytes naming the exchange key it was sealed to, then the
    /// HPKE encapsulated key, ciphertext and tag.
    pub sealed: BTreeMap<String, Vec<u8>>,
}

/// Bytes at the start of a sealed entry that name the exchange key it was sealed to
/// (the first 8 of BLAKE3 over it): an entry sealed to a key its holder no longer
/// publishes is sealed again.
pub const PUBLIC_TAG_LEN: usize = 8;

fn public_tag(public: &[u8; 32]) -> [u8; PUBLIC_TAG_LEN] {
    blake3::hash(public).as_bytes()[..PUBLIC_TAG_LEN]
        .try_into()
        .expect("8 bytes")
}

impl Epoch {
    /// The signed part of the record (docs/FORMATS.md, "Epochs").
    fn signed_part(&self, vault_id: &[u8; 16]) -> Vec<u8> {
        let made_by = self.made_by.to_string();
        let mut out = Vec::with_capacity(SIGNED_DOMAIN.len() + 256);
        out.extend_from_slice(SIGNED_DOMAIN);
        out.extend_from_slice(vault_id);
        out.extend_from_slice(&self.n.to_be_bytes());
        let mut text = |t: &str| {
            out.extend_from_slice(&(t.len() as u32).to_be_bytes());
            out.extend_from_slice(t.as_bytes());
        };
        text(&self.prev);
        text(&made_by);
        out.extend_from_slice(&self.made_at.to_be_bytes());
        out.extend_from_slice(&self.signing_key);
        out.extend_from_slice(&self.commitment);
        out.extend_from_slice(&(self.excluded.len() as u32).to_be_bytes());
        for name in &self.excluded {
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        out
    }
}

fn id_of(signed: &[u8]) -> String {
    HEXLOWER.encode(&blake3::hash(signed).as_bytes()[..16])
}

fn commitment_of(key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(COMMITMENT_CONTEXT, key)
}

/// The seed of an epoch's grant signing key.
fn grant_seed(key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(GRANT_SIGNING_CONTEXT, key))
}

/// The key an epoch's values at rest are sealed under.
pub fn at_rest_key(key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(AT_REST_CONTEXT, key))
}

/// The key id of the epoch whose key is `key`.
pub fn key_id_of(key: &[u8; 32]) -> u32 {
    key_id(&ed25519_public(&grant_seed(key)))
}

fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    let mut bytes = Zeroizing::new(*seed);
    let secret = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut *bytes)
        .expect("any 32 bytes are an Ed25519 seed");
    libp2p_identity::ed25519::Keypair::from(secret)
        .public()
        .to_bytes()
}

/// The id a token carries (biscuit's root key id) to name the epoch that signed it.
pub fn key_id(signing_key: &[u8; 32]) -> u32 {
    let hash = blake3::hash(signing_key);
    u32::from_be_bytes(hash.as_bytes()[..4].try_into().expect("4 bytes"))
}

/// The HPKE `info` an epoch key is sealed to a device with (docs/FORMATS.md).
pub fn seal_info(vault_id: &[u8; 16], epoch: &str, recipient: &str) -> Vec<u8> {
    let mut info = SEAL_INFO.to_vec();
    info.extend_from_slice(vault_id);
    info.extend_from_slice(epoch.as_bytes());
    info.push(0);
    info.extend_from_slice(recipient.as_bytes());
    info
}

/// `key` sealed to the holder of the exchange key whose public half is `recipient`:
/// the recipient key's tag ([`PUBLIC_TAG_LEN`]), the encapsulated key, then the
/// ciphertext and tag.
pub fn seal_to(
    vault_id: &[u8; 16],
    epoch: &str,
    recipient_name: &str,
    recipient: &[u8; 32],
    key: &[u8; 32],
) -> Option<Vec<u8>> {
    seal_key_to(&seal_info(vault_id, epoch, recipient_name), recipient, key)
}

/// `key` sealed to the exchange key `recipient` under the HPKE `info` (what binds it
/// to its use: [`seal_to`]'s for epoch records, the backup manifest's for a host), in
/// [`seal_to`]'s layout.
pub fn seal_key_to(info: &[u8], recipient: &[u8; 32], key: &[u8; 32]) -> Option<Vec<u8>> {
    let public = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient).ok()?;
    let (encapped, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeS::Base,
        &public,
        info,
        key,
        b"",
    )
    .ok()?;
    let mut out = public_tag(recipient).to_vec();
    out.extend_from_slice(&encapped.to_bytes());
    out.extend_from_slice(&ciphertext);
    Some(out)
}

/// Opens a sealed entry with this device's exchange key (its seed).
pub fn open_sealed(
    vault_id: &[u8; 16],
    epoch: &str,
    recipient_name: &str,
    exchange: &[u8; 32],
    sealed: &[u8],
) -> Option<Zeroizing<[u8; 32]>> {
    open_key_with(
        &seal_info(vault_id, epoch, recipient_name),
        exchange,
        sealed,
    )
}

/// Opens what [`seal_key_to`] sealed under `info`, with the exchange seed `exchange`.
pub fn open_key_with(
    info: &[u8],
    exchange: &[u8; 32],
    sealed: &[u8],
) -> Option<Zeroizing<[u8; 32]>> {
    if sealed.len() != PUBLIC_TAG_LEN + SEALED_LEN {
        return None;
    }
    let sealed = &sealed[PUBLIC_TAG_LEN..];
    let (private, _) = Kem::derive_keypair(exchange);
    let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed[..32]).ok()?;
    let plain = Zeroizing::new(
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &private,
            &encapped,
            info,
            &sealed[32..],
            b"",
        )
        .ok()?,
    );
    let key: [u8; 32] = plain.as_slice().try_into().ok()?;
    Some(Zeroizing::new(key))
}

impl Epoch {
    /// A new epoch after `prev` (`None`: after epoch 0), made by `me`, its key sealed
    /// to each of `to` (recipient name, exchange public key) and never to `excluded`.
    /// Returns it and its key; `None` after epoch `u32::MAX`.
    fn make(
        me: &Identity<'_>,
        prev: Option<&Epoch>,
        to: &[(String, [u8; 32])],
        excluded: Vec<String>,
        made_at: u64,
    ) -> Option<(Self, Zeroizing<[u8; 32]>)> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *key);
        let n = match prev {
            Some(p) => p.n.checked_add(1)?,
            None => 1,
        };
        let mut epoch = Self {
            id: String::new(),
            n,
            prev: prev.map(|p| p.id.clone()).unwrap_or_default(),
            made_by: me.peer(),
            made_by_key: me.device.public().encode_protobuf(),
            made_at,
            signing_key: ed25519_public(&grant_seed(&key)),
            commitment: commitment_of(&key),
            excluded,
            signature: Vec::new(),
            sealed: BTreeMap::new(),
        };
        let signed = epoch.signed_part(&me.vault_id);
        epoch.signature = me
            .device
            .sign(&signed)
            .expect("an Ed25519 key signs anything");
        epoch.id = id_of(&signed);
        epoch.sealed = to
            .iter()
            .filter(|(name, _)| !epoch.excluded.contains(name))
            .filter_map(|(name, public)| {
                seal_to(&me.vault_id, &epoch.id, name, public, &key).map(|s| (name.clone(), s))
            })
            .collect();
        Some((epoch, key))
    }

    /// Whether `key` is this epoch's key (its commitment matches).
    pub fn commits_to(&self, key: &[u8; 32]) -> bool {
        commitment_of(key) == self.commitment
    }

    /// Whether the record is whole and signed by the device it names, for this vault.
    pub fn verifies(&self, vault_id: &[u8; 16]) -> bool {
        let Ok(key) = PublicKey::try_decode_protobuf(&self.made_by_key) else {
            return false;
        };
        if key.to_peer_id() != self.made_by {
            return false;
        }
        let signed = self.signed_part(vault_id);
        self.n >= 1 && id_of(&signed) == self.id && key.verify(&signed, &self.signature)
    }

    /// This epoch's key, if it is sealed to `me` (and is the key the record commits to).
    pub fn open(&self, me: &Identity<'_>) -> Option<Zeroizing<[u8; 32]>> {
        self.open_as(&me.vault_id, &me.peer().to_string(), me.exchange)
    }

    /// This epoch's key, if it is sealed to the recipient `name` (a PeerId, or a
    /// kit's `kit:ID`) whose exchange seed is `exchange`.
    pub fn open_as(
        &self,
        vault_id: &[u8; 16],
        name: &str,
        exchange: &[u8; 32],
    ) -> Option<Zeroizing<[u8; 32]>> {
        let sealed = self.sealed.get(name)?;
        let key = open_sealed(vault_id, &self.id, name, exchange, sealed)?;
        (commitment_of(&key) == self.commitment).then_some(key)
    }

    pub fn to_record(&self) -> Map<String, Value> {
        let sealed: Map<String, Value> = self
            .sealed
            .iter()
            .map(|(peer, s)| (peer.clone(), Value::String(BASE64.encode(s))))
            .collect();
        match json!({
            "n": self.n,
            "prev": self.prev,
            "made_by": self.made_by.to_string(),
            "made_by_key": BASE64.encode(&self.made_by_key),
            "made_at": self.made_at,
            "signing_key": HEXLOWER.encode(&self.signing_key),
            "commitment": HEXLOWER.encode(&self.commitment),
            "excluded": self.excluded,
            "signature": BASE64.encode(&self.signature),
            "sealed": sealed,
        }) {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        }
    }

    /// Reads a record of `_epochs` (with its `"id"`); `None` if it is not one.
    pub fn from_record(record: &Value) -> Option<Self> {
        let text = |field: &str| record.get(field)?.as_str();
        let hex32 = |field: &str| -> Option<[u8; 32]> {
            HEXLOWER
                .decode(text(field)?.as_bytes())
                .ok()?
                .try_into()
                .ok()
        };
        let b64 = |value: &str| BASE64.decode(value.as_bytes()).ok();
        let sealed = record
            .get("sealed")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(peer, s)| Some((peer.clone(), b64(s.as_str()?)?)))
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            id: text("id")?.to_owned(),
            n: u32::try_from(record.get("n")?.as_u64()?).ok()?,
            prev: text("prev")?.to_owned(),
            made_by: text("made_by")?.parse().ok()?,
            made_by_key: b64(text("made_by_key")?)?,
            made_at: record.get("made_at")?.as_u64()?,
            signing_key: hex32("signing_key")?,
            commitment: hex32("commitment")?,
            excluded: record
                .get("excluded")?
                .as_array()?
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<_>>()?,
            signature: b64(text("signature")?)?,
            sealed,
        })
    }
}

/// A device as the epochs see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub peer: PeerId,
    /// Its exchange key's public half, once it published one.
    pub exchange: Option<[u8; 32]>,
}

/// What one device knows: the epochs it has, the members, the removed devices and the
/// vault's recovery kit.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Epoch records that verify (whole, signed by the device they name, for this
    /// vault): [`view_of`] sets aside any other.
    pub epochs: Vec<Epoch>,
    pub members: Vec<Member>,
    /// Devices that were members and are not any more.
    pub removed: Vec<PeerId>,
    /// The current recovery kit, if one was made: epoch keys are sealed to it too.
    pub kit: Option<crate::recovery::KitPublic>,
    /// Kits it replaced, as the names epoch keys were sealed to them under.
    pub replaced_kits: Vec<String>,
}

impl View {
    fn is_member(&self, peer: &PeerId) -> bool {
        self.members.iter().any(|m| m.peer == *peer)
    }

    /// The epochs that count: made by a member (each in `epochs` verifies already).
    pub fn valid(&self, vault_id: &[u8; 16]) -> Vec<&Epoch> {
        debug_assert!(self.epochs.iter().all(|e| e.verifies(vault_id)));
        self.epochs
            .iter()
            .filter(|e| self.is_member(&e.made_by))
            .collect()
    }

    /// The current epoch: `None` is epoch 0.
    pub fn current(&self, vault_id: &[u8; 16]) -> Option<&Epoch> {
        current_of(&self.valid(vault_id))
    }

    /// Who epoch keys are sealed to: each member with an exchange key, and the kit.
    fn sealable(&self) -> Vec<(String, [u8; 32])> {
        let mut out: Vec<(String, [u8; 32])> = self
            .members
            .iter()
            .filter_map(|m| Some((m.peer.to_string(), m.exchange?)))
            .collect();
        if let Some(kit) = &self.kit {
            out.push((kit.recipient(), kit.exchange));
        }
        out
    }

    /// Whether the current epoch's key could be held by someone it should not be: a
    /// removed device, or a kit that was replaced. Epoch 0 once any device was removed,
    /// or once there is a kit (it has no epoch key to open). A name this device does
    /// not know yet (a device paired, or a kit made, on another device, whose record
    /// has not arrived) is no reason: it is known soon, as a member or not.
    pub fn needs_rotation(&self, vault_id: &[u8; 16]) -> bool {
        match self.current(vault_id) {
            None => !self.removed.is_empty() || self.kit.is_some(),
            Some(current) => current.sealed.keys().any(|name| {
                self.replaced_kits.contains(name)
                    || name
                        .parse::<PeerId>()
                        .is_ok_and(|p| self.removed.contains(&p))
            }),
        }
    }
}

fn current_of<'a>(valid: &[&'a Epoch]) -> Option<&'a Epoch> {
    valid
        .iter()
        .copied()
        .max_by(|a, b| a.n.cmp(&b.n).then_with(|| b.id.cmp(&a.id)))
}

/// A change to `_epochs`.
#[derive(Debug, Clone)]
pub enum Write {
    /// A new epoch record.
    New(Box<Epoch>),
    /// An epoch's key sealed to one more member.
    Seal {
        epoch: String,
        peer: String,
        sealed: Vec<u8>,
    },
}

/// When to make a new epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Now, whatever the current one is (`hearth keys rotate`).
    Now,
    /// If the current one could be held by a device that is no longer a member.
    IfNeeded,
    /// Not in this call, even if one is due ([`Kept::due`] says so): the keeper waits
    /// a moment for the epoch the device that removed another is sending.
    Later,
}

/// What `me` should write, given what it knows: a new epoch if `rotation` says so
/// (and, with [`Rotation::IfNeeded`], if the current one could be held by a device
/// that is no longer a member), and each epoch key it holds sealed to each member
/// that lacks it. Nothing if `me` is not a member.
pub fn plan(view: &View, me: &Identity<'_>, rotation: Rotation, now: u64) -> Vec<Write> {
    let mut writes = Vec::new();
    if !view.is_member(&me.peer()) {
        return writes;
    }
    let valid = view.valid(&me.vault_id);
    let current = current_of(&valid);
    let sealable = view.sealable();
    let new_epoch = match rotation {
        Rotation::Now => true,
        Rotation::IfNeeded => view.needs_rotation(&me.vault_id),
        Rotation::Later => false,
    };
    // Every epoch, the one about to be replaced too: a member or kit that lacks it
    // needs it for what was written under it.
    for epoch in &valid {
        // Missing, or sealed to an exchange key its holder no longer publishes; never
        // to a name the epoch excludes.
        let missing: Vec<_> = sealable
            .iter()
            .filter(|(name, public)| {
                !epoch.excluded.contains(name)
                    && epoch.sealed.get(name).is_none_or(|sealed| {
                        sealed.get(..PUBLIC_TAG_LEN) != Some(&public_tag(public)[..])
                    })
            })
            .collect();
        if missing.is_empty() {
            continue;
        }
        let Some(key) = epoch.open(me) else {
            continue;
        };
        for (name, public) in missing {
            if let Some(sealed) = seal_to(&me.vault_id, &epoch.id, name, public, &key) {
                writes.push(Write::Seal {
                    epoch: epoch.id.clone(),
                    peer: name.clone(),
                    sealed,
                });
            }
        }
    }
    if new_epoch {
        let mut excluded: Vec<String> = view.removed.iter().map(ToString::to_string).collect();
        excluded.extend(view.replaced_kits.iter().cloned());
        excluded.sort();
        excluded.dedup();
        if let Some((epoch, _)) = Epoch::make(me, current, &sealable, excluded, now) {
            writes.push(Write::New(Box::new(epoch)));
        }
    }
    writes
}

/// Applies `writes` to a view (what syncing them would do), for the model test and
/// for a device's own view after it writes.
pub fn apply(view: &mut View, writes: &[Write]) {
    for write in writes {
        match write {
            Write::New(epoch) => {
                if !view.epochs.iter().any(|e| e.id == epoch.id) {
                    view.epochs.push((**epoch).clone());
                }
            }
            Write::Seal {
                epoch,
                peer,
                sealed,
            } => {
                if let Some(e) = view.epochs.iter_mut().find(|e| e.id == *epoch) {
                    e.sealed.insert(peer.clone(), sealed.clone());
                }
            }
        }
    }
}

/// The epoch this device mints tokens under, as the [`Ring`] holds it.
pub struct Current {
    pub n: u32,
    pub id: String,
    pub key_id: u32,
    /// The seed of its grant signing key; `None` while this device has not received
    /// the epoch's key.
    signing_seed: Option<Zeroizing<[u8; 32]>>,
}

/// What this device's node knows of the epochs, kept in step with `_epochs`.
#[derive(Default)]
pub struct Ring {
    state: RwLock<RingState>,
    /// Held while the ring is brought in step, so two callers do not both rotate.
    keeping: Mutex<()>,
}

#[derive(Default)]
struct RingState {
    current: Option<Current>,
    /// Every valid epoch's token key, by key id.
    verifying: HashMap<u32, [u8; 32]>,
    /// How many valid epochs this device holds the key of, and how many there are.
    held: (usize, usize),
}

/// The key new tokens are signed with in an epoch after 0.
pub struct Signer {
    /// Names the epoch in the token (biscuit's root key id).
    pub key_id: u32,
    /// The Ed25519 seed.
    pub seed: Zeroizing<[u8; 32]>,
}

/// Why this device cannot sign under the current epoch.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "this device has not received the vault's current keys (epoch {n}) yet: let it sync with another device of the vault, or grant from one that has them"
)]
pub struct NotReceived {
    pub n: u32,
}

/// A summary for `hearth keys`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// The current epoch's number (0: the vault's first keys).
    pub epoch: u32,
    /// Its id (empty for epoch 0).
    pub id: String,
    /// Whether this device holds its key.
    pub held: bool,
    /// Epochs after 0 this device holds the keys of, and epochs after 0 there are.
    pub epochs_held: usize,
    pub epochs: usize,
}

impl Ring {
    /// The key a new token is signed with: `None` for epoch 0 (the vault's signing
    /// key), else the key id and the epoch's signing seed.
    pub fn signer(&self) -> Result<Option<Signer>, NotReceived> {
        let state = self.state.read().expect("ring lock");
        match &state.current {
            None => Ok(None),
            Some(current) => match &current.signing_seed {
                Some(seed) => Ok(Some(Signer {
                    key_id: current.key_id,
                    seed: seed.clone(),
                })),
                None => Err(NotReceived { n: current.n }),
            },
        }
    }

    /// The public key of the epoch a token names by its key id.
    pub fn verifying_key(&self, key_id: u32) -> Option<[u8; 32]> {
        self.state
            .read()
            .expect("ring lock")
            .verifying
            .get(&key_id)
            .copied()
    }

    pub fn summary(&self) -> Summary {
        let state = self.state.read().expect("ring lock");
        Summary {
            epoch: state.current.as_ref().map_or(0, |c| c.n),
            id: state
                .current
                .as_ref()
                .map(|c| c.id.clone())
                .unwrap_or_default(),
            held: state
                .current
                .as_ref()
                .is_none_or(|c| c.signing_seed.is_some()),
            epochs_held: state.held.0,
            epochs: state.held.1,
        }
    }

    /// Sets the ring from a view, opening each epoch to learn which this device holds.
    pub fn refresh(&self, view: &View, me: &Identity<'_>) {
        self.refresh_with(view, me, |e| e.open(me).is_some());
    }

    /// Sets the ring from a view; `holds` says whether this device holds an epoch's
    /// key (a node asks its at-rest keyring rather than opening every epoch again).
    pub fn refresh_with(&self, view: &View, me: &Identity<'_>, holds: impl Fn(&Epoch) -> bool) {
        let valid = view.valid(&me.vault_id);
        // Tokens keep verifying under the epoch they were signed in, even once the
        // device that made it is removed (its epochs no longer count as current): the
        // grant's binding is what refuses a token it signs.
        let verifying = view
            .epochs
            .iter()
            .filter(|e| view.is_member(&e.made_by) || view.removed.contains(&e.made_by))
            .map(|e| (key_id(&e.signing_key), e.signing_key))
            .collect();
        let held = valid.iter().filter(|e| holds(e)).count();
        let current = current_of(&valid).map(|c| Current {
            n: c.n,
            id: c.id.clone(),
            key_id: key_id(&c.signing_key),
            signing_seed: c.open(me).map(|key| grant_seed(&key)),
        });
        *self.state.write().expect("ring lock") = RingState {
            current,
            verifying,
            held: (held, valid.len()),
        };
    }
}

/// What this device knows, read from its collections.
pub fn view_of(collections: &Collections, vault_id: [u8; 16]) -> Result<View, CollectionError> {
    // A record is stored under the hash of its signed part: one record per epoch.
    // Only records that verify count (a record altered in sync is set aside, not
    // trusted), so nothing below checks a signature again.
    let mut by_id: BTreeMap<String, Epoch> = BTreeMap::new();
    for record in collections.records(&collection())? {
        match Epoch::from_record(&record).filter(|e| e.verifies(&vault_id)) {
            Some(epoch) => {
                by_id.insert(epoch.id.clone(), epoch);
            }
            None => {
                tracing::warn!("an epoch record cannot be read or does not verify; it is set aside")
            }
        }
    }
    let epochs = by_id.into_values().collect();
    let kits = crate::recovery::kits(collections, &vault_id)?;
    let mut view = View {
        epochs,
        replaced_kits: kits.replaced.iter().map(|k| k.recipient()).collect(),
        kit: kits.current.map(|(kit, _)| kit),
        ..View::default()
    };
    for device in crate::devices::devices(collections)? {
        let Ok(peer) = device.id.parse::<PeerId>() else {
            continue;
        };
        if device.removed_at.is_some() {
            view.removed.push(peer);
        } else {
            view.members.push(Member {
                peer,
                exchange: device.exchange_key(&vault_id),
            });
        }
    }
    Ok(view)
}

/// What [`keep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    /// A new epoch this device made, by number.
    pub rotated_to: Option<u32>,
    /// Epoch keys this device sealed to other members.
    pub sealed: usize,
    /// Whether a new epoch is due (a device that is no longer a member could hold the
    /// current key) and was not made in this call.
    pub due: bool,
}

impl Kept {
    /// Whether anything was written (then the store must commit).
    pub fn wrote(&self) -> bool {
        self.rotated_to.is_some() || self.sealed > 0
    }
}

/// Brings `_epochs` and the ring in step with what this device knows: makes a new
/// epoch as `rotation` says, seals the keys it holds to members that lack them, and
/// refreshes the ring. Durable only after the store commits.
pub fn keep(
    collections: &Collections,
    store: &Store,
    keys: &VaultKeys,
    rotation: Rotation,
) -> Result<Kept, CollectionError> {
    let me = &keys.identity();
    let ring = &keys.epochs;
    let _keeping = ring.keeping.lock().expect("keeping lock");
    let mut view = view_of(collections, keys.vault_id)?;
    // What is written below is sealed under the newest epoch this device holds.
    hold(store, keys, &view)?;
    let writes = plan(&view, me, rotation, crate::clock::now_unix());
    let mut kept = Kept::default();
    for write in &writes {
        match write {
            Write::New(epoch) => {
                let id = RecordId::parse(&epoch.id).expect("an epoch id is hex");
                collections.put(&collection(), &id, &epoch.to_record())?;
                tracing::info!(epoch = epoch.n, id = %epoch.id, "made a new epoch key");
                kept.rotated_to = Some(epoch.n);
            }
            Write::Seal {
                epoch,
                peer,
                sealed,
            } => {
                let id = RecordId::parse(epoch).expect("an epoch id is hex");
                let mut inner = Map::new();
                inner.insert(peer.clone(), Value::String(BASE64.encode(sealed)));
                let mut patch = Map::new();
                patch.insert("sealed".into(), Value::Object(inner));
                collections.patch(&collection(), &id, &patch)?;
                kept.sealed += 1;
            }
        }
    }
    if kept.sealed > 0 {
        tracing::info!(
            count = kept.sealed,
            "sealed epoch keys to devices that lacked them"
        );
    }
    apply(&mut view, &writes);
    // Top-ups give this device nothing new; an epoch it made, it holds from now on.
    if kept.rotated_to.is_some() {
        hold(store, keys, &view)?;
    }
    kept.due = view.is_member(&me.peer()) && view.needs_rotation(&me.vault_id);
    ring.refresh_with(&view, me, |e| keys.holds_epoch(key_id(&e.signing_key)));
    Ok(kept)
}

/// Seals `key`, the key of `epoch` (learnt another way: a restore opens it with the
/// recovery kit), to this device, as a member seals a key to a member that lacks it:
/// from then on this device holds the epoch as any member does. Durable only after
/// the store commits.
pub fn seal_to_self(
    collections: &Collections,
    keys: &VaultKeys,
    epoch: &Epoch,
    key: &[u8; 32],
) -> Result<bool, CollectionError> {
    let me = keys.identity();
    let Some(sealed) = seal_to(
        &me.vault_id,
        &epoch.id,
        &me.peer().to_string(),
        &keys.exchange_public(),
        key,
    ) else {
        return Ok(false);
    };
    let id = RecordId::parse(&epoch.id).expect("an epoch id is hex");
    let mut inner = Map::new();
    inner.insert(me.peer().to_string(), Value::String(BASE64.encode(&sealed)));
    let mut patch = Map::new();
    patch.insert("sealed".into(), Value::Object(inner));
    collections.patch(&collection(), &id, &patch)?;
    Ok(true)
}

/// Gives `keys` the epoch keys this device holds and seals new values at rest under
/// the newest of them, as `_epochs` says now; writes nothing but the keys it had not
/// kept yet. For a node's start, before it writes anything else.
pub fn hold_known(
    collections: &Collections,
    store: &Store,
    keys: &VaultKeys,
) -> Result<(), CollectionError> {
    hold(store, keys, &view_of(collections, keys.vault_id)?)
}

/// Keeps each epoch key this device can open and does not hold yet (sealed under its
/// own key, in the store) and gives it to `keys`; then seals new values at rest under
/// the newest epoch it holds.
fn hold(store: &Store, keys: &VaultKeys, view: &View) -> Result<(), CollectionError> {
    let me = keys.identity();
    let valid = view.valid(&me.vault_id);
    let mut held = Vec::new();
    for epoch in &valid {
        let id = key_id(&epoch.signing_key);
        if keys.holds_epoch(id) {
            held.push(*epoch);
            continue;
        }
        if let Some(key) = epoch.open(&me) {
            store.remember_epoch_key(&epoch.id, epoch.n, &key)?;
            keys.hold_epoch(id, &key);
            held.push(*epoch);
        }
    }
    keys.seal_under_epoch(current_of(&held).map(|e| key_id(&e.signing_key)));
    Ok(())
}

#[cfg(test)]
mod tests;
