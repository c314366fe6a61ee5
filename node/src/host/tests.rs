use hearth_protocol::backup::{Request, Response, owner_open_message, seal_object, token_hash};

use super::*;

const HANDLE: Handle = [3; 16];
const TOKEN: [u8; 32] = [4; 32];

fn host(dir: &Path) -> HostState {
    HostState {
        home: Home::new(dir),
        peer_id: PeerId::random(),
        store: HostStore::open(&dir.join("vaults"), 1 << 20).unwrap(),
        invites: Invites::default(),
        owner_token_hash: [0; 32],
        listen_addrs: Mutex::new(Vec::new()),
    }
}

fn owner() -> libp2p::identity::ed25519::Keypair {
    let secret = libp2p::identity::ed25519::SecretKey::try_from_bytes(&mut [6u8; 32]).unwrap();
    libp2p::identity::ed25519::Keypair::from(secret)
}

fn enroll(state: &HostState, secret: &[u8; 32], device: &PeerId) -> Response {
    let proof = pairing_proof(secret, &state.peer_id.to_bytes(), &device.to_bytes());
    enroll_with(state, device, proof)
}

fn enroll_with(state: &HostState, device: &PeerId, proof: [u8; 32]) -> Response {
    answer(
        state,
        *device,
        None,
        Request::Enroll {
            proof,
            handle: HANDLE,
            token_hash: token_hash(&TOKEN),
            owner: owner().public().to_bytes(),
        },
    )
    .0
}

/// A host with one vault enrolled (`HANDLE`, `TOKEN`) by a device.
fn enrolled(dir: &Path) -> (HostState, PeerId) {
    let state = host(dir);
    let device = PeerId::random();
    state.invites.add(Zeroizing::new([7; 32]), unix_now() + 60);
    assert!(matches!(
        enroll(&state, &[7; 32], &device),
        Response::Enrolled { .. }
    ));
    (state, device)
}

fn refused(response: &Response) -> &str {
    match response {
        Response::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn an_invite_enrolls_once_from_the_device_it_was_proven_for_and_not_after_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let state = host(dir.path());
    let device = PeerId::random();
    let secret = [7u8; 32];
    state.invites.add(Zeroizing::new(secret), unix_now() - 1);
    assert!(
        refused(&enroll(&state, &secret, &device)).contains("not valid here"),
        "expired"
    );
    state.invites.add(Zeroizing::new(secret), unix_now() + 60);
    // A proof made for another device (a replay from elsewhere) uses nothing up.
    let proof = pairing_proof(
        &secret,
        &state.peer_id.to_bytes(),
        &PeerId::random().to_bytes(),
    );
    let other = enroll_with(&state, &device, proof);
    assert!(refused(&other).contains("not valid here"));
    assert!(matches!(
        enroll(&state, &secret, &device),
        Response::Enrolled { .. }
    ));
    assert!(
        refused(&enroll(&state, &secret, &device)).contains("not valid here"),
        "used"
    );
}

#[test]
fn a_vault_opened_with_its_owner_key_reads_and_cannot_add_and_nothing_works_unopened() {
    let dir = tempfile::tempdir().unwrap();
    let (state, device) = enrolled(dir.path());
    let object = seal_object(&[1; 32], &HANDLE, 1, b"x", [2; 24]);
    let (unopened_token, _) = answer(
        &state,
        device,
        None,
        Request::SetToken {
            token_hash: [1; 32],
        },
    );
    assert!(refused(&unopened_token).contains("open the vault first"));
    let (unopened, _) = answer(
        &state,
        device,
        None,
        Request::Put {
            object: object.clone(),
        },
    );
    assert!(refused(&unopened).contains("open the vault first"));

    let message = owner_open_message(&state.peer_id.to_bytes(), &device.to_bytes(), &HANDLE);
    let (opened, as_owner) = answer(
        &state,
        device,
        None,
        Request::OpenOwner {
            handle: HANDLE,
            signature: owner().sign(&message),
        },
    );
    assert!(matches!(opened, Response::Opened { .. }), "{opened:?}");
    let as_owner = as_owner.expect("opened");
    for request in [
        Request::Put { object },
        Request::Append {
            manifest: vec![0; 200],
        },
        Request::Reenroll {
            handle: [9; 16],
            token_hash: [1; 32],
            owner: [2; 32],
        },
        Request::SetToken {
            token_hash: [1; 32],
        },
    ] {
        let (answer, _) = answer(&state, device, Some(as_owner), request);
        assert!(refused(&answer).contains("read only"), "{answer:?}");
    }
    // What only the owner may do, refused on a stream opened with the token.
    let (_, with_token) = answer(
        &state,
        device,
        None,
        Request::Open {
            handle: HANDLE,
            token: TOKEN,
        },
    );
    for request in [
        Request::Rebase {
            seq: 1,
            signature: vec![0; 64],
        },
        Request::Objects {
            after: None,
            limit: 10,
        },
        Request::Drop { ids: vec![[0; 32]] },
        Request::Forget,
    ] {
        let (answer, _) = answer(&state, device, with_token, request);
        assert!(refused(&answer).contains("owner key"), "{answer:?}");
    }
    let (listed, _) = answer(
        &state,
        device,
        Some(as_owner),
        Request::Objects {
            after: None,
            limit: 10,
        },
    );
    assert_eq!(listed, Response::ObjectIds { ids: Vec::new() });
    let (read, _) = answer(
        &state,
        device,
        Some(as_owner),
        Request::Manifests {
            after: 0,
            limit: 64,
        },
    );
    assert!(matches!(read, Response::Manifests { .. }));
    // Signed for another device: refused.
    let (other, none) = answer(
        &state,
        PeerId::random(),
        None,
        Request::OpenOwner {
            handle: HANDLE,
            signature: owner().sign(&message),
        },
    );
    assert!(refused(&other).contains("no such vault"));
    assert!(none.is_none());
}

/// The devices move the vault to a new upload token (a new epoch's): from then on the
/// old token, which a removed device may hold, opens nothing, also after the host
/// restarts; the new one opens the vault to add.
#[test]
fn a_replaced_upload_token_no_longer_opens_the_vault() {
    let dir = tempfile::tempdir().unwrap();
    let (state, device) = enrolled(dir.path());
    let open = |state: &HostState, token: [u8; 32]| {
        answer(
            state,
            device,
            None,
            Request::Open {
                handle: HANDLE,
                token,
            },
        )
    };
    let (opened, with_old) = open(&state, TOKEN);
    assert!(matches!(opened, Response::Opened { .. }), "{opened:?}");
    let new = [5u8; 32];
    let (set, _) = answer(
        &state,
        device,
        with_old,
        Request::SetToken {
            token_hash: token_hash(&new),
        },
    );
    assert_eq!(set, Response::TokenSet);
    let (set_again, _) = answer(
        &state,
        device,
        with_old,
        Request::SetToken {
            token_hash: token_hash(&new),
        },
    );
    assert_eq!(
        set_again,
        Response::TokenSet,
        "the same token again: nothing to do"
    );
    drop(state);
    let state = host(dir.path());
    let (old, none) = open(&state, TOKEN);
    assert!(refused(&old).contains("no such vault"), "{old:?}");
    assert!(none.is_none());
    let (opened, with_new) = open(&state, new);
    assert!(matches!(opened, Response::Opened { .. }), "{opened:?}");
    let object = seal_object(&[1; 32], &HANDLE, 1, b"x", [2; 24]);
    let (stored, _) = answer(&state, device, with_new, Request::Put { object });
    assert!(matches!(stored, Response::Stored { .. }), "{stored:?}");
}
