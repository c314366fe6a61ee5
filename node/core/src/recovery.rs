//! The recovery kit: one secret, kept off every device, that opens every epoch key.
//!
//! `hearth recovery-kit` draws a 32-byte **recovery secret** and shows it as 24 words
//! (BIP39's English list, with its 8-bit checksum), optionally split into shares (any
//! two of three, Shamir over GF(256): each share 24 words of its own, with its number),
//! and optionally writes it to a file (its words, or, with a passphrase, the secret
//! sealed under an Argon2id key, as the key file is). The devices never keep it: they
//! keep what is derived from it, in the system collection `_recovery` (a record per
//! kit ever made, under its id, signed by the device that made it; the newest made by a
//! device that is still a member is the vault's kit):
//!
//! - an X25519 **exchange key** (HPKE) to which each epoch key is sealed, like to a
//!   device (`sealed["kit:ID"]` in `_epochs`), so whoever holds the secret opens every
//!   epoch: what a backup host keeps is sealed under them;
//! - an Ed25519 **owner key**, which signs what only the person may do (prune a backup
//!   host);
//! - a **handle**: the vault's opaque name on a backup host, so the kit alone finds it.
//!
//! A kit's id is the first 8 bytes (hex) of BLAKE3 over its exchange public key. A new
//! kit replaces the old one as the vault's kit; the epoch then rotates, so the old kit
//! opens nothing made afterwards. Derivations are BLAKE3 `derive_key` over the secret with the
//! contexts below (docs/FORMATS.md, "Recovery kit").

use std::fmt;

use data_encoding::{BASE64, HEXLOWER};
use hearth_protocol::RecordId;
use hearth_protocol::keyfile::KeyFile;
use libp2p_identity::PeerId;
use rand::RngCore;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::collections::{CollectionError, Collections};
use crate::keys::{KeysError, Passphrase};

pub const RECOVERY: &str = "_recovery";
/// The kit file's format name.
pub const KIT_FORMAT: &str = "hearth-recovery-kit";
pub const KIT_VERSION: u32 = 1;

const EXCHANGE_CONTEXT: &str = "hearth 2026-12 recovery exchange v1";
const OWNER_CONTEXT: &str = "hearth 2026-12 recovery owner v1";
const HANDLE_CONTEXT: &str = "hearth 2026-12 recovery handle v1";
/// The binding of a passphrase-sealed secret in a kit file.
const KIT_DOMAIN: &[u8] = b"recovery-kit";
const KIT_KEY: &[u8] = b"secret";
/// What the device that makes a kit the vault's kit signs its record under.
const KIT_RECORD_DOMAIN: &[u8] = b"hearth 2026-12 recovery kit record v1\0";

pub fn collection() -> hearth_protocol::CollectionName {
    hearth_protocol::CollectionName::parse(RECOVERY).expect("_recovery is a valid name")
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KitError {
    #[error("the recovery words are not valid: {0}")]
    Words(String),
    #[error("a share is not valid: {0}")]
    Share(String),
    #[error("{0}")]
    Shares(String),
    #[error("the kit file is not valid: {0}")]
    File(String),
    #[error("this kit is protected by a passphrase; give it with --passphrase-file")]
    PassphraseRequired,
    #[error("wrong passphrase for this kit")]
    WrongPassphrase,
    #[error(transparent)]
    Keys(#[from] KeysError),
}

/// The recovery secret. Zeroized on drop; its `Debug` shows nothing of it.
pub struct RecoverySecret(Zeroizing<[u8; 32]>);

impl fmt::Debug for RecoverySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoverySecret(..)")
    }
}

