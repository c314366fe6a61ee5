use hearth_protocol::backup::{
    ManifestBody, ManifestHeader, manifest_hash, object_id, seal_manifest, seal_object, token_hash,
};

use super::*;

const HANDLE: Handle = [3; 16];
const TOKEN: [u8; 32] = [4; 32];
const KEY: [u8; 32] = [5; 32];

fn manifest(seq: u64, prev: [u8; 32]) -> Vec<u8> {
    let header = ManifestHeader {
        handle: HANDLE,
        seq,
        prev,
        epoch: 1,
        kit_sealed: vec![1; 88],
    };
    let body = ManifestBody {
        made_at: 0,
        made_by: "d".into(),
        entries: Vec::new(),
    };
    seal_manifest(&KEY, &header, &body, [seq as u8; 24])
}

fn owner() -> libp2p::identity::ed25519::Keypair {
    let secret = libp2p::identity::ed25519::SecretKey::try_from_bytes(&mut [6u8; 32]).unwrap();
    libp2p::identity::ed25519::Keypair::from(secret)
}

fn owner_public() -> [u8; 32] {
    owner().public().to_bytes()
}

fn enrolled(dir: &Path, quota: u64) -> HostStore {
    let store = HostStore::open(dir, quota).unwrap();
    store
        .enroll(HANDLE, token_hash(&TOKEN), owner_public())
        .unwrap();
    store
}

#[test]
fn a_vault_opens_with_its_token_only_and_enrolls_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = enrolled(dir.path(), 1 << 20);
    assert_eq!(
        store.enroll(HANDLE, token_hash(&[9; 32]), owner_public()),
        Err(Refusal::AlreadyEnrolled)
    );
    assert_eq!(store.open_vault(&HANDLE, &[9; 32]), Err(Refusal::Unknown));
    assert_eq!(store.open_vault(&[1; 16], &TOKEN), Err(Refusal::Unknown));
    let opened = store.open_vault(&HANDLE, &TOKEN).unwrap();
    assert_eq!((opened.seq, opened.bytes, opened.quota), (0, 0, 1 << 20));
    // The host keeps the token's hash, never the token.
    let file = std::fs::read(dir.path().join(hex(&HANDLE)).join("vault.json")).unwrap();
    assert!(!file.windows(32).any(|w| w == TOKEN));
    assert!(!String::from_utf8_lossy(&file).contains(&hex(&TOKEN)));
}

#[test]
fn objects_and_a_gapless_chain_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = enrolled(dir.path(), 1 << 20);
    let object = seal_object(&KEY, &HANDLE, 1, b"some changes", [1; 24]);
    let id = object_id(&object);
    assert_eq!(store.get(&HANDLE, &id).unwrap(), None);
    let used = store.put(&HANDLE, &object).unwrap();
    assert_eq!(used, object.len() as u64);
    // Again: nothing more is used.
    assert_eq!(store.put(&HANDLE, &object).unwrap(), used);
    assert_eq!(
        store.get(&HANDLE, &id).unwrap().as_deref(),
        Some(&object[..])
    );
    let first = manifest(1, [0; 32]);
    assert_eq!(store.append(&HANDLE, &first).unwrap(), 1);
    // Out of order, a replay, or a wrong prev: refused.
    assert_eq!(
        store.append(&HANDLE, &manifest(3, manifest_hash(&first))),
        Err(Refusal::NotNext { held: 1, got: 3 })
    );
    assert_eq!(
        store.append(&HANDLE, &first),
        Err(Refusal::NotNext { held: 1, got: 1 })
    );
    assert_eq!(
        store.append(&HANDLE, &manifest(2, [7; 32])),
        Err(Refusal::WrongPrev(2))
    );
    let second = manifest(2, manifest_hash(&first));
    store.append(&HANDLE, &second).unwrap();
    drop(store);

    let store = HostStore::open(dir.path(), 1 << 20).unwrap();
    let opened = store.open_vault(&HANDLE, &TOKEN).unwrap();
    assert_eq!(opened.seq, 2);
    assert_eq!(opened.last, manifest_hash(&second));
    assert_eq!(
        opened.bytes,
        (object.len() + first.len() + second.len()) as u64
    );
    assert_eq!(
        store.manifests(&HANDLE, 0, 64).unwrap(),
        vec![first, second.clone()]
    );
    assert_eq!(store.manifests(&HANDLE, 1, 64).unwrap(), vec![second]);
    assert!(store.manifests(&HANDLE, 2, 64).unwrap().is_empty());
    assert_eq!(store.get(&HANDLE, &id).unwrap(), Some(object));
    assert_eq!(store.get(&HANDLE, &[0; 32]).unwrap(), None);
    let summary = &store.summaries()[0];
    assert_eq!((summary.objects, summary.manifests), (1, 2));
}

