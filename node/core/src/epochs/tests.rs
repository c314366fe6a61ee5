use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand::RngCore;

use super::*;

const VAULT: [u8; 16] = [7; 16];

struct Device {
    keypair: Keypair,
    exchange: [u8; 32],
}

impl Device {
    fn new() -> Self {
        let mut exchange = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut exchange);
        Self {
            keypair: Keypair::generate_ed25519(),
            exchange,
        }
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            vault_id: VAULT,
            device: &self.keypair,
            exchange: &self.exchange,
        }
    }

    fn peer(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    fn member(&self) -> Member {
        Member {
            peer: self.peer(),
            exchange: Some(exchange_public(&self.exchange)),
        }
    }
}

fn view(members: &[&Device], removed: &[&Device]) -> View {
    View {
        epochs: Vec::new(),
        members: members.iter().map(|d| d.member()).collect(),
        removed: removed.iter().map(|d| d.peer()).collect(),
        kit: None,
        replaced_kits: Vec::new(),
    }
}

fn through_record(epoch: &Epoch) -> Epoch {
    let mut record = epoch.to_record();
    record.insert("id".into(), Value::String(epoch.id.clone()));
    Epoch::from_record(&Value::Object(record)).expect("an epoch record reads back")
}

#[test]
fn an_epoch_is_signed_sealed_to_its_members_only_and_reads_back() {
    let (a, b, x) = (Device::new(), Device::new(), Device::new());
    let mut v = view(&[&a, &b], &[&x]);
    // Epoch 0 could be held by the removed device: a rotation is due.
    assert!(v.needs_rotation(&VAULT));
    let writes = plan(&v, &a.identity(), Rotation::IfNeeded, 1000);
    let [Write::New(epoch)] = writes.as_slice() else {
        panic!("one new epoch expected, got {writes:?}");
    };
    let epoch = through_record(epoch);
    assert!(epoch.verifies(&VAULT));
    assert!(!epoch.verifies(&[8; 16]), "bound to its vault");
    assert_eq!(epoch.n, 1);
    let key_a = epoch.open(&a.identity()).expect("sealed to a");
    let key_b = epoch.open(&b.identity()).expect("sealed to b");
    assert_eq!(*key_a, *key_b);
    assert!(epoch.open(&x.identity()).is_none(), "never to x");
    // x's exchange key does not open the entries sealed to the others either.
    for sealed in epoch.sealed.values() {
        assert!(
            open_sealed(
                &VAULT,
                &epoch.id,
                &x.peer().to_string(),
                &x.exchange,
                sealed
            )
            .is_none()
        );
        assert!(
            open_sealed(
                &VAULT,
                &epoch.id,
                &a.peer().to_string(),
                &x.exchange,
                sealed
            )
            .is_none()
        );
    }
    // The token key is the one the epoch key derives.
    assert_eq!(epoch.signing_key, ed25519_public(&grant_seed(&key_a)));

    apply(&mut v, &writes);
    assert!(!v.needs_rotation(&VAULT));
    assert!(plan(&v, &a.identity(), Rotation::IfNeeded, 1001).is_empty());
    assert!(plan(&v, &b.identity(), Rotation::IfNeeded, 1001).is_empty());
    // Not a member: nothing to do, whatever it sees.
    assert!(plan(&v, &x.identity(), Rotation::Now, 1001).is_empty());
}