impl RecoverySecret {
    pub fn generate() -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *secret);
        Self(secret)
    }

    /// The 24 words, space-separated.
    pub fn words(&self) -> Zeroizing<String> {
        words_of(&*self.0)
    }

    /// Reads 24 words (case, extra spaces and line breaks do not matter). A changed,
    /// missing or swapped word fails the checksum (most of the time: 8 bits) or the
    /// word list.
    pub fn from_words(words: &str) -> Result<Self, KitError> {
        Ok(Self(entropy_of(words).map_err(KitError::Words)?))
    }

    fn derive(&self, context: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, &*self.0))
    }

    /// The seed of the kit's exchange key (HPKE).
    pub fn exchange_seed(&self) -> Zeroizing<[u8; 32]> {
        self.derive(EXCHANGE_CONTEXT)
    }

    /// The kit's owner key (Ed25519): what opens the vault on a backup host to read.
    pub fn owner_keypair(&self) -> libp2p_identity::ed25519::Keypair {
        let mut seed = self.derive(OWNER_CONTEXT);
        let secret = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut *seed)
            .expect("any 32 bytes are an Ed25519 seed");
        libp2p_identity::ed25519::Keypair::from(secret)
    }

    /// What the devices keep of this kit.
    pub fn public(&self) -> KitPublic {
        let exchange = crate::epochs::exchange_public(&self.exchange_seed());
        let owner = self.owner_keypair().public().to_bytes();
        let mut handle = [0u8; 16];
        handle.copy_from_slice(&self.derive(HANDLE_CONTEXT)[..16]);
        KitPublic {
            id: kit_id(&exchange),
            exchange,
            owner,
            handle,
        }
    }

    /// Splits the secret into `total` shares, any `threshold` of which bring it back.
    pub fn split(&self, threshold: u8, total: u8) -> Result<Vec<Share>, KitError> {
        if !(2..=total).contains(&threshold) || total > 16 {
            return Err(KitError::Shares(format!(
                "{threshold} of {total} shares: give 2 to 16 shares, at least 2 needed"
            )));
        }
        Ok(sharks::Sharks(threshold)
            .dealer(&*self.0)
            .take(usize::from(total))
            .map(|share| {
                let bytes = Zeroizing::new(Vec::from(&share));
                let mut y = Zeroizing::new([0u8; 32]);
                y.copy_from_slice(&bytes[1..]);
                Share {
                    number: bytes[0],
                    threshold,
                    y,
                }
            })
            .collect())
    }

    /// Brings the secret back from shares (at least as many as the threshold they were
    /// made with). Shares carry no integrity beyond their words' checksums: compare the
    /// result's [`KitPublic::id`] with the kit's.
    pub fn combine(shares: &[Share]) -> Result<Self, KitError> {
        let Some(first) = shares.first() else {
            return Err(KitError::Shares("no share given".into()));
        };
        let threshold = first.threshold;
        if shares.iter().any(|s| s.threshold != threshold) {
            return Err(KitError::Shares(
                "the shares come from different splits".into(),
            ));
        }
        let mut numbers: Vec<u8> = shares.iter().map(|s| s.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        if numbers.len() < usize::from(threshold) {
            return Err(KitError::Shares(format!(
                "{} different share(s) given; {threshold} are needed",
                numbers.len()
            )));
        }
        let parsed: Vec<sharks::Share> = shares
            .iter()
            .map(|s| {
                let mut bytes = Zeroizing::new(vec![s.number]);
                bytes.extend_from_slice(&*s.y);
                sharks::Share::try_from(bytes.as_slice())
                    .map_err(|e| KitError::Share(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let secret = Zeroizing::new(
            sharks::Sharks(threshold)
                .recover(parsed.iter())
                .map_err(|e| KitError::Shares(e.to_string()))?,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        if secret.len() != 32 {
            return Err(KitError::Shares("the shares do not hold a secret".into()));
        }
        out.copy_from_slice(&secret);
        Ok(Self(out))
    }

    /// A kit file holding the secret: its words, or, with a passphrase, the secret
    /// sealed under a key Argon2id derives from it.
    pub fn to_file(
        &self,
        vault_id: &str,
        made_at: u64,
        hosts: &[KitHost],
        passphrase: Option<&Passphrase>,
    ) -> Result<Zeroizing<Vec<u8>>, KitError> {
        let kit = self.public();
        let mut file = json!({
            "format": KIT_FORMAT,
            "version": KIT_VERSION,
            "vault": vault_id,
            "kit": kit.id,
            "made_at": made_at,
            "hosts": hosts,
        });
        match passphrase {
            None => file["words"] = Value::String(self.words().to_string()),
            Some(passphrase) => {
                let sealed =
                    crate::keys::wrap_with_passphrase(&*self.0, passphrase, KIT_DOMAIN, KIT_KEY)?;
                file["sealed"] = serde_json::to_value(&sealed).expect("a key file serializes");
            }
        }
        let mut out = Zeroizing::new(serde_json::to_vec_pretty(&file).expect("JSON"));
        out.push(b'\n');
        Ok(out)
    }

    /// Reads a kit file (with its passphrase if it has one); returns the secret and the
    /// kit id the file names (checked against the secret).
    pub fn from_file(
        bytes: &[u8],
        passphrase: Option<&Passphrase>,
    ) -> Result<(Self, KitFile), KitError> {
        let file: Value =
            serde_json::from_slice(bytes).map_err(|e| KitError::File(e.to_string()))?;
        let text = |field: &str| file.get(field).and_then(Value::as_str);
        if text("format") != Some(KIT_FORMAT) {
            return Err(KitError::File(format!(
                "its format is not {KIT_FORMAT:?}: is it a recovery kit?"
            )));
        }
        let version = file.get("version").and_then(Value::as_u64);
        if version != Some(u64::from(KIT_VERSION)) {
            return Err(KitError::File(format!(
                "version {version:?}; this Hearth reads version {KIT_VERSION}"
            )));
        }
        let info = KitFile {
            vault: text("vault").unwrap_or_default().to_owned(),
            kit: text("kit").unwrap_or_default().to_owned(),
            hosts: match file.get("hosts") {
                None => Vec::new(),
                Some(hosts) => serde_json::from_value(hosts.clone()).map_err(|e| {
                    KitError::File(format!(
                        "its hosts are not a list of {{\"peer\", \"addrs\"}}: {e}"
                    ))
                })?,
            },
        };
        let secret = match (text("words"), file.get("sealed")) {
            (Some(words), None) => Self::from_words(words)?,
            (None, Some(sealed)) => {
                let sealed: KeyFile = serde_json::from_value(sealed.clone())
                    .map_err(|e| KitError::File(format!("its sealed secret: {e}")))?;
                let passphrase = passphrase.ok_or(KitError::PassphraseRequired)?;
                let plain =
                    crate::keys::unwrap_with_passphrase(&sealed, passphrase, KIT_DOMAIN, KIT_KEY)
                        .map_err(|e| match e {
                        KeysError::WrongPassphrase => KitError::WrongPassphrase,
                        other => KitError::Keys(other),
                    })?;
                let mut out = Zeroizing::new([0u8; 32]);
                if plain.len() != 32 {
                    return Err(KitError::File("its sealed secret is not 32 bytes".into()));
                }
                out.copy_from_slice(&plain);
                Self(out)
            }
            _ => {
                return Err(KitError::File(
                    "it holds neither words nor a sealed secret".into(),
                ));
            }
        };
        if secret.public().id != info.kit {
            return Err(KitError::File(format!(
                "its secret does not match the kit it names ({})",
                info.kit
            )));
        }
        Ok((secret, info))
    }
}

/// What a kit file says besides its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KitFile {
    pub vault: String,
    pub kit: String,
    /// The vault's backup hosts when the file was written: where `hearth recover`
    /// looks for the vault when it is given no host.
    pub hosts: Vec<KitHost>,
}

/// A backup host as a kit file names it: its PeerId and addresses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KitHost {
    pub peer: String,
    pub addrs: Vec<String>,
}

/// Writes `hosts` into a kit file's bytes, leaving everything else as it is (the
/// secret, sealed or not, is not read).
pub fn with_hosts(bytes: &[u8], hosts: &[KitHost]) -> Result<Zeroizing<Vec<u8>>, KitError> {
    let mut file: Value =
        serde_json::from_slice(bytes).map_err(|e| KitError::File(e.to_string()))?;
    if file.get("format").and_then(Value::as_str) != Some(KIT_FORMAT) {
        return Err(KitError::File(format!(
            "its format is not {KIT_FORMAT:?}: is it a recovery kit?"
        )));
    }
    file["hosts"] = serde_json::to_value(hosts).expect("hosts serialize");
    let mut out = Zeroizing::new(serde_json::to_vec_pretty(&file).expect("JSON"));
    out.push(b'\n');
    Ok(out)
}

fn words_of(entropy: &[u8]) -> Zeroizing<String> {
    let mnemonic = bip39::Mnemonic::from_entropy(entropy).expect("32 bytes are valid entropy");
    Zeroizing::new(mnemonic.words().collect::<Vec<_>>().join(" "))
}

fn entropy_of(words: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let words = Zeroizing::new(
        words
            .split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" "),
    );
    let count = words.split(' ').filter(|w| !w.is_empty()).count();
    if count != 24 {
        return Err(format!("{count} words given; a kit has 24"));
    }
    let mnemonic = bip39::Mnemonic::parse_in(bip39::Language::English, words.as_str()).map_err(
        |e| match e {
            bip39::Error::UnknownWord(i) => format!("word {} is not on the list", i + 1),
            bip39::Error::InvalidChecksum => {
                "the checksum does not match: a word is wrong or out of place".to_owned()
            }
            other => other.to_string(),
        },
    )?;
    let (entropy, len) = mnemonic.to_entropy_array();
    let entropy = Zeroizing::new(entropy);
    if len != 32 {
        return Err(format!("{len} bytes; a kit holds 32"));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&entropy[..32]);
    Ok(out)
}

/// One share of a split secret: its number (1, 2, …), how many are needed, and its
/// part of the secret. Zeroized on drop.
pub struct Share {
    pub number: u8,
    pub threshold: u8,
    y: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Share({} of {} needed, ..)", self.number, self.threshold)
    }
}

impl Share {
    /// `"share N of K: WORD … WORD"`, N its number and K how many are needed.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "share {} of {}: {}",
            self.number,
            self.threshold,
            words_of(&*self.y).as_str()
        ))
    }

    /// Reads [`Share::to_text`]'s form.
    pub fn parse(text: &str) -> Result<Self, KitError> {
        let bad = |why: &str| KitError::Share(why.to_owned());
        let rest = text
            .trim()
            .strip_prefix("share ")
            .ok_or_else(|| bad("it does not start with \"share N of K:\""))?;
        let (head, words) = rest
            .split_once(':')
            .ok_or_else(|| bad("it has no ':' after \"share N of K\""))?;
        let (number, threshold) = head
            .split_once(" of ")
            .and_then(|(n, k)| Some((n.trim().parse::<u8>().ok()?, k.trim().parse::<u8>().ok()?)))
            .ok_or_else(|| bad("\"share N of K\" needs two numbers"))?;
        if number == 0 || threshold < 2 {
            return Err(bad("share numbers start at 1, and at least 2 are needed"));
        }
        let y = entropy_of(words).map_err(KitError::Share)?;
        Ok(Self {
            number,
            threshold,
            y,
        })
    }
}

