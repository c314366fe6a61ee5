use super::*;

const KEY: [u8; 32] = [7; 32];
const HANDLE: Handle = [9; 16];

fn header(seq: u64) -> ManifestHeader {
    ManifestHeader {
        handle: HANDLE,
        seq,
        prev: [seq as u8; 32],
        epoch: 3,
        kit_sealed: vec![5; 88],
    }
}

fn body() -> ManifestBody {
    ManifestBody {
        made_at: 1_800_000_000,
        made_by: "12D3KooW".into(),
        entries: vec![
            Entry::Part {
                collection: "notes".into(),
                part: 17,
                after: vec![[1; 32]],
                heads: vec![[2; 32]],
                objects: vec![[3; 32], [4; 32]],
            },
            Entry::Chunk {
                hash: [5; 32],
                object: [6; 32],
            },
        ],
    }
}

#[test]
fn objects_round_trip_and_pad_to_their_bucket() {
    for len in [
        0,
        1,
        1019,
        1020,
        1021,
        5000,
        1024 * 1024,
        1024 * 1024 + 1,
        3_000_000,
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let object = seal_object(&KEY, &HANDLE, 3, &data, [1; 24]);
        assert_eq!(
            object.len(),
            4 + padded_len(len) + SEAL_OVERHEAD,
            "len {len}"
        );
        assert_eq!(*open_object(&KEY, &HANDLE, 3, &object).unwrap(), data);
    }
    // The size says the bucket only; a whole blob chunk (1 MiB) stays in its bucket.
    assert_eq!(padded_len(0), 4 + 1024);
    assert_eq!(padded_len(10), 4 + 1024);
    assert_eq!(padded_len(1024), 4 + 1024);
    assert_eq!(padded_len(1025), 4 + 2048);
    assert_eq!(padded_len(1024 * 1024), 4 + 1024 * 1024);
    assert_eq!(padded_len(1024 * 1024 + 1), 4 + 2 * 1024 * 1024);
    assert_eq!(padded_len(3_000_000), 4 + 3 * 1024 * 1024);
}

#[test]
fn an_object_does_not_open_under_another_key_epoch_or_handle_or_when_flipped() {
    let object = seal_object(&KEY, &HANDLE, 3, b"canary", [1; 24]);
    assert!(open_object(&[8; 32], &HANDLE, 3, &object).is_err());
    assert!(open_object(&KEY, &[1; 16], 3, &object).is_err());
    assert_eq!(
        open_object(&KEY, &HANDLE, 4, &object),
        Err(BackupFormatError::WrongEpoch {
            expected: 4,
            found: 3
        })
    );
    // The clear epoch is bound: changing it to match another key's epoch fails too.
    let mut moved = object.clone();
    moved[3] = 4;
    assert!(open_object(&KEY, &HANDLE, 4, &moved).is_err());
    for at in [0, 4, 30, object.len() - 1] {
        let mut flipped = object.clone();
        flipped[at] ^= 1;
        assert!(
            open_object(&KEY, &HANDLE, 3, &flipped).is_err(),
            "byte {at}"
        );
    }
    assert!(open_object(&KEY, &HANDLE, 3, &object[..object.len() - 1]).is_err());
    assert!(open_object(&KEY, &HANDLE, 3, &[0, 0]).is_err());
    // Nothing of the plaintext shows.
    assert!(!object.windows(6).any(|w| w == b"canary"));
}

#[test]
fn manifests_round_trip_and_their_header_is_bound() {
    let manifest = seal_manifest(&KEY, &header(2), &body(), [2; 24]);
    let (parsed, _) = ManifestHeader::parse(&manifest).unwrap();
    assert_eq!(parsed, header(2));
    assert_eq!(open_manifest(&KEY, &manifest).unwrap(), (header(2), body()));
    assert!(open_manifest(&[1; 32], &manifest).is_err());
    // A host that changes the clear seq, prev or epoch breaks the seal.
    for at in [4, 20, 27, 28, 60, 70, manifest.len() - 1] {
        let mut changed = manifest.clone();
        changed[at] ^= 1;
        assert!(open_manifest(&KEY, &changed).is_err(), "byte {at}");
    }
    assert!(!manifest.windows(5).any(|w| w == b"notes"));
}

#[test]
fn malformed_manifest_headers_are_refused_saying_why() {
    let manifest = seal_manifest(&KEY, &header(1), &body(), [2; 24]);
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        b"HBM2"
            .iter()
            .copied()
            .chain(manifest[4..].iter().copied())
            .collect(),
        manifest[..70].to_vec(),
        manifest[..66 + 88 + 10].to_vec(),
    ];
    for case in cases {
        assert!(matches!(
            ManifestHeader::parse(&case),
            Err(BackupFormatError::Manifest(_))
        ));
    }
    let mut zero = header(1);
    zero.seq = 0;
    let sealed = seal_manifest(&KEY, &zero, &body(), [2; 24]);
    assert!(ManifestHeader::parse(&sealed).is_err());
}

#[test]
fn messages_round_trip_and_garbage_is_an_error() {
    let requests = vec![
        Request::Enroll {
            proof: [1; 32],
            handle: HANDLE,
            token_hash: [2; 32],
            owner: [4; 32],
        },
        Request::OpenOwner {
            handle: HANDLE,
            signature: vec![5; 64],
        },
        Request::Open {
            handle: HANDLE,
            token: [3; 32],
        },
        Request::Put {
            object: vec![1, 2, 3],
        },
        Request::Manifests {
            after: 7,
            limit: 64,
        },
    ];
    for request in requests {
        assert_eq!(decode::<Request>(&encode(&request)).unwrap(), request);
    }
    assert!(decode::<Request>(&[0xff, 0xff, 0xff]).is_err());
    assert!(decode::<Response>(&[]).is_err());
}

#[test]
fn host_codes_and_device_codes_are_told_apart() {
    let invite = Invite {
        expires_unix: 1_900_000_000,
        secret: Zeroizing::new([4; 32]),
        inviter_peer_id: vec![1, 2, 3],
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
    };
    let code = encode_host_invite(&invite);
    assert!(code.starts_with(HOST_INVITE_PREFIX));
    assert_eq!(decode_host_invite(&code).unwrap(), invite);
    assert_eq!(
        decode_host_invite(&invite.encode()),
        Err(HostInviteError::DeviceCode)
    );
    assert_eq!(decode_host_invite("hello"), Err(HostInviteError::Prefix));
    assert!(matches!(
        decode_host_invite(&code[..code.len() - 3]),
        Err(HostInviteError::Invite(_))
    ));
    assert_eq!(Invite::decode(&code), Err(InviteError::HostCode));
}

#[test]
fn token_hashes_differ_from_the_token() {
    assert_ne!(token_hash(&[1; 32]), [1; 32]);
    assert_ne!(token_hash(&[1; 32]), token_hash(&[2; 32]));
}

#[test]
fn the_owner_open_message_binds_both_peers_and_the_handle() {
    let m = owner_open_message(b"host", b"device", &HANDLE);
    assert_ne!(m, owner_open_message(b"device", b"host", &HANDLE));
    assert_ne!(m, owner_open_message(b"hos", b"tdevice", &HANDLE));
    assert_ne!(m, owner_open_message(b"host", b"device", &[1; 16]));
}
