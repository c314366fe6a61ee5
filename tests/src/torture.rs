//! The crash torture harness: real `hearth up` processes under concurrent writes of
//! records and blobs, killed with SIGKILL at random moments and restarted, with a model
//! of every acknowledged write to check against after each restart. Shared by the
//! short run in the test suite (`tests/torture.rs`) and the long run
//! (`examples/torture.rs`).
//!
//! The rules checked after every restart:
//! - the vault opens (the node starts and answers);
//! - every acknowledged write is there exactly (a record's last acknowledged value, a
//!   deleted record absent, a blob byte for byte);
//! - a write in flight when the node died is either fully there or absent — never a
//!   mixture, never corrupt;
//! - the audit log verifies;
//! - with a second device: once both run, it converges to the same records.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{Api, NodeProcess, eventually, hearth_json, spawn_node};

/// What a run does.
#[derive(Debug, Clone)]
pub struct Config {
    pub kills: usize,
    pub writers: usize,
    pub seed: u64,
    /// A second device paired at the start, kept running, checked for convergence.
    pub second_device: bool,
    /// Longest time the writers run before the kill (each round picks at random).
    pub max_run: Duration,
}

/// What a run saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub kills: usize,
    pub acknowledged_writes: usize,
    pub acknowledged_blobs: usize,
    pub in_flight_found_applied: usize,
    pub in_flight_found_absent: usize,
    pub records_checked: usize,
    pub blobs_checked: usize,
}

/// The value a record must have: acknowledged, and possibly one write in flight.
#[derive(Debug, Clone)]
struct Expected {
    acknowledged: Option<Value>,
    in_flight: Option<Option<Value>>,
}

#[derive(Default)]
struct Model {
    records: BTreeMap<String, Expected>,
    /// (blob id, BLAKE3 of its bytes), acknowledged, oldest first.
    blobs: Vec<(String, String)>,
    /// Writes acknowledged, records and blobs.
    acks: usize,
    /// Blobs (in `blobs`' order) read back at least once already.
    blobs_checked_upto: usize,
}

/// Runs the torture in `dir` and returns what it saw; panics, naming the seed, on the
/// first violation.
pub fn run(dir: &Path, config: &Config) -> Report {
    eprintln!("torture: {config:?}");
    let home = dir.join("a");
    let mut report = Report::default();
    let model = Arc::new(Mutex::new(Model::default()));
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut node = spawn_node(&home, &[]);

    let second = config.second_device.then(|| {
        let code = node.json(&["pair"])["code"]
            .as_str()
            .expect("an invite code")
            .to_owned();
        let b_home = dir.join("b");
        hearth_json(&b_home, &["join", &code]);
        spawn_node(&b_home, &[])
    });

    for round in 0..config.kills {
        let stop = Arc::new(AtomicBool::new(false));
        let api = Arc::new(Api::new(&node));
        let writers: Vec<_> = (0..config.writers)
            .map(|w| {
                let (api, model, stop) = (api.clone(), model.clone(), stop.clone());
                let seed = rng.r#gen::<u64>();
                std::thread::spawn(move || write_until_stopped(w, round, seed, &api, &model, &stop))
            })
            .collect();
        let run_for = rng.gen_range(Duration::from_millis(20)..config.max_run);
        std::thread::sleep(run_for);
        node.kill9();
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            writer.join().expect("a writer thread");
        }
        report.kills += 1;
        node = spawn_node(&home, &[]);
        if let Some(b) = &second {
            // What the other device received before the crash may come back: let it,
            // so that the check sees a settled state.
            converged(&node, b);
        }
        check(&node, &model, &mut report, config.seed, round);
        if (round + 1) % 25 == 0 {
            eprintln!("torture: {} kills survived; {report:?}", round + 1);
        }
    }
    let m = model.lock().expect("model");
    report.acknowledged_blobs = m.blobs.len();
    drop(m);

    if let Some(b) = second {
        converge(&node, &b, &model);
        b.stop();
    }
    node.stop();
    report
}