/// What the devices keep of a kit (`_recovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KitPublic {
    pub id: String,
    /// Its exchange key's public half (epoch keys are sealed to it).
    pub exchange: [u8; 32],
    /// Its owner key's public half (Ed25519).
    pub owner: [u8; 32],
    /// The vault's name on a backup host.
    pub handle: [u8; 16],
}

/// A kit's id: the first 8 bytes (hex) of BLAKE3 over its exchange public key.
pub fn kit_id(exchange: &[u8; 32]) -> String {
    HEXLOWER.encode(&blake3::hash(exchange).as_bytes()[..8])
}

impl KitPublic {
    /// The name epoch keys are sealed to it under (in `_epochs`' `sealed`).
    pub fn recipient(&self) -> String {
        format!("kit:{}", self.id)
    }

    /// What the device that makes it the vault's kit signs (docs/FORMATS.md, "Recovery
    /// kit"): a record only that device could have written.
    fn signed_part(&self, vault_id: &[u8; 16], made_at: u64, made_by: &str) -> Vec<u8> {
        let mut out = KIT_RECORD_DOMAIN.to_vec();
        out.extend_from_slice(vault_id);
        out.extend_from_slice(&self.exchange);
        out.extend_from_slice(&self.owner);
        out.extend_from_slice(&self.handle);
        out.extend_from_slice(&made_at.to_be_bytes());
        out.extend_from_slice(made_by.as_bytes());
        out
    }

