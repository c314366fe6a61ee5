//! The long crash torture run: `hearth up` killed with SIGKILL at random moments under
//! concurrent writes of records and blobs, with a second device syncing, checked
//! against a model of every acknowledged write after each restart.
//!
//!     cargo build --release -p hearth-cli
//!     HEARTH_BIN=target/release/hearth cargo run --release -p hearth-tests --example torture -- [KILLS] [SEED]

use hearth_tests::torture::{self, Config};

fn main() {
    let mut args = std::env::args().skip(1);
    let kills = args.next().and_then(|k| k.parse().ok()).unwrap_or(500);
    let seed = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let started = std::time::Instant::now();
    let report = torture::run(
        dir.path(),
        &Config {
            kills,
            writers: 4,
            seed,
            second_device: true,
            max_run: std::time::Duration::from_millis(1500),
        },
    );
    println!(
        "seed {seed}: {} kills in {:.0?}; {} writes acknowledged ({} blobs); {} record reads and {} blob reads checked; in flight at a kill: {} found applied, {} found absent; nothing acknowledged lost",
        report.kills,
        started.elapsed(),
        report.acknowledged_writes,
        report.acknowledged_blobs,
        report.records_checked,
        report.blobs_checked,
        report.in_flight_found_applied,
        report.in_flight_found_absent,
    );
}
