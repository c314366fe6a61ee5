//! What time it is, for every rule that depends on it: grant and token expiry, audit
//! and refusal windows, device and sync records, revocations, blob and conflict notes.
//! One place reads the system clock, so no module needs another (the vault core used
//! to take the time from `access`).
//!
//! Tests move it with [`at`]: the time seen by code running on the calling thread
//! inside the closure, and nowhere else, so tests running side by side in one process
//! (`cargo test`) do not see each other's times.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

thread_local! {
    /// The time this thread sees instead of the system's, while [`at`] runs.
    static SET: Cell<Option<SystemTime>> = const { Cell::new(None) };
}

/// Now.
pub fn now() -> SystemTime {
    SET.with(Cell::get).unwrap_or_else(SystemTime::now)
}

/// Now, in whole seconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_unix() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs `f` with the clock of this thread at `unix` seconds since the epoch; the
/// thread's clock is given back afterwards, also if `f` panics.
pub fn at<R>(unix: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<SystemTime>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SET.with(|set| set.set(self.0));
        }
    }
    let _restore =
        Restore(SET.with(|set| set.replace(Some(UNIX_EPOCH + Duration::from_secs(unix)))));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_clock_holds_on_its_thread_only_and_is_given_back() {
        let real = now_unix();
        at(1_000, || {
            assert_eq!(now_unix(), 1_000);
            let elsewhere = std::thread::spawn(now_unix).join().unwrap();
            assert!(elsewhere >= real, "another thread saw {elsewhere}");
            at(5, || assert_eq!(now_unix(), 5));
            assert_eq!(now_unix(), 1_000);
        });
        assert!(now_unix() >= real);
        let caught = std::panic::catch_unwind(|| at(7, || panic!("inside")));
        assert!(caught.is_err());
        assert!(now_unix() >= real, "a panic left the clock set");
    }
}