    fn to_record(&self, made_at: u64, made_by: &str, signature: &[u8]) -> Map<String, Value> {
        match json!({
            "kit": self.id,
            "exchange": BASE64.encode(&self.exchange),
            "owner": BASE64.encode(&self.owner),
            "handle": HEXLOWER.encode(&self.handle),
            "made_at": made_at,
            "made_by": made_by,
            "signature": BASE64.encode(signature),
        }) {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        }
    }

    /// Reads the `_recovery` record; `None` if it is not a well-formed one (its id
    /// must match its exchange key).
    pub fn from_record(record: &Value) -> Option<Self> {
        Self::parse(record).ok()
    }

    /// Reads a kit's public part from `{"kit", "exchange", "owner", "handle"}` (a
    /// `_recovery` record, or what `POST /v1/recovery` sends); the error names the part
    /// that is not valid.
    pub fn parse(record: &Value) -> Result<Self, &'static str> {
        let text = |field: &str| record.get(field).and_then(Value::as_str);
        let b64_32 = |field: &str| -> Option<[u8; 32]> {
            BASE64.decode(text(field)?.as_bytes()).ok()?.try_into().ok()
        };
        let exchange = b64_32("exchange").ok_or("exchange key")?;
        let owner = b64_32("owner").ok_or("owner key")?;
        let handle: [u8; 16] = text("handle")
            .and_then(|h| HEXLOWER.decode(h.as_bytes()).ok()?.try_into().ok())
            .ok_or("handle")?;
        let id = text("kit").unwrap_or_default().to_owned();
        if id != kit_id(&exchange) {
            return Err("id (it must be the hash of its exchange key)");
        }
        Ok(Self {
            id,
            exchange,
            owner,
            handle,
        })
    }
}

