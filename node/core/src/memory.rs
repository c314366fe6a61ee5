//! Giving memory that was freed back to the system.
//!
//! glibc's allocator keeps what a program frees for its next allocations, and returns
//! little of it unless asked. Loading a part allocates several times its saved size
//! (sealed pieces, their plaintext, Automerge's columns) and frees most of it, and a
//! part dropped from the cache frees the rest; so a node that loads many parts keeps a
//! resident set far above what it uses. Measured (`measure_parts_in_memory`, 100,000
//! messages with a text each, every part loaded then dropped; two runs): 239–242 MiB
//! in use, 815–854 MiB resident; `malloc_trim` brought that to 253–273 MiB, in 34 ms
//! (timed once).
//!
//! So every load notes its size here ([`note_loaded`]), and after [`TRIM_AFTER`] bytes
//! one trim runs on a thread of its own, never on a request's. Elsewhere than glibc
//! this does nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Saved bytes loaded since the last trim after which the next one starts.
pub const TRIM_AFTER: usize = 32 << 20;

static LOADED: AtomicUsize = AtomicUsize::new(0);
static TRIMMING: AtomicBool = AtomicBool::new(false);
static TRIMS: AtomicUsize = AtomicUsize::new(0);

/// Notes that a document of `bytes` saved bytes was loaded; starts a trim once
/// [`TRIM_AFTER`] bytes have been noted since the last, unless one is running.
pub fn note_loaded(bytes: usize) {
    if LOADED.fetch_add(bytes, Ordering::Relaxed) + bytes < TRIM_AFTER
        || TRIMMING.swap(true, Ordering::AcqRel)
    {
        return;
    }
    LOADED.store(0, Ordering::Relaxed);
    let started = std::thread::Builder::new()
        .name("hearth-trim".into())
        .spawn(|| {
            trim();
            TRIMMING.store(false, Ordering::Release);
        });
    if let Err(e) = started {
        tracing::debug!(error = %e, "cannot start a thread to give freed memory back");
        TRIMMING.store(false, Ordering::Release);
    }
}

/// How many times [`trim`] has run in this process (tests).
pub fn trims() -> usize {
    TRIMS.load(Ordering::Relaxed)
}

/// Gives the memory freed so far back to the system, now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it only releases free pages of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
    TRIMS.fetch_add(1, Ordering::Relaxed);
}

/// What the measurements run by hand read of this process's memory.
#[cfg(test)]
pub(crate) mod measure {
    /// The heap's bytes in use (glibc's `mallinfo2`).
    pub(crate) fn heap_in_use() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let info = unsafe { libc::mallinfo2() };
        info.uordblks + info.hblkhd
    }

    /// Field `field` of `/proc/self/status` (`VmRSS`, `VmHWM`), as it reads there.
    pub(crate) fn status(field: &str) -> String {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default()
    }

    /// Bytes as MiB.
    pub(crate) fn mib(bytes: usize) -> f64 {
        bytes as f64 / (1024.0 * 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads adding up to the threshold start a trim (others running in this test
    /// binary may have started one first: then the next note starts it).
    #[test]
    fn loads_past_the_threshold_start_a_trim() {
        let before = trims();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while trims() == before {
            assert!(std::time::Instant::now() < deadline, "no trim started");
            note_loaded(TRIM_AFTER / 2);
            note_loaded(TRIM_AFTER / 2);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