#[test]
fn a_changed_record_or_a_wrong_entry_is_refused() {
    let (a, b) = (Device::new(), Device::new());
    let v = view(&[&a, &b], &[]);
    let writes = plan(&v, &a.identity(), Rotation::Now, 5);
    let [Write::New(epoch)] = writes.as_slice() else {
        panic!("a rotation asked for makes one epoch");
    };
    let mut later = epoch.clone();
    later.n = 9;
    assert!(!later.verifies(&VAULT));
    let mut other_time = epoch.clone();
    other_time.made_at += 1;
    assert!(!other_time.verifies(&VAULT));
    // Signed by b's key but naming a as its maker.
    let mut forged = epoch.clone();
    forged.made_by_key = b.keypair.public().encode_protobuf();
    assert!(!forged.verifies(&VAULT));
    // An entry for a that opens to another key (a member's mistake or malice) is not
    // taken for the epoch's key.
    let mut wrong = epoch.clone();
    let other = [3u8; 32];
    let public = exchange_public(&a.exchange);
    wrong.sealed.insert(
        a.peer().to_string(),
        seal_to(&VAULT, &epoch.id, &a.peer().to_string(), &public, &other).unwrap(),
    );
    assert!(wrong.open(&a.identity()).is_none());
    // An entry moved to another epoch's record or another device does not open.
    let mut moved = epoch.clone();
    moved.id = "00".repeat(16);
    assert!(moved.open(&a.identity()).is_none());
    let sealed_b = epoch.sealed[&b.peer().to_string()].clone();
    let mut swapped = epoch.clone();
    swapped.sealed.insert(a.peer().to_string(), sealed_b);
    assert!(swapped.open(&a.identity()).is_none());
    // Garbage in a record is not an epoch.
    assert!(Epoch::from_record(&json!({"id": "x", "n": "one"})).is_none());
}

#[test]
fn a_member_without_the_key_gets_it_from_one_that_has_it() {
    let (a, b, c) = (Device::new(), Device::new(), Device::new());
    let mut v = view(&[&a, &b], &[]);
    let writes = plan(&v, &a.identity(), Rotation::Now, 5);
    apply(&mut v, &writes);
    // c joins; c alone cannot open the epoch, and cannot seal what it does not hold.
    v.members.push(c.member());
    assert!(plan(&v, &c.identity(), Rotation::IfNeeded, 6).is_empty());
    let top_up = plan(&v, &b.identity(), Rotation::IfNeeded, 6);
    assert!(
        matches!(top_up.as_slice(), [Write::Seal { peer, .. }] if *peer == c.peer().to_string())
    );
    apply(&mut v, &top_up);
    let current = v.current(&VAULT).unwrap();
    assert_eq!(
        *current.open(&c.identity()).unwrap(),
        *current.open(&a.identity()).unwrap()
    );
    // The ring follows: c can sign under the epoch, and every device verifies it.
    let ring = Ring::default();
    ring.refresh(&v, &c.identity());
    let signer = ring.signer().unwrap().unwrap();
    let key_id_c = signer.key_id;
    assert_eq!(key_id_c, key_id(&current.signing_key));
    assert_eq!(ed25519_public(&signer.seed), current.signing_key);
    assert_eq!(
        ring.verifying_key(key_id_c),
        Some(current.signing_key),
        "the ring verifies its own epoch"
    );
    let summary = ring.summary();
    assert_eq!((summary.epoch, summary.held), (1, true));
    // A device the key was never sealed to cannot sign, and says why.
    let d = Device::new();
    let mut without = v.clone();
    without.members.push(Member {
        peer: d.peer(),
        exchange: None,
    });
    ring.refresh(&without, &d.identity());
    assert_eq!(ring.signer().err().map(|e| e.n), Some(1));
}

/// One device's knowledge in the model: what syncing merges.
#[derive(Clone, Default)]
struct Known {
    epochs: BTreeMap<String, Epoch>,
    /// PeerId → (exchange key, removed).
    devices: BTreeMap<PeerId, (Option<[u8; 32]>, bool)>,
    /// Every recovery kit made, by id: the newest made by a member counts.
    kits: BTreeMap<String, crate::recovery::Made>,
}

impl Known {
    fn view(&self) -> View {
        View {
            epochs: self.epochs.values().cloned().collect(),
            members: self
                .devices
                .iter()
                .filter(|(_, (_, removed))| !removed)
                .map(|(peer, (exchange, _))| Member {
                    peer: *peer,
                    exchange: *exchange,
                })
                .collect(),
            removed: self
                .devices
                .iter()
                .filter(|(_, (_, removed))| *removed)
                .map(|(peer, _)| *peer)
                .collect(),
            kit: self.kits().current.map(|(kit, _)| kit),
            replaced_kits: self
                .kits()
                .replaced
                .iter()
                .map(crate::recovery::KitPublic::recipient)
                .collect(),
        }
    }

