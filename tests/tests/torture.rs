//! A short crash torture run (the long one is `examples/torture.rs`): concurrent
//! writers of records and blobs, SIGKILL at random moments, a second device syncing;
//! after every restart each acknowledged write is there exactly and each write in
//! flight is whole or absent.

use hearth_tests::torture::{self, Config};

#[test]
fn acknowledged_writes_survive_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var("HEARTH_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let report = torture::run(
        dir.path(),
        &Config {
            kills: 12,
            writers: 4,
            seed,
            second_device: true,
            max_run: std::time::Duration::from_millis(700),
        },
    );
    eprintln!("torture (seed {seed}): {report:?}");
    assert_eq!(report.kills, 12);
    assert!(
        report.acknowledged_writes > 0,
        "nothing was written: {report:?}"
    );
}