#[test]
fn the_quota_and_the_sizes_are_enforced_and_other_vaults_manifests_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = enrolled(dir.path(), 3000);
    store
        .put(&HANDLE, &seal_object(&KEY, &HANDLE, 1, b"a", [1; 24]))
        .unwrap();
    assert!(matches!(
        store.put(&HANDLE, &seal_object(&KEY, &HANDLE, 1, &[0; 2000], [2; 24])),
        Err(Refusal::Quota { quota: 3000, .. })
    ));
    assert_eq!(
        store.put(&HANDLE, &vec![0; MAX_OBJECT + 1]),
        Err(Refusal::ObjectTooLarge(MAX_OBJECT + 1))
    );
    assert!(matches!(
        store.append(&HANDLE, b"HBM1 not really"),
        Err(Refusal::BadManifest(_))
    ));
    let mut other = manifest(1, [0; 32]);
    other[4] ^= 1;
    assert_eq!(store.append(&HANDLE, &other), Err(Refusal::OtherVault));
    assert_eq!(
        store.put(&[8; 16], b"x"),
        Err(Refusal::Unknown),
        "no such vault"
    );
}

#[test]
fn a_damaged_vault_folder_is_not_served_and_stray_folders_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    drop(enrolled(dir.path(), 1 << 20));
    std::fs::write(dir.path().join(hex(&HANDLE)).join("vault.json"), b"{").unwrap();
    std::fs::create_dir(dir.path().join("lost+found")).unwrap();
    let store = HostStore::open(dir.path(), 1 << 20).unwrap();
    assert!(store.summaries().is_empty());
    assert!(dir.path().join("lost+found").exists());
}

#[test]
fn the_owner_key_opens_a_vault_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    drop(enrolled(dir.path(), 1 << 20));
    // After a restart too: the owner key is on disk.
    let store = HostStore::open(dir.path(), 1 << 20).unwrap();
    let message = hearth_protocol::backup::owner_open_message(b"host", b"device", &HANDLE);
    let signature = owner().sign(&message);
    assert_eq!(
        store.open_owner(&HANDLE, &message, &signature).unwrap().seq,
        0
    );
    let other = hearth_protocol::backup::owner_open_message(b"host", b"thief", &HANDLE);
    assert_eq!(
        store.open_owner(&HANDLE, &other, &signature),
        Err(Refusal::Unknown)
    );
    assert_eq!(
        store.open_owner(&HANDLE, &message, &[0; 64]),
        Err(Refusal::Unknown)
    );
    assert_eq!(
        store.open_owner(&[1; 16], &message, &signature),
        Err(Refusal::Unknown)
    );
}