/// A `_recovery` record that its maker signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub kit: KitPublic,
    pub made_at: u64,
    pub made_by: PeerId,
}

impl Made {
    /// Reads a record: `None` unless it is well formed, stored under its kit's id,
    /// and signed by the device it names, for this vault.
    fn from_record(record: &Value, vault_id: &[u8; 16]) -> Option<Self> {
        let kit = KitPublic::from_record(record)?;
        if record.get("id").and_then(Value::as_str) != Some(kit.id.as_str()) {
            return None;
        }
        let made_at = record.get("made_at").and_then(Value::as_u64)?;
        let made_by_text = record.get("made_by").and_then(Value::as_str)?;
        let made_by: PeerId = made_by_text.parse().ok()?;
        let signature = BASE64
            .decode(record.get("signature").and_then(Value::as_str)?.as_bytes())
            .ok()?;
        let key = crate::devices::public_key_of(&made_by)?;
        key.verify(
            &kit.signed_part(vault_id, made_at, made_by_text),
            &signature,
        )
        .then_some(Self {
            kit,
            made_at,
            made_by,
        })
    }
}

/// The vault's kit and the kits it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kits {
    /// The newest kit made by a device that is still a member (then the smallest id,
    /// so two devices that made one apart agree), and when it was made.
    pub current: Option<(KitPublic, u64)>,
    /// Every other kit: older ones, and any made by a device since removed (whatever
    /// time it wrote, so a device cannot keep a kit of its own current after it is
    /// removed). No epoch made afterwards is sealed to them.
    pub replaced: Vec<KitPublic>,
}

impl Kits {
    /// Orders the signed records: shared by [`kits`] and the epochs' model test.
    pub fn arrange(mut made: Vec<Made>, is_member: impl Fn(&PeerId) -> bool) -> Self {
        made.sort_by(|a, b| {
            b.made_at
                .cmp(&a.made_at)
                .then_with(|| a.kit.id.cmp(&b.kit.id))
        });
        let mut kits = Self::default();
        for one in made {
            if kits.current.is_none() && is_member(&one.made_by) {
                kits.current = Some((one.kit, one.made_at));
            } else {
                kits.replaced.push(one.kit);
            }
        }
        kits
    }
}