    fn kits(&self) -> crate::recovery::Kits {
        crate::recovery::Kits::arrange(self.kits.values().cloned().collect(), |peer| {
            self.is_member(peer)
        })
    }

    fn is_member(&self, peer: &PeerId) -> bool {
        self.devices.get(peer).is_some_and(|(_, removed)| !removed)
    }

    fn merge(&mut self, other: &Known) {
        for (id, epoch) in &other.epochs {
            let mine = self
                .epochs
                .entry(id.clone())
                .or_insert_with(|| epoch.clone());
            for (peer, sealed) in &epoch.sealed {
                mine.sealed
                    .entry(peer.clone())
                    .or_insert_with(|| sealed.clone());
            }
        }
        for (peer, (exchange, removed)) in &other.devices {
            let mine = self.devices.entry(*peer).or_insert((None, false));
            mine.0 = mine.0.or(*exchange);
            mine.1 |= removed;
        }
        for (id, kit) in &other.kits {
            self.kits.entry(id.clone()).or_insert_with(|| kit.clone());
        }
    }

    /// Runs `plan` as `me` and keeps what it writes; returns how many writes.
    fn keep(&mut self, me: &Device, rotate: bool, now: u64) -> usize {
        let rotation = if rotate {
            Rotation::Now
        } else {
            Rotation::IfNeeded
        };
        let writes = plan(&self.view(), &me.identity(), rotation, now);
        let mut view = self.view();
        apply(&mut view, &writes);
        for epoch in view.epochs {
            self.epochs.insert(epoch.id.clone(), epoch);
        }
        writes.len()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Rotate(usize),
    Remove(usize, usize),
    Sync(usize, usize),
    Keep(usize),
    Join(usize),
    /// A device makes a new recovery kit (the old one stops counting).
    Kit(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..5usize).prop_map(Op::Rotate),
        2 => (0..5usize, 0..5usize).prop_map(|(a, b)| Op::Remove(a, b)),
        4 => (0..5usize, 0..5usize).prop_map(|(a, b)| Op::Sync(a, b)),
        2 => (0..5usize).prop_map(Op::Keep),
        1 => (0..5usize).prop_map(Op::Join),
        1 => (0..5usize).prop_map(Op::Kit),
    ]
}

