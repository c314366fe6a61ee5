//! The epoch keys' HPKE (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305, base mode) checked against an independent implementation,
//! Python's `pyhpke`: the same key pair from a device's exchange seed (DeriveKeyPair),
//! what Hearth seals opens there with the `info` docs/FORMATS.md gives, and what
//! pyhpke seals opens here. Ignored by `cargo test`; `.ci/run` runs it with a Python
//! that has pyhpke (`HEARTH_DAV_TOOLS`, its virtualenv).

use std::process::Command;

use data_encoding::HEXLOWER;
use hearth_node::epochs::{PUBLIC_TAG_LEN, exchange_public, open_sealed, seal_info, seal_to};
use rand::RngCore;

const PYTHON: &str = r#"
import sys
from pyhpke import AEADId, CipherSuite, KDFId, KEMId
suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)
seed, info, sealed, plain = (bytes.fromhex(a) for a in sys.argv[1:5])
pair = suite.kem.derive_key_pair(seed)
print(pair.public_key.to_public_bytes().hex())
ctx = suite.create_recipient_context(sealed[:32], pair.private_key, info=info)
print(ctx.open(sealed[32:], aad=b"").hex())
enc, sender = suite.create_sender_context(pair.public_key, info=info)
print((enc + sender.seal(plain, aad=b"")).hex())
"#;

#[test]
#[ignore = "needs Python with pyhpke (HEARTH_DAV_TOOLS); run by .ci/run"]
fn hearths_hpke_and_pyhpke_open_each_others_epoch_keys() {
    let tools = std::env::var("HEARTH_DAV_TOOLS").expect("HEARTH_DAV_TOOLS names the virtualenv");
    let python = std::path::Path::new(&tools).join("bin/python3");
    let peer = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    for _ in 0..8 {
        let mut rng = rand::rngs::OsRng;
        let (mut seed, mut vault, mut key, mut theirs) =
            ([0u8; 32], [0u8; 16], [0u8; 32], [0u8; 32]);
        for buf in [&mut seed[..], &mut vault[..], &mut key[..], &mut theirs[..]] {
            rng.fill_bytes(buf);
        }
        let epoch = HEXLOWER.encode(&key[..16]);
        let info = seal_info(&vault, &epoch, &peer.to_string());
        let public = exchange_public(&seed);
        let sealed = seal_to(&vault, &epoch, &peer.to_string(), &public, &key).expect("seals");
        // An entry starts with 8 bytes naming the recipient's key; HPKE's own output
        // (the encapsulated key, the ciphertext and tag) follows.
        let hash = blake3::hash(&public);
        let tag = &hash.as_bytes()[..PUBLIC_TAG_LEN];
        assert_eq!(&sealed[..PUBLIC_TAG_LEN], tag);
        let hpke_part = &sealed[PUBLIC_TAG_LEN..];
        let out = Command::new(&python)
            .args([
                "-c",
                PYTHON,
                &HEXLOWER.encode(&seed),
                &HEXLOWER.encode(&info),
                &HEXLOWER.encode(hpke_part),
                &HEXLOWER.encode(&theirs),
            ])
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], HEXLOWER.encode(&public), "DeriveKeyPair differs");
        assert_eq!(
            lines[1],
            HEXLOWER.encode(&key),
            "pyhpke opens what Hearth sealed"
        );
        let mut from_python = tag.to_vec();
        from_python.extend(HEXLOWER.decode(lines[2].as_bytes()).unwrap());
        let opened = open_sealed(&vault, &epoch, &peer.to_string(), &seed, &from_python)
            .expect("Hearth opens what pyhpke sealed");
        assert_eq!(*opened, theirs);
        // Bound to its info: another epoch or device does not open it.
        assert!(open_sealed(&vault, "other", &peer.to_string(), &seed, &from_python).is_none());
    }
}
