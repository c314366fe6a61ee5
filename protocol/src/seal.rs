//! The sealed-value envelope: how every value Hearth writes to disk is encrypted.
//!
//! ```text
//! byte 0        version: 1 (the vault's storage key) or 2 (an epoch's key)
//! bytes 1..25   nonce: 24 random bytes (XChaCha20); in version 2, the first 4 name
//!               the epoch key (big-endian key id) and the other 20 are random
//! bytes 25..    ciphertext, then the 16-byte Poly1305 tag
//! ```
//!
//! Version 2 is what a device seals with once the vault's keys rotated (see
//! `hearth_core::epochs`): the key id tells which of the epoch keys it holds opens the
//! value, without trying each. 160 random bits of nonce keep collisions out of reach.
//!
//! The associated data binds a value to where it is stored:
//! `"hearth/seal/v1" || u32be(len(domain)) || domain || key`, where `domain` names the
//! tree (or file kind) and `key` is the value's key in it. A ciphertext moved to another
//! key or tree therefore fails to open, as does any flipped or truncated byte.

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

pub const SEAL_VERSION: u8 = 1;
/// The version of a value sealed under an epoch's key.
pub const SEAL_VERSION_EPOCH: u8 = 2;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed value has beyond its plaintext.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Where the plaintext (the ciphertext, once sealed) starts in a sealed value.
pub const PLAINTEXT_AT: usize = 1 + NONCE_LEN;

const AD_PREFIX: &[u8] = b"hearth/seal/v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("sealed value has unknown format version {0}")]
    UnknownVersion(u8),
    #[error("sealed value is truncated ({0} bytes, at least {SEAL_OVERHEAD} needed)")]
    Truncated(usize),
    #[error("sealed value failed authentication (tampered, truncated, or moved from elsewhere)")]
    Authentication,
    #[error("sealed value is sealed under an epoch key this device does not hold (key {0:08x})")]
    UnknownKey(u32),
}

/// The epoch key id a sealed value names, if it is of version 2.
pub fn epoch_key_id(sealed: &[u8]) -> Option<u32> {
    (sealed.len() >= SEAL_OVERHEAD && sealed[0] == SEAL_VERSION_EPOCH)
        .then(|| u32::from_be_bytes(sealed[1..5].try_into().expect("4 bytes")))
}

/// A nonce for a value sealed under the epoch key `key_id`: the id, then 20 random
/// bytes from `random`.
pub fn epoch_nonce(key_id: u32, random: [u8; NONCE_LEN - 4]) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..4].copy_from_slice(&key_id.to_be_bytes());
    nonce[4..].copy_from_slice(&random);
    nonce
}

/// Where a sealed value lives; bound into its associated data.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub domain: &'a [u8],
    pub key: &'a [u8],
}

impl<'a> Binding<'a> {
    pub fn new(domain: &'a [u8], key: &'a [u8]) -> Self {
        Self { domain, key }
    }

    fn associated_data(&self) -> Vec<u8> {
        let mut ad = Vec::with_capacity(AD_PREFIX.len() + 4 + self.domain.len() + self.key.len());
        ad.extend_from_slice(AD_PREFIX);
        let domain_len =
            u32::try_from(self.domain.len()).expect("domain names are short constants");
        ad.extend_from_slice(&domain_len.to_be_bytes());
        ad.extend_from_slice(self.domain);
        ad.extend_from_slice(self.key);
        ad
    }
}

/// A 256-bit XChaCha20-Poly1305 key. Zeroized on drop; never printed.
pub struct SealKey {
    cipher: XChaCha20Poly1305,
    /// The version byte this key writes and the only one it opens.
    version: u8,
    // Kept only so the key material is zeroized with the value.
    _bytes: Zeroizing<[u8; 32]>,
}