fn sync(known: &mut [Known], a: usize, b: usize, peers: &[PeerId]) {
    if a == b || !known[a].is_member(&peers[b]) || !known[b].is_member(&peers[a]) {
        return;
    }
    let (from_a, from_b) = (known[a].clone(), known[b].clone());
    known[a].merge(&from_b);
    known[b].merge(&from_a);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Devices rotate, remove each other, join and sync in any order, apart or
    /// together. Once the members have synced: they agree on one current epoch, its key
    /// is sealed to every member and to no one else, every member holds every epoch's
    /// key, no removed device holds the current one, and the epochs form one chain back
    /// to epoch 0.
    #[test]
    fn concurrent_rotations_converge_to_one_chain(ops in proptest::collection::vec(op(), 1..40)) {
        let devices: Vec<Device> = (0..5).map(|_| Device::new()).collect();
        let peers: Vec<PeerId> = devices.iter().map(Device::peer).collect();
        // Devices 0 to 2 start paired; 3 and 4 join when an op says so.
        let mut known = vec![Known::default(); 5];
        let mut joined = [true, true, true, false, false];
        let mut kits: Vec<crate::recovery::RecoverySecret> = Vec::new();
        for k in known.iter_mut().take(3) {
            for d in 0..3 {
                k.devices.insert(peers[d], (Some(exchange_public(&devices[d].exchange)), false));
            }
        }
        let mut now = 1000;
        for op in ops {
            now += 1;
            match op {
                Op::Rotate(d) if joined[d] => { known[d].keep(&devices[d], true, now); }
                Op::Keep(d) if joined[d] => { known[d].keep(&devices[d], false, now); }
                Op::Remove(d, x) if joined[d] && d != x && known[d].is_member(&peers[d])
                    && known[d].is_member(&peers[x]) => {
                    known[d].devices.get_mut(&peers[x]).expect("listed").1 = true;
                    known[d].keep(&devices[d], false, now);
                }
                Op::Sync(a, b) if joined[a] && joined[b] => sync(&mut known, a, b, &peers),
                Op::Kit(d) if joined[d] && known[d].is_member(&peers[d]) => {
                    let secret = crate::recovery::RecoverySecret::generate();
                    let kit = secret.public();
                    let made = crate::recovery::Made { kit: kit.clone(), made_at: now, made_by: peers[d] };
                    known[d].kits.insert(kit.id.clone(), made);
                    kits.push(secret);
                    known[d].keep(&devices[d], false, now);
                }
                Op::Join(d) if joined[d] && known[d].is_member(&peers[d]) => {
                    if let Some(new) = (0..5).find(|&i| !joined[i]) {
                        joined[new] = true;
                        // The inviter lists it (no exchange key yet); the new device
                        // starts from the inviter's knowledge and publishes its key.
                        known[d].devices.insert(peers[new], (None, false));
                        known[new] = known[d].clone();
                        known[new].devices.insert(
                            peers[new],
                            (Some(exchange_public(&devices[new].exchange)), false),
                        );
                    }
                }
                _ => {}
            }
        }
        // Every device syncs with whoever still lists it, and keeps, until nothing
        // changes. (Two devices that removed each other apart split the vault: each
        // side goes on with the devices that still list it.)
        let candidates: Vec<usize> = (0..5).filter(|&d| joined[d]).collect();
        let mut quiet = false;
        for _ in 0..30 {
            for &a in &candidates {
                for &b in &candidates {
                    sync(&mut known, a, b, &peers);
                }
            }
            now += 1;
            let wrote: usize = candidates.iter().map(|&d| known[d].keep(&devices[d], false, now)).sum();
            if wrote == 0 {
                quiet = true;
                break;
            }
        }
        prop_assert!(quiet, "the devices kept writing");
        // Devices that list each other sync, so they must agree. (A device paired by
        // one removed before it told anyone is listed by no one: it stays apart.)
        let listed = |a: usize, b: usize| known[a].is_member(&peers[b]) && known[b].is_member(&peers[a]);
        let epochs_of = |d: usize| -> (Option<String>, BTreeSet<String>) {
            let v = known[d].view();
            (v.current(&VAULT).map(|e| e.id.clone()), v.epochs.iter().map(|e| e.id.clone()).collect())
        };
        for &a in &candidates {
            for &b in &candidates {
                if listed(a, b) {
                    prop_assert_eq!(epochs_of(a), epochs_of(b), "devices {} and {} differ", a, b);
                }
            }
        }
        // The groups that sync together. Within one, a key any member holds reaches
        // every member. A group may hold none of an epoch's key: the epoch's maker
        // (a member in the group's view, since the epoch counts) does not list one of
        // its members, or it would be in the group and hold its own epoch. That is a
        // side the vault cut off: a device removed by the maker before it heard, or one
        // paired by such a device, which the maker never heard of. It can open nothing
        // made since, which is the point; the rest is checked on a group that holds
        // every key.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for &start in &candidates {
            if groups.iter().any(|g| g.contains(&start)) {
                continue;
            }
            let mut reached = vec![start];
            let mut at = 0;
            while at < reached.len() {
                for &b in &candidates {
                    if !reached.contains(&b) && listed(reached[at], b) {
                        reached.push(b);
                    }
                }
                at += 1;
            }
            groups.push(reached);
        }
        let mut whole: Vec<&Vec<usize>> = Vec::new();
        for group in &groups {
            let view = known[group[0]].view();
            let mut holds_all = true;
            for epoch in view.valid(&VAULT) {
                let holders = group.iter().filter(|&&d| epoch.open(&devices[d].identity()).is_some()).count();
                prop_assert!(
                    holders == group.len() || holders == 0,
                    "group {:?}: {} of its devices lack epoch {}", group, group.len() - holders, epoch.n
                );
                if holders == 0 {
                    holds_all = false;
                }
            }
            if holds_all {
                whole.push(group);
            }
        }
        // The largest group that holds every key, and what it knows. (None, when every
        // group was cut off from some epoch.)
        let Some(group) = whole.into_iter().max_by_key(|g| g.len()) else {
            return Ok(());
        };
        let first = known[group[0]].view();
        let current = first.current(&VAULT).cloned();
        let sealable: BTreeSet<String> = first.sealable().iter().map(|(p, _)| p.clone()).collect();
        // The vault's kit opens every epoch; a kit it replaced opens no later one.
        for secret in &kits {
            let kit = secret.public();
            let seed = secret.exchange_seed();
            let opens = |e: &Epoch| e.open_as(&VAULT, &kit.recipient(), &seed).is_some();
            if first.kit.as_ref() == Some(&kit) {
                // Every epoch but one made while a newer kit was current (a kit made
                // by a device since removed, which no longer counts).
                for epoch in first.valid(&VAULT) {
                    if !epoch.excluded.contains(&kit.recipient()) {
                        prop_assert!(opens(epoch), "the kit lacks epoch {}", epoch.n);
                    }
                }
                if let Some(current) = first.current(&VAULT) {
                    prop_assert!(opens(current), "the kit lacks the current epoch");
                }
            } else if let Some(current) = first.current(&VAULT) {
                prop_assert!(!opens(current), "a replaced kit opens the current epoch");
            }
        }
        match &current {
            None => prop_assert!(
                first.removed.is_empty() && first.kit.is_none(),
                "a device was removed or a kit made, and epoch 0 is still current"
            ),
            Some(current) => {
                let sealed_to: BTreeSet<String> = current.sealed.keys().cloned().collect();
                prop_assert_eq!(&sealed_to, &sealable);
                for (x, device) in devices.iter().enumerate() {
                    if first.removed.contains(&peers[x]) {
                        prop_assert!(current.open(&device.identity()).is_none());
                    }
                }
                // One chain: each epoch names the one before it, back to epoch 0.
                let by_id: BTreeMap<&str, &Epoch> = first.epochs.iter().map(|e| (e.id.as_str(), e)).collect();
                let mut at = current;
                while !at.prev.is_empty() {
                    let prev = by_id.get(at.prev.as_str()).copied();
                    prop_assert!(prev.is_some(), "epoch {} names one this device lacks", at.n);
                    let prev = prev.expect("checked");
                    prop_assert_eq!(prev.n + 1, at.n);
                    at = prev;
                }
                prop_assert_eq!(at.n, 1);
            }
        }
    }
}