/// The owner rebases the chain on a manifest and drops objects: the manifests before
/// it are gone (also after a restart), the chain is read from it, the space is freed.
/// A signature by another key, or over another manifest, changes nothing.
#[test]
fn the_owner_rebases_the_chain_and_drops_objects() {
    use hearth_protocol::backup::rebase_message;

    let dir = tempfile::tempdir().unwrap();
    let store = enrolled(dir.path(), 1 << 20);
    let old = seal_object(&KEY, &HANDLE, 1, b"old changes", [1; 24]);
    let kept = seal_object(&KEY, &HANDLE, 1, b"the whole vault", [2; 24]);
    store.put(&HANDLE, &old).unwrap();
    store.put(&HANDLE, &kept).unwrap();
    let mut chain = Vec::new();
    let mut prev = [0; 32];
    for seq in 1..=4 {
        let m = manifest(seq, prev);
        prev = manifest_hash(&m);
        store.append(&HANDLE, &m).unwrap();
        chain.push(m);
    }
    let sign = |key: &libp2p::identity::ed25519::Keypair, seq: u64, m: &[u8]| {
        key.sign(&rebase_message(&HANDLE, seq, &manifest_hash(m)))
    };
    let stranger = libp2p::identity::ed25519::Keypair::generate();
    assert_eq!(
        store.rebase(&HANDLE, 3, &sign(&stranger, 3, &chain[2])),
        Err(Refusal::BadRebase(3))
    );
    assert_eq!(
        store.rebase(&HANDLE, 3, &sign(&owner(), 2, &chain[1])),
        Err(Refusal::BadRebase(3)),
        "a signature for another manifest"
    );
    assert_eq!(
        store.rebase(&HANDLE, 9, &sign(&owner(), 9, &chain[3])),
        Err(Refusal::NoSuchManifest(9))
    );
    assert_eq!(store.base(&HANDLE).unwrap(), (1, Vec::new()));
    let signature = sign(&owner(), 3, &chain[2]);
    let before = store.open_vault(&HANDLE, &TOKEN).unwrap().bytes;
    let after = store.rebase(&HANDLE, 3, &signature).unwrap();
    assert_eq!(after, before - (chain[0].len() + chain[1].len()) as u64);
    assert_eq!(
        store.manifests(&HANDLE, 0, 64).unwrap(),
        chain[2..].to_vec(),
        "read from the base"
    );
    assert_eq!(store.base(&HANDLE).unwrap(), (3, signature.clone()));
    // The base cannot move back.
    assert_eq!(
        store.rebase(&HANDLE, 2, &sign(&owner(), 2, &chain[1])),
        Err(Refusal::NoSuchManifest(2))
    );

    let ids = store.objects(&HANDLE, None, 4096).unwrap();
    let mut both = vec![object_id(&old), object_id(&kept)];
    both.sort_unstable();
    assert_eq!(ids, both);
    assert_eq!(
        store.objects(&HANDLE, Some(both[0]), 4096).unwrap(),
        vec![both[1]]
    );
    assert_eq!(store.objects(&HANDLE, None, 1).unwrap(), vec![both[0]]);
    let freed = store
        .drop_objects(&HANDLE, &[object_id(&old), [0; 32]])
        .unwrap();
    assert_eq!(freed, after - old.len() as u64);
    assert_eq!(store.get(&HANDLE, &object_id(&old)).unwrap(), None);
    assert_eq!(
        store.drop_objects(&HANDLE, &vec![[0; 32]; 4097]),
        Err(Refusal::TooMany(4097))
    );
    // The chain goes on from the base, and all of it survives a restart.
    let fifth = manifest(5, manifest_hash(&chain[3]));
    store.append(&HANDLE, &fifth).unwrap();
    drop(store);
    let store = HostStore::open(dir.path(), 1 << 20).unwrap();
    let opened = store.open_vault(&HANDLE, &TOKEN).unwrap();
    assert_eq!((opened.seq, opened.bytes), (5, freed + fifth.len() as u64));
    assert_eq!(store.base(&HANDLE).unwrap(), (3, signature));
    assert_eq!(store.manifests(&HANDLE, 1, 64).unwrap().len(), 3);
    let summary = &store.summaries()[0];
    assert_eq!((summary.objects, summary.manifests), (1, 3));
}

/// The owner deletes a vault: nothing of it is served or left on disk, also when a
/// deletion was cut short before a restart.
#[test]
fn a_forgotten_vault_is_gone_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = enrolled(dir.path(), 1 << 20);
    let object = seal_object(&KEY, &HANDLE, 1, b"kept under an old kit", [1; 24]);
    store.put(&HANDLE, &object).unwrap();
    let first = manifest(1, [0; 32]);
    store.append(&HANDLE, &first).unwrap();
    assert_eq!(
        store.forget(&HANDLE).unwrap(),
        ((object.len() + first.len()) as u64, 1)
    );
    assert_eq!(store.open_vault(&HANDLE, &TOKEN), Err(Refusal::Unknown));
    assert_eq!(store.forget(&HANDLE), Err(Refusal::Unknown));
    assert!(store.summaries().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing left"
    );
    drop(store);

    // A deletion cut short after its rename: finished at the next start.
    let store = enrolled(dir.path(), 1 << 20);
    store.put(&HANDLE, &object).unwrap();
    drop(store);
    let folder = dir.path().join(hex(&HANDLE));
    std::fs::rename(
        &folder,
        dir.path().join(format!("{}.forgotten", hex(&HANDLE))),
    )
    .unwrap();
    let store = HostStore::open(dir.path(), 1 << 20).unwrap();
    assert!(store.summaries().is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