impl SealKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::with_version(bytes, SEAL_VERSION)
    }

    /// An epoch's key: it seals version 2 and opens only version 2. The caller's
    /// nonces carry the key id ([`epoch_nonce`]).
    pub fn for_epoch(bytes: [u8; 32]) -> Self {
        Self::with_version(bytes, SEAL_VERSION_EPOCH)
    }

    fn with_version(bytes: [u8; 32], version: u8) -> Self {
        let bytes = Zeroizing::new(bytes);
        let cipher = XChaCha20Poly1305::new((&*bytes).into());
        Self {
            cipher,
            version,
            _bytes: bytes,
        }
    }

    fn check(&self, sealed: &[u8]) -> Result<(), OpenError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(OpenError::Truncated(sealed.len()));
        }
        match sealed[0] {
            v if v == self.version => Ok(()),
            SEAL_VERSION | SEAL_VERSION_EPOCH => Err(OpenError::Authentication),
            v => Err(OpenError::UnknownVersion(v)),
        }
    }

    /// Seals `plaintext` bound to `binding`. The caller supplies a fresh random nonce
    /// (this crate does no I/O, randomness included).
    pub fn seal(&self, binding: Binding<'_>, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let ad = binding.associated_data();
        // One allocation: version and nonce, then the plaintext encrypted in place.
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.push(self.version);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut out[1 + NONCE_LEN..])
            .expect("XChaCha20-Poly1305 encryption only fails for plaintexts over 256 GiB");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens a sealed value, checking that it was sealed under this key for `binding`.
    pub fn open(
        &self,
        binding: Binding<'_>,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        self.check(sealed)?;
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        let ad = binding.associated_data();
        self.cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: &ad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Authentication)
    }

    /// Seals in place, without copying the plaintext: `buf` holds [`PLAINTEXT_AT`]
    /// bytes of room (their content is ignored) followed by the plaintext; afterwards
    /// it holds exactly what [`SealKey::seal`] would return for the same nonce. Give
    /// `buf` a capacity of `SEAL_OVERHEAD + plaintext length` to avoid a reallocation.
    pub fn seal_in_place(&self, binding: Binding<'_>, buf: &mut Vec<u8>, nonce: [u8; NONCE_LEN]) {
        assert!(
            buf.len() >= PLAINTEXT_AT,
            "seal_in_place needs {PLAINTEXT_AT} bytes of room before the plaintext"
        );
        let ad = binding.associated_data();
        buf[0] = self.version;
        buf[1..PLAINTEXT_AT].copy_from_slice(&nonce);
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut buf[PLAINTEXT_AT..])
            .expect("XChaCha20-Poly1305 encryption only fails for plaintexts over 256 GiB");
        buf.extend_from_slice(&tag);
    }

    /// Opens a sealed value in place, without copying it: on success the plaintext is
    /// `sealed[PLAINTEXT_AT..sealed.len() - TAG_LEN]` (also returned). On failure the
    /// buffer's content is unspecified. Unlike [`SealKey::open`], the plaintext is not
    /// zeroized for the caller.
    pub fn open_in_place<'b>(
        &self,
        binding: Binding<'_>,
        sealed: &'b mut [u8],
    ) -> Result<&'b mut [u8], OpenError> {
        self.check(sealed)?;
        let ad = binding.associated_data();
        let (head, rest) = sealed.split_at_mut(PLAINTEXT_AT);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        self.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&head[1..]),
                &ad,
                body,
                chacha20poly1305::Tag::from_slice(tag),
            )
            .map_err(|_| OpenError::Authentication)?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SealKey {
        SealKey::from_bytes([7; 32])
    }

    #[test]
    fn binds_to_domain_and_key() {
        let k = key();
        let sealed = k.seal(Binding::new(b"docs", b"k1"), b"hello", [1; NONCE_LEN]);
        assert_eq!(
            &*k.open(Binding::new(b"docs", b"k1"), &sealed).unwrap(),
            b"hello"
        );
        assert_eq!(
            k.open(Binding::new(b"docs", b"k2"), &sealed),
            Err(OpenError::Authentication)
        );
        assert_eq!(
            k.open(Binding::new(b"names", b"k1"), &sealed),
            Err(OpenError::Authentication)
        );
        // Domain/key boundary is unambiguous: ("ab","c") differs from ("a","bc").
        let s2 = k.seal(Binding::new(b"ab", b"c"), b"x", [2; NONCE_LEN]);
        assert!(k.open(Binding::new(b"a", b"bc"), &s2).is_err());
        assert!(
            SealKey::from_bytes([8; 32])
                .open(Binding::new(b"docs", b"k1"), &sealed)
                .is_err()
        );
    }

    /// An epoch key writes version 2 with its key id in the nonce; the version-1 key
    /// does not open it, nor it a version-1 value, even with the same key bytes.
    #[test]
    fn epoch_keys_write_version_two_and_name_their_key() {
        let b = Binding::new(b"docs", b"k1");
        let epoch = SealKey::for_epoch([7; 32]);
        let sealed = epoch.seal(b, b"after", epoch_nonce(0xdead_beef, [5; NONCE_LEN - 4]));
        assert_eq!(sealed[0], SEAL_VERSION_EPOCH);
        assert_eq!(epoch_key_id(&sealed), Some(0xdead_beef));
        assert_eq!(&*epoch.open(b, &sealed).unwrap(), b"after");
        assert_eq!(key().open(b, &sealed), Err(OpenError::Authentication));
        let old = key().seal(b, b"before", [1; NONCE_LEN]);
        assert_eq!(epoch_key_id(&old), None);
        assert_eq!(epoch.open(b, &old), Err(OpenError::Authentication));
        let mut in_place = sealed.clone();
        assert_eq!(epoch.open_in_place(b, &mut in_place).unwrap(), b"after");
    }

    #[test]
    fn rejects_truncation_and_unknown_versions() {
        let k = key();
        let b = Binding::new(b"d", b"k");
        let sealed = k.seal(b, b"", [0; NONCE_LEN]);
        assert_eq!(sealed.len(), SEAL_OVERHEAD);
        assert_eq!(k.open(b, &sealed[..10]), Err(OpenError::Truncated(10)));
        let mut v3 = sealed.clone();
        v3[0] = 3;
        assert_eq!(k.open(b, &v3), Err(OpenError::UnknownVersion(3)));
        // A version-1 value relabelled as version 2 does not open either way.
        let mut v2 = sealed.clone();
        v2[0] = SEAL_VERSION_EPOCH;
        assert_eq!(k.open(b, &v2), Err(OpenError::Authentication));
    }

    proptest! {
        #[test]
        fn round_trip(plain in proptest::collection::vec(any::<u8>(), 0..2048), nonce in any::<[u8; 24]>()) {
            let k = key();
            let b = Binding::new(b"t", b"key");
            let sealed = k.seal(b, &plain, nonce);
            prop_assert_eq!(&*k.open(b, &sealed).unwrap(), &plain[..]);
        }

        #[test]
        fn any_flipped_bit_is_rejected(plain in proptest::collection::vec(any::<u8>(), 0..256), pos in any::<usize>(), bit in 0u8..8) {
            let k = key();
            let b = Binding::new(b"t", b"key");
            let mut sealed = k.seal(b, &plain, [3; NONCE_LEN]);
            let i = pos % sealed.len();
            sealed[i] ^= 1 << bit;
            prop_assert!(k.open(b, &sealed).is_err());
        }

        #[test]
        fn in_place_matches_the_copying_seal_and_open(plain in proptest::collection::vec(any::<u8>(), 0..2048), nonce in any::<[u8; 24]>(), pos in any::<usize>()) {
            let k = key();
            let b = Binding::new(b"t", b"key");
            let mut buf = vec![0xAA; PLAINTEXT_AT];
            buf.extend_from_slice(&plain);
            k.seal_in_place(b, &mut buf, nonce);
            prop_assert_eq!(&buf, &k.seal(b, &plain, nonce));
            let mut opened = buf.clone();
            prop_assert_eq!(&*k.open_in_place(b, &mut opened).unwrap(), &plain[..]);
            // Tampered, moved, or truncated: refused.
            let mut flipped = buf.clone();
            let i = pos % flipped.len();
            flipped[i] ^= 1;
            prop_assert!(k.open_in_place(b, &mut flipped).is_err());
            let mut moved = buf.clone();
            prop_assert_eq!(k.open_in_place(Binding::new(b"t", b"other"), &mut moved), Err(OpenError::Authentication));
            let mut short = buf[..SEAL_OVERHEAD - 1].to_vec();
            prop_assert_eq!(k.open_in_place(b, &mut short), Err(OpenError::Truncated(SEAL_OVERHEAD - 1)));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = key().open(Binding::new(b"t", b"k"), &bytes);
        }
    }
}