/// The signature is what makes a record a device's: a record whose id is recomputed
/// after a change, but whose signature is not its maker's over it, is refused.
#[test]
fn a_record_is_refused_unless_its_maker_signed_it() {
    let (a, b) = (Device::new(), Device::new());
    let v = view(&[&a, &b], &[]);
    let writes = plan(&v, &a.identity(), Rotation::Now, 5);
    let [Write::New(epoch)] = writes.as_slice() else {
        panic!("one epoch");
    };
    assert!(epoch.verifies(&VAULT));
    // Changed and re-hashed, the old signature kept.
    let mut changed = (**epoch).clone();
    changed.made_at += 1;
    changed.id = id_of(&changed.signed_part(&VAULT));
    assert!(!changed.verifies(&VAULT));
    // Changed, re-hashed and signed by another device's key, still naming a.
    changed.signature = b.keypair.sign(&changed.signed_part(&VAULT)).unwrap();
    assert!(!changed.verifies(&VAULT));
    // Signed by a's key, it verifies: the check is the signature, not the id.
    changed.signature = a.keypair.sign(&changed.signed_part(&VAULT)).unwrap();
    assert!(changed.verifies(&VAULT));
    // The excluded list is signed too.
    let mut widened = (**epoch).clone();
    widened.excluded.push("someone".into());
    widened.id = id_of(&widened.signed_part(&VAULT));
    assert!(!widened.verifies(&VAULT));
}