/// The vault's kit and the kits it replaced, as this device knows them. A record that
/// is not signed by the device it names counts as neither.
pub fn kits(collections: &Collections, vault_id: &[u8; 16]) -> Result<Kits, CollectionError> {
    let made: Vec<Made> = collections
        .records(&collection())?
        .iter()
        .filter_map(|record| {
            let made = Made::from_record(record, vault_id);
            if made.is_none() {
                // Read on every key check: `recovery-kit --check` is where it is said.
                tracing::debug!(
                    "a recovery kit record is not signed by its maker; it is set aside"
                );
            }
            made
        })
        .collect();
    let members = crate::devices::members(collections);
    Ok(Kits::arrange(made, |peer| members.contains(peer)))
}

/// The vault's kit, as this device knows it, and when it was made.
pub fn current(
    collections: &Collections,
    vault_id: &[u8; 16],
) -> Result<Option<(KitPublic, u64)>, CollectionError> {
    Ok(kits(collections, vault_id)?.current)
}

/// Makes `kit` the vault's kit: a record of its own (under its id), signed by
/// `device` (this device's key), newer than any other. Durable only after the store
/// commits.
pub fn set(
    collections: &Collections,
    vault_id: &[u8; 16],
    device: &libp2p_identity::Keypair,
    kit: &KitPublic,
    made_at: u64,
) -> Result<(), CollectionError> {
    let made_by = device.public().to_peer_id().to_string();
    let signature = device
        .sign(&kit.signed_part(vault_id, made_at, &made_by))
        .expect("an Ed25519 key signs anything");
    let id = RecordId::parse(&kit.id).expect("a kit id is hex");
    collections.put(
        &collection(),
        &id,
        &kit.to_record(made_at, &made_by, &signature),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a device that is compromised while a member can write into `_recovery`
    /// (its store syncs to the others): a kit in another device's name, a record that
    /// is not signed, a kit of its own with a far-future time. None outlives it: only
    /// a record its maker signed counts, and none made by a device since removed.
    #[test]
    fn a_kit_counts_only_when_signed_by_a_member_that_made_it() {
        let vault = crate::testutil::TestVault::new();
        let collections = Collections::open(vault.store.clone(), vault.keys.vault_id).unwrap();
        let vault_id = vault.keys.vault_id;
        let me = &vault.keys.device;
        let thief = libp2p_identity::Keypair::generate_ed25519();
        let thief_peer = thief.public().to_peer_id();
        crate::devices::add(&collections, &me.public().to_peer_id(), "mine").unwrap();
        crate::devices::add(&collections, &thief_peer, "stolen").unwrap();

        let honest = RecoverySecret::generate().public();
        set(&collections, &vault_id, me, &honest, 1_000).unwrap();
        assert_eq!(
            current(&collections, &vault_id).unwrap(),
            Some((honest.clone(), 1_000))
        );

        // Signed by the thief in my name, then unsigned, both newer: neither counts.
        let forged = RecoverySecret::generate().public();
        let id = RecordId::parse(&forged.id).unwrap();
        let made_by = me.public().to_peer_id().to_string();
        let signature = thief
            .sign(&forged.signed_part(&vault_id, 2_000, &made_by))
            .unwrap();
        collections
            .put(
                &collection(),
                &id,
                &forged.to_record(2_000, &made_by, &signature),
            )
            .unwrap();
        let unsigned = RecoverySecret::generate().public();
        let mut record = unsigned.to_record(3_000, &made_by, &[]);
        record.remove("signature");
        collections
            .put(
                &collection(),
                &RecordId::parse(&unsigned.id).unwrap(),
                &record,
            )
            .unwrap();
        // Signed for another vault.
        let elsewhere = RecoverySecret::generate().public();
        set(&collections, &[9; 16], me, &elsewhere, 4_000).unwrap();
        let kits = kits(&collections, &vault_id).unwrap();
        assert_eq!(kits.current, Some((honest.clone(), 1_000)));
        assert!(kits.replaced.is_empty(), "{:?}", kits.replaced);

        // The thief's own kit, far in the future, is the vault's kit while it is a
        // member...
        let planted = RecoverySecret::generate().public();
        set(&collections, &vault_id, &thief, &planted, u64::MAX).unwrap();
        assert_eq!(
            current(&collections, &vault_id).unwrap(),
            Some((planted.clone(), u64::MAX))
        );
        // ...and is replaced the moment it is removed: the kit before it is the
        // vault's again, the planted one is a kit no new epoch is sealed to.
        crate::devices::mark_removed(&collections, &thief_peer, 5_000).unwrap();
        let kits = super::kits(&collections, &vault_id).unwrap();
        assert_eq!(kits.current, Some((honest.clone(), 1_000)));
        assert_eq!(kits.replaced, vec![planted.clone()]);
        let view = crate::epochs::view_of(&collections, vault_id).unwrap();
        assert_eq!(view.kit, Some(honest));
        assert_eq!(view.replaced_kits, vec![planted.recipient()]);
    }

    #[test]
    fn words_bring_the_secret_back_and_a_changed_word_is_caught() {
        let secret = RecoverySecret::generate();
        let words = secret.words();
        assert_eq!(words.split(' ').count(), 24);
        let back = RecoverySecret::from_words(&format!("  {}\n", words.to_uppercase())).unwrap();
        assert_eq!(*back.0, *secret.0);
        assert_eq!(back.public(), secret.public());

        let list: Vec<&str> = words.split(' ').collect();
        // Every word replaced by another from the list: the checksum (8 bits) catches
        // all but about 1 in 256; over 24 positions, at most a few slip.
        let english = bip39::Language::English.word_list();
        let mut caught = 0;
        for i in 0..24 {
            let mut changed = list.clone();
            changed[i] = if list[i] == english[0] {
                english[1]
            } else {
                english[0]
            };
            match RecoverySecret::from_words(&changed.join(" ")) {
                Err(KitError::Words(m)) => {
                    assert!(m.contains("checksum"), "{m}");
                    caught += 1;
                }
                Ok(other) => assert_ne!(*other.0, *secret.0),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(caught >= 20, "only {caught} of 24 changed words caught");
        // Two words swapped, a word missing, a word not on the list.
        let mut swapped = list.clone();
        swapped.swap(3, 17);
        if list[3] != list[17] {
            assert!(
                RecoverySecret::from_words(&swapped.join(" "))
                    .map(|s| *s.0 != *secret.0)
                    .unwrap_or(true)
            );
        }
        assert!(matches!(
            RecoverySecret::from_words(&list[..23].join(" ")),
            Err(KitError::Words(m)) if m.contains("23 words")
        ));
        let mut unknown = list.clone();
        unknown[5] = "hearthstone";
        assert!(matches!(
            RecoverySecret::from_words(&unknown.join(" ")),
            Err(KitError::Words(m)) if m.contains("word 6")
        ));
    }

    #[test]
    fn any_two_of_three_shares_bring_it_back_and_one_does_not() {
        let secret = RecoverySecret::generate();
        let shares = secret.split(2, 3).unwrap();
        assert_eq!(shares.len(), 3);
        let texts: Vec<Zeroizing<String>> = shares.iter().map(Share::to_text).collect();
        for (a, b) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
            let pair = [
                Share::parse(&texts[a]).unwrap(),
                Share::parse(&texts[b]).unwrap(),
            ];
            assert_eq!(*RecoverySecret::combine(&pair).unwrap().0, *secret.0);
        }
        let one = [Share::parse(&texts[0]).unwrap()];
        assert!(matches!(
            RecoverySecret::combine(&one),
            Err(KitError::Shares(m)) if m.contains("2 are needed")
        ));
        let twice = [
            Share::parse(&texts[1]).unwrap(),
            Share::parse(&texts[1]).unwrap(),
        ];
        assert!(RecoverySecret::combine(&twice).is_err());
        // A share's words carry their own checksum.
        let mut words: Vec<String> = texts[0].split(' ').map(str::to_owned).collect();
        let last = words.len() - 1;
        words.swap(last, last - 1);
        let broken = words.join(" ");
        if broken != *texts[0] {
            assert!(
                Share::parse(&broken).is_err() || {
                    let pair = [
                        Share::parse(&broken).unwrap(),
                        Share::parse(&texts[1]).unwrap(),
                    ];
                    *RecoverySecret::combine(&pair).unwrap().0 != *secret.0
                }
            );
        }
        assert!(Share::parse("share two of 3: abandon").is_err());
        assert!(secret.split(1, 3).is_err());
        assert!(secret.split(4, 3).is_err());
    }

    #[test]
    fn a_kit_file_with_words_or_a_passphrase() {
        let secret = RecoverySecret::generate();
        let id = secret.public().id;
        let plain = secret.to_file("ab12", 5, &[], None).unwrap();
        let text = String::from_utf8(plain.to_vec()).unwrap();
        assert!(text.contains(secret.words().as_str()));
        let (back, info) = RecoverySecret::from_file(&plain, None).unwrap();
        assert_eq!(
            (*back.0, info.kit.as_str(), info.vault.as_str()),
            (*secret.0, id.as_str(), "ab12")
        );

        let pass = Passphrase::new("kitchen drawer".into()).unwrap();
        let sealed = secret.to_file("ab12", 5, &[], Some(&pass)).unwrap();
        let text = String::from_utf8(sealed.to_vec()).unwrap();
        assert!(!text.contains(secret.words().as_str()));
        assert!(!text.contains("kitchen"));
        assert!(matches!(
            RecoverySecret::from_file(&sealed, None),
            Err(KitError::PassphraseRequired)
        ));
        let wrong = Passphrase::new("kitchen sink".into()).unwrap();
        assert!(matches!(
            RecoverySecret::from_file(&sealed, Some(&wrong)),
            Err(KitError::WrongPassphrase)
        ));
        let (back, _) = RecoverySecret::from_file(&sealed, Some(&pass)).unwrap();
        assert_eq!(*back.0, *secret.0);

        // Hosts written into it later: the secret, sealed, stays as it was.
        let host = KitHost {
            peer: "12D3KooWhost".into(),
            addrs: vec!["/ip4/127.0.0.1/tcp/7475".into()],
        };
        let moved = with_hosts(&sealed, std::slice::from_ref(&host)).unwrap();
        let (back, info) = RecoverySecret::from_file(&moved, Some(&pass)).unwrap();
        assert_eq!((*back.0, info.hosts), (*secret.0, vec![host]));
        let mut bad: Value = serde_json::from_slice(&moved).unwrap();
        bad["hosts"] = json!("everywhere");
        assert!(matches!(
            RecoverySecret::from_file(&serde_json::to_vec(&bad).unwrap(), Some(&pass)),
            Err(KitError::File(m)) if m.contains("hosts")
        ));
        assert!(with_hosts(b"{\"format\": \"hearth-keys\"}", &[]).is_err());

        // A file that asks Argon2 for more than a key file may is refused before any
        // work is done (a tampered kit cannot make `recover` use all memory).
        let mut greedy: Value = serde_json::from_slice(&sealed).unwrap();
        let protection = &mut greedy["sealed"]["protection"];
        assert_eq!(protection["kind"], "argon2id");
        protection["m_cost_kib"] = json!(u32::MAX);
        let started = std::time::Instant::now();
        let refused = RecoverySecret::from_file(&serde_json::to_vec(&greedy).unwrap(), Some(&pass));
        assert!(
            matches!(&refused, Err(KitError::Keys(e)) if e.to_string().contains("out of bounds")),
            "{:?}",
            refused.err()
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));

        // A file naming another kit, or not a kit at all.
        let mut other: Value = serde_json::from_slice(&plain).unwrap();
        other["kit"] = json!("0000000000000000");
        assert!(matches!(
            RecoverySecret::from_file(&serde_json::to_vec(&other).unwrap(), None),
            Err(KitError::File(m)) if m.contains("does not match")
        ));
        assert!(RecoverySecret::from_file(b"{\"format\": \"hearth-keys\"}", None).is_err());
        assert!(RecoverySecret::from_file(b"garbage", None).is_err());
    }

    #[test]
    fn the_record_reads_back_and_a_mismatched_id_is_refused() {
        let kit = RecoverySecret::generate().public();
        let record = Value::Object(kit.to_record(7, "peer", &[1; 64]));
        assert_eq!(KitPublic::from_record(&record), Some(kit.clone()));
        let mut wrong = record.clone();
        wrong["kit"] = json!("ffffffffffffffff");
        assert_eq!(KitPublic::from_record(&wrong), None);
        assert_eq!(kit.recipient(), format!("kit:{}", kit.id));
    }
}