/// One writer: puts, patches and deletes of its own records, and now and then a blob,
/// until told to stop or the node stops answering.
fn write_until_stopped(
    writer: usize,
    round: usize,
    seed: u64,
    api: &Api,
    model: &Mutex<Model>,
    stop: &AtomicBool,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        if rng.gen_ratio(1, 40) {
            let size = rng.gen_range(1..1536 * 1024);
            let mut bytes = vec![0u8; size];
            rng.fill(&mut bytes[..]);
            let hash = blake3::hash(&bytes).to_hex().to_string();
            let Ok(answer) = api.request(Method::POST, "/v1/blobs").body(bytes).send() else {
                return;
            };
            if answer.status().as_u16() != 201 {
                return;
            }
            let Ok(body) = answer.json::<Value>() else {
                return;
            };
            let id = body["id"].as_str().expect("a blob id").to_owned();
            let mut m = model.lock().expect("model");
            m.blobs.push((id, hash));
            m.acks += 1;
            continue;
        }
        let id = format!("w{writer}-{}", rng.gen_range(0..20));
        let current = model
            .lock()
            .expect("model")
            .records
            .get(&id)
            .and_then(|e| e.acknowledged.clone());
        // The whole record after the write, if it is applied.
        let (method, body, after) = match (rng.gen_range(0..10), &current) {
            (0, Some(_)) => (Method::DELETE, None, None),
            (1..=3, Some(old)) => {
                let patch = json!({"v": n, "round": round});
                let mut merged = old.clone();
                merged["v"] = json!(n);
                merged["round"] = json!(round);
                (Method::PATCH, Some(patch), Some(merged))
            }
            _ => {
                let record = json!({
                    "id": id, "writer": writer, "v": n, "round": round,
                    "pad": "x".repeat(rng.gen_range(0..4000)),
                    "list": (0..rng.gen_range(0..5)).collect::<Vec<u32>>(),
                });
                (Method::PUT, Some(record.clone()), Some(record))
            }
        };
        model
            .lock()
            .expect("model")
            .records
            .entry(id.clone())
            .or_insert(Expected {
                acknowledged: None,
                in_flight: None,
            })
            .in_flight = Some(after.clone());
        let mut request = api.request(method, &format!("/v1/collections/torture/records/{id}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let acknowledged = request
            .send()
            .is_ok_and(|answer| answer.status().is_success());
        let mut m = model.lock().expect("model");
        let entry = m.records.get_mut(&id).expect("entered above");
        if !acknowledged {
            // The node died with this write in flight: left for the check to settle.
            return;
        }
        entry.acknowledged = after;
        entry.in_flight = None;
        m.acks += 1;
    }
}

/// After a restart: every record and blob as the model allows; settles writes that were
/// in flight to what the node shows.
fn check(node: &NodeProcess, model: &Mutex<Model>, report: &mut Report, seed: u64, round: usize) {
    let api = Api::new(node);
    let mut m = model.lock().expect("model");
    for (id, expected) in m.records.iter_mut() {
        let (status, body) = api.send(api.request(
            Method::GET,
            &format!("/v1/collections/torture/records/{id}"),
        ));
        let found = match status {
            200 => Some(body),
            404 => None,
            other => panic!("seed {seed}, round {round}: reading {id} answered {other}: {body}"),
        };
        report.records_checked += 1;
        match expected.in_flight.take() {
            None if found == expected.acknowledged => {}
            Some(applied) if found == applied => {
                report.in_flight_found_applied += 1;
                expected.acknowledged = found;
            }
            Some(_) if found == expected.acknowledged => report.in_flight_found_absent += 1,
            in_flight => panic!(
                "seed {seed}, round {round}: record {id} is {found:?}; acknowledged {:?}, in flight {in_flight:?}",
                expected.acknowledged
            ),
        }
    }
    report.acknowledged_writes = m.acks;
    // Blobs acknowledged since the last check, and a sample of older ones: reading
    // every blob after every kill would make a long run quadratic.
    let newest = m.blobs_checked_upto;
    let total = m.blobs.len();
    let mut pick = StdRng::seed_from_u64(seed ^ round as u64);
    let sample: Vec<(String, String)> = m
        .blobs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i >= newest || pick.gen_ratio(4, (total as u32).max(4)))
        .map(|(_, blob)| blob.clone())
        .collect();
    m.blobs_checked_upto = total;
    for (id, hash) in &sample {
        let answer = api.send_raw(api.request(Method::GET, &format!("/v1/blobs/{id}")));
        assert_eq!(
            answer.status, 200,
            "seed {seed}, round {round}: acknowledged blob {id} is missing"
        );
        assert_eq!(
            &blake3::hash(&answer.body).to_hex().to_string(),
            hash,
            "seed {seed}, round {round}: blob {id} came back different"
        );
        report.blobs_checked += 1;
    }
    let (status, verify) = api.send(api.request(Method::GET, "/v1/audit/verify"));
    assert_eq!(
        (status, verify["ok"].clone()),
        (200, json!(true)),
        "seed {seed}, round {round}: the audit log does not verify: {verify}"
    );
}

fn list(api: &Api) -> Value {
    api.send(api.request(Method::GET, "/v1/collections/torture/records"))
        .1
}

/// Waits until both devices show the same records.
fn converged(a: &NodeProcess, b: &NodeProcess) {
    let (api_a, api_b) = (Api::new(a), Api::new(b));
    eventually("the two devices converge", || {
        (list(&api_a) == list(&api_b)).then_some(())
    });
}

/// The second device ends with exactly the first one's records.
fn converge(a: &NodeProcess, b: &NodeProcess, model: &Mutex<Model>) {
    let started = Instant::now();
    converged(a, b);
    let m = model.lock().expect("model");
    let on_a = list(&Api::new(a));
    let live = m
        .records
        .values()
        .filter(|e| e.acknowledged.is_some())
        .count();
    assert_eq!(
        on_a.as_array().map_or(0, Vec::len),
        live,
        "the first device's records differ from the model"
    );
    eprintln!(
        "torture: second device converged in {:?}",
        started.elapsed()
    );
}