/// A device that has not learned of a removal yet never gives the new epoch to the
/// removed device: the epoch names it as excluded, and top-ups respect that.
#[test]
fn a_top_up_never_reaches_a_device_the_epoch_excludes() {
    let (a, c, x) = (Device::new(), Device::new(), Device::new());
    // A removed x and rotated.
    let mut at_a = view(&[&a, &c], &[&x]);
    let writes = plan(&at_a, &a.identity(), Rotation::IfNeeded, 5);
    apply(&mut at_a, &writes);
    let epoch = at_a.current(&VAULT).unwrap().clone();
    assert_eq!(epoch.excluded, vec![x.peer().to_string()]);
    // C has the epoch, but still counts x as a member.
    let mut at_c = view(&[&a, &c, &x], &[]);
    at_c.epochs.push(epoch.clone());
    let top_ups = plan(&at_c, &c.identity(), Rotation::IfNeeded, 6);
    assert!(
        top_ups
            .iter()
            .all(|w| !matches!(w, Write::Seal { peer, .. } if *peer == x.peer().to_string())),
        "{top_ups:?}"
    );
}

/// An entry sealed to an exchange key its holder no longer publishes is sealed again
/// to the one it does.
#[test]
fn an_entry_for_an_old_exchange_key_is_sealed_again() {
    let (a, mut b) = (Device::new(), Device::new());
    let mut v = view(&[&a, &b], &[]);
    let writes = plan(&v, &a.identity(), Rotation::Now, 5);
    apply(&mut v, &writes);
    // b's exchange key changes (its key file was made again, say).
    rand::rngs::OsRng.fill_bytes(&mut b.exchange);
    v.members = vec![a.member(), b.member()];
    assert!(v.current(&VAULT).unwrap().open(&b.identity()).is_none());
    let again = plan(&v, &a.identity(), Rotation::IfNeeded, 6);
    assert!(
        matches!(again.as_slice(), [Write::Seal { peer, .. }] if *peer == b.peer().to_string())
    );
    apply(&mut v, &again);
    assert!(v.current(&VAULT).unwrap().open(&b.identity()).is_some());
    assert!(plan(&v, &a.identity(), Rotation::IfNeeded, 7).is_empty());
}

/// Only the device itself can publish its exchange key.
#[test]
fn an_exchange_key_counts_only_when_its_device_signed_it() {
    let (b, x) = (Device::new(), Device::new());
    let public = exchange_public(&x.exchange);
    let record = |signer: &Keypair| crate::devices::Device {
        id: b.peer().to_string(),
        name: String::new(),
        added_at: 0,
        removed_at: None,
        addrs: Vec::new(),
        exchange: Some(BASE64.encode(&public)),
        exchange_sig: Some(
            BASE64.encode(
                &signer
                    .sign(&crate::devices::exchange_message(
                        &VAULT,
                        &b.peer().to_string(),
                        &public,
                    ))
                    .unwrap(),
            ),
        ),
    };
    assert_eq!(
        record(&x.keypair).exchange_key(&VAULT),
        None,
        "x publishing in b's name"
    );
    assert_eq!(record(&b.keypair).exchange_key(&VAULT), Some(public));
    assert_eq!(
        record(&b.keypair).exchange_key(&[9; 16]),
        None,
        "another vault's"
    );
}

/// An epoch record altered on its way (a higher number, under the id that matches
/// it, the maker's signature kept) is set aside when a device reads `_epochs`: it
/// neither becomes the current epoch nor hides the real one.
#[test]
fn a_device_reads_only_the_epoch_records_that_verify() {
    let vault = crate::testutil::TestVault::new();
    let vault_id = vault.keys.vault_id;
    let collections = Collections::open(vault.store.clone(), vault_id).unwrap();
    let me = vault.keys.identity();
    crate::devices::add(&collections, &me.peer(), "mine").unwrap();
    let to = [(me.peer().to_string(), exchange_public(me.exchange))];
    let (epoch, _) = Epoch::make(&me, None, &to, Vec::new(), 1_000).unwrap();
    let mut forged = epoch.clone();
    forged.n = 9;
    forged.id = id_of(&forged.signed_part(&vault_id));
    for record in [&forged, &epoch] {
        let id = RecordId::parse(&record.id).unwrap();
        collections
            .put(&collection(), &id, &record.to_record())
            .unwrap();
    }
    let view = view_of(&collections, vault_id).unwrap();
    let ids: Vec<&str> = view.epochs.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec![epoch.id.as_str()]);
    assert_eq!(view.current(&vault_id).map(|e| e.n), Some(1));
    assert!(view.current(&vault_id).unwrap().open(&me).is_some());
}
