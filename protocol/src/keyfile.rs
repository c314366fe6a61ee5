//! The key file, `HOME/keys` (mode 0600): a device's secrets, optionally wrapped by a
//! passphrase.
//!
//! ```json
//! {"format": "hearth-keys", "version": 1,
//!  "protection": {"kind": "none"}
//!              | {"kind": "argon2id", "salt": B64, "m_cost_kib": N, "t_cost": N, "p_cost": N},
//!  "secrets": B64}
//! ```
//!
//! With `none`, `secrets` is the plain [`SecretsBlob`]; with `argon2id`, it is that blob
//! sealed (see [`crate::seal`], binding `("keyfile", "secrets")`) under the key Argon2id
//! derives from the passphrase and salt. The blob, version 2, is 177 bytes:
//!
//! ```text
//! 0        version (2)
//! 1..17    vault id (random; the same on every device of the vault)
//! 17..49   storage key (random; seals everything in the store)
//! 49..81   vault signing key (Ed25519 seed; signs grants' tokens in epoch 0)
//! 81..113  BLAKE3 hash of the owner token (the token itself is in HOME/owner.token)
//! 113..145 device identity (libp2p Ed25519 secret key; this device's PeerId)
//! 145..177 exchange key (this device's own: the seed of its X25519 HPKE key pair,
//!          to which the vault's epoch keys are sealed)
//! ```
//!
//! Version 1 (145 bytes) is version 2 without the exchange key; it is still read, and
//! the node rewrites it as version 2 (with a new exchange key) when it opens it.

use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const KEYFILE_FORMAT: &str = "hearth-keys";
pub const KEYFILE_VERSION: u32 = 1;
pub const SECRETS_VERSION: u8 = 2;
pub const SECRETS_LEN: usize = 177;
/// The blob before exchange keys (still read).
pub const SECRETS_V1_LEN: usize = 145;
/// Binding of the sealed secrets blob.
pub const SECRETS_DOMAIN: &[u8] = b"keyfile";
pub const SECRETS_KEY: &[u8] = b"secrets";

/// Bounds on Argon2 parameters read from a file, so a tampered key file cannot make
/// the node allocate terabytes or spin for hours.
pub const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
pub const MAX_T_COST: u32 = 64;
pub const MAX_P_COST: u32 = 16;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("key file is not valid: {0}")]
    Syntax(String),
    #[error("key file has format {0:?}, expected \"hearth-keys\"")]
    Format(String),
    #[error("key file has version {0}; this Hearth reads version {KEYFILE_VERSION}")]
    Version(u32),
    #[error("key file's Argon2 parameters are out of bounds ({0})")]
    Params(String),
    #[error("key file's secrets are malformed ({0})")]
    Secrets(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    pub format: String,
    pub version: u32,
    pub protection: Protection,
    /// Base64 of the secrets blob, plain or sealed per `protection`.
    pub secrets: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Protection {
    None,
    Argon2id(Argon2Params),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Argon2Params {
    /// Base64 of 16 to 64 random bytes.
    pub salt: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Argon2Params {
    pub fn salt_bytes(&self) -> Result<Vec<u8>, KeyFileError> {
        let salt = BASE64
            .decode(self.salt.as_bytes())
            .map_err(|e| KeyFileError::Params(format!("salt is not base64: {e}")))?;
        if !(16..=64).contains(&salt.len()) {
            return Err(KeyFileError::Params(format!(
                "salt is {} bytes",
                salt.len()
            )));
        }
        Ok(salt)
    }

    fn check(&self) -> Result<(), KeyFileError> {
        self.salt_bytes()?;
        if !(8..=MAX_M_COST_KIB).contains(&self.m_cost_kib)
            || !(1..=MAX_T_COST).contains(&self.t_cost)
            || !(1..=MAX_P_COST).contains(&self.p_cost)
        {
            return Err(KeyFileError::Params(format!(
                "m_cost_kib={}, t_cost={}, p_cost={}",
                self.m_cost_kib, self.t_cost, self.p_cost
            )));
        }
        Ok(())
    }
}

impl KeyFile {
    pub fn new(protection: Protection, secrets: &[u8]) -> Self {
        Self {
            format: KEYFILE_FORMAT.to_owned(),
            version: KEYFILE_VERSION,
            protection,
            secrets: BASE64.encode(secrets),
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, KeyFileError> {
        let file: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| KeyFileError::Syntax(e.to_string()))?;
        if file.format != KEYFILE_FORMAT {
            return Err(KeyFileError::Format(file.format));
        }
        if file.version != KEYFILE_VERSION {
            return Err(KeyFileError::Version(file.version));
        }
        if let Protection::Argon2id(params) = &file.protection {
            params.check()?;
        }
        Ok(file)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("key file serializes");
        out.push(b'\n');
        out
    }

    pub fn secrets_bytes(&self) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
        BASE64
            .decode(self.secrets.as_bytes())
            .map(Zeroizing::new)
            .map_err(|e| KeyFileError::Secrets(format!("not base64: {e}")))
    }
}

/// The decoded secrets blob. Zeroized on drop, never printed.
pub struct SecretsBlob {
    pub vault_id: [u8; 16],
    pub storage_key: Zeroizing<[u8; 32]>,
    pub signing_key: Zeroizing<[u8; 32]>,
    pub owner_token_hash: [u8; 32],
    pub device_key: Zeroizing<[u8; 32]>,
    /// `None` only in a blob of version 1, from before exchange keys.
    pub exchange_key: Option<Zeroizing<[u8; 32]>>,
}

impl SecretsBlob {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(SECRETS_LEN));
        out.push(SECRETS_VERSION);
        out.extend_from_slice(&self.vault_id);
        out.extend_from_slice(&*self.storage_key);
        out.extend_from_slice(&*self.signing_key);
        out.extend_from_slice(&self.owner_token_hash);
        out.extend_from_slice(&*self.device_key);
        match &self.exchange_key {
            Some(exchange) => out.extend_from_slice(&**exchange),
            None => out[0] = 1,
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KeyFileError> {
        let expected = match bytes.first() {
            Some(1) => SECRETS_V1_LEN,
            Some(&SECRETS_VERSION) => SECRETS_LEN,
            Some(other) => {
                return Err(KeyFileError::Secrets(format!("unknown version {other}")));
            }
            None => return Err(KeyFileError::Secrets("empty".into())),
        };
        if bytes.len() != expected {
            return Err(KeyFileError::Secrets(format!(
                "{} bytes, expected {expected} for version {}",
                bytes.len(),
                bytes[0]
            )));
        }
        let take = |from: usize| -> [u8; 32] {
            bytes[from..from + 32]
                .try_into()
                .expect("length checked above")
        };
        Ok(Self {
            vault_id: bytes[1..17].try_into().expect("length checked above"),
            storage_key: Zeroizing::new(take(17)),
            signing_key: Zeroizing::new(take(49)),
            owner_token_hash: take(81),
            device_key: Zeroizing::new(take(113)),
            exchange_key: (expected == SECRETS_LEN).then(|| Zeroizing::new(take(145))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob() -> SecretsBlob {
        SecretsBlob {
            vault_id: [1; 16],
            storage_key: Zeroizing::new([2; 32]),
            signing_key: Zeroizing::new([3; 32]),
            owner_token_hash: [4; 32],
            device_key: Zeroizing::new([5; 32]),
            exchange_key: Some(Zeroizing::new([6; 32])),
        }
    }

    #[test]
    fn secrets_round_trip() {
        let encoded = blob().encode();
        let back = SecretsBlob::decode(&encoded).unwrap();
        assert_eq!(back.vault_id, [1; 16]);
        assert_eq!(*back.storage_key, [2; 32]);
        assert_eq!(*back.signing_key, [3; 32]);
        assert_eq!(back.owner_token_hash, [4; 32]);
        assert_eq!(*back.device_key, [5; 32]);
        assert_eq!(back.exchange_key.as_deref(), Some(&[6; 32]));
        assert_eq!(encoded.len(), SECRETS_LEN);
        assert!(SecretsBlob::decode(&encoded[..100]).is_err());
        let mut unknown = encoded.to_vec();
        unknown[0] = 9;
        assert!(SecretsBlob::decode(&unknown).is_err());
        // A version-2 length with a version-1 byte (and the reverse) is refused.
        let mut mislabelled = encoded.to_vec();
        mislabelled[0] = 1;
        assert!(SecretsBlob::decode(&mislabelled).is_err());
        assert!(SecretsBlob::decode(&encoded[..SECRETS_V1_LEN]).is_err());
    }

    /// A blob of version 1 (before exchange keys) is still read, without one, and
    /// written back as it was.
    #[test]
    fn version_one_is_read() {
        let old = SecretsBlob {
            exchange_key: None,
            ..blob()
        };
        let encoded = old.encode();
        assert_eq!((encoded.len(), encoded[0]), (SECRETS_V1_LEN, 1));
        let back = SecretsBlob::decode(&encoded).unwrap();
        assert!(back.exchange_key.is_none());
        assert_eq!(*back.device_key, [5; 32]);
    }

    #[test]
    fn key_file_round_trip_and_checks() {
        let params = Argon2Params {
            salt: BASE64.encode(&[9; 16]),
            m_cost_kib: 65536,
            t_cost: 3,
            p_cost: 1,
        };
        let file = KeyFile::new(Protection::Argon2id(params.clone()), b"sealed");
        let back = KeyFile::parse(&file.to_json()).unwrap();
        assert_eq!(back, file);
        assert_eq!(&*back.secrets_bytes().unwrap(), b"sealed");

        let huge = Argon2Params {
            m_cost_kib: u32::MAX,
            ..params.clone()
        };
        let bad = KeyFile::new(Protection::Argon2id(huge), b"x");
        assert!(matches!(
            KeyFile::parse(&bad.to_json()),
            Err(KeyFileError::Params(_))
        ));
        let mut wrong_version = KeyFile::new(Protection::None, b"x");
        wrong_version.version = 2;
        assert!(matches!(
            KeyFile::parse(&wrong_version.to_json()),
            Err(KeyFileError::Version(2))
        ));
        assert!(matches!(
            KeyFile::parse(b"not json"),
            Err(KeyFileError::Syntax(_))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = KeyFile::parse(&bytes);
            let _ = SecretsBlob::decode(&bytes);
        }
    }
}
