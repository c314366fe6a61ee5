//! Frees the bytes no record names any more: a removed file's, a replaced photo's, a
//! deleted mail's.
//!
//! Bytes stored for records (a file upload, a mail, a contact's photo: a listing
//! [`for_records`](hearth_core::blobs::Listing::for_records)) stay while any record
//! of a user collection names them. This task finds the ones none names
//! ([`blobs::unnamed`]), and removes one only when two findings at least
//! [`Limits::unnamed_blob_grace`](crate::Limits) apart agree on it, its listing
//! untouched between them (time for a record naming it, written on another device,
//! to arrive by sync). The removal itself is refused for a blob named since
//! ([`blobs::unlist_unnamed`]), and every device's garbage collection lists again a
//! removed blob a record there still names instead of dropping it
//! ([`Blobs::drop_removed`](hearth_core::blobs::Blobs::drop_removed)): a write that
//! crossed the removal keeps its bytes.
//!
//! It runs after a change of the files (once the grace has passed, so a burst of
//! changes makes one run), once a day for the rest (mail, photos of contacts), and at
//! start. A run reads every listing, and the records until each listed blob is found
//! named: the files first, all of them only when something is unnamed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hearth_core::blobs::{self, Unnamed};
use hearth_protocol::BlobId;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Vault;

/// How often the task runs without a change of the files.
pub const EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// What the task knows between runs: the blobs found unnamed, when first, and their
/// listing's `named_at` then.
#[derive(Debug, Default)]
pub struct Findings {
    found: HashMap<BlobId, (Instant, Option<u64>)>,
}

impl Findings {
    /// Takes a run's findings at `now`; returns those found unnamed, unchanged, at
    /// least `grace` ago: the ones to remove.
    pub fn take(&mut self, unnamed: Vec<Unnamed>, now: Instant, grace: Duration) -> Vec<Unnamed> {
        let mut ripe = Vec::new();
        let mut found = HashMap::with_capacity(unnamed.len());
        for blob in unnamed {
            match self.found.get(&blob.id) {
                Some(&(first, named_at)) if named_at == blob.named_at => {
                    if now.duration_since(first) >= grace {
                        ripe.push(blob);
                    } else {
                        found.insert(blob.id, (first, named_at));
                    }
                }
                _ => {
                    found.insert(blob.id, (now, blob.named_at));
                }
            }
        }
        self.found = found;
        ripe
    }

    /// When the next run can remove something: the earliest finding's grace passed.
    pub fn next(&self, grace: Duration) -> Option<Instant> {
        self.found.values().map(|(first, _)| *first + grace).min()
    }
}

/// Starts the task; send on the sender (or drop it) to stop it.
pub fn spawn(vault: Arc<Vault>, grace: Duration) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop_tx, mut stop) = oneshot::channel::<()>();
    let mut changes = vault.collections.subscribe();
    let files = crate::files::collection();
    let task = tokio::spawn(async move {
        let mut findings = Findings::default();
        let mut next = Instant::now() + grace;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep_until(next) => {}
                changed = changes.recv() => {
                    let files_changed = match changed {
                        Ok(changed) => changed.collection == files,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    if files_changed {
                        next = next.min(Instant::now() + grace);
                    }
                    continue;
                }
            }
            let work = vault.clone();
            let run = tokio::task::spawn_blocking(move || blobs::unnamed(&work.collections));
            let unnamed = tokio::select! {
                // A long reading is not waited for at shutdown: nothing was decided.
                _ = &mut stop => return,
                run = run => run,
            };
            let ripe = match unnamed {
                Ok(Ok(unnamed)) => findings.take(unnamed, Instant::now(), grace),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not look for bytes no record names");
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the task looking for bytes no record names failed");
                    Vec::new()
                }
            };
            if !ripe.is_empty() {
                remove(&vault, ripe).await;
            }
            next = findings
                .next(grace)
                .unwrap_or_else(|| Instant::now() + EVERY);
        }
    });
    (stop_tx, task)
}

/// Removes `ripe` (those still unnamed and untouched), makes that durable, and frees
/// their bytes here.
async fn remove(vault: &Arc<Vault>, ripe: Vec<Unnamed>) {
    let work = vault.clone();
    let removed =
        tokio::task::spawn_blocking(move || blobs::unlist_unnamed(&work.collections, &ripe)).await;
    match removed {
        Ok(Ok(removed)) if removed.is_empty() => return,
        Ok(Ok(removed)) => {
            tracing::info!(blobs = removed.len(), "removing bytes no record names");
            if let Err(e) = vault.store.commit().await {
                tracing::warn!(error = %e, "could not commit the removal of unnamed bytes");
                return;
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not remove bytes no record names");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "the task removing unnamed bytes failed");
            return;
        }
    }
    if let Err(e) = vault.collect_blob_garbage().await {
        tracing::warn!(error = %e, "could not free the space of unnamed bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, named_at: Option<u64>) -> Unnamed {
        Unnamed {
            id: BlobId([n; 32]),
            named_at,
        }
    }

    /// A blob is removed only when found unnamed twice, a grace apart, with its
    /// listing untouched in between; found named in between, it starts again.
    #[test]
    fn two_findings_a_grace_apart_decide() {
        let grace = Duration::from_secs(600);
        let start = Instant::now();
        let mut findings = Findings::default();
        assert!(
            findings
                .take(vec![blob(1, Some(5)), blob(2, None)], start, grace)
                .is_empty()
        );
        assert_eq!(findings.next(grace), Some(start + grace));
        // Too early: nothing yet.
        assert!(
            findings
                .take(
                    vec![blob(1, Some(5)), blob(2, None)],
                    start + grace / 2,
                    grace
                )
                .is_empty()
        );
        // Blob 1 was named in between (its named_at moved): it starts again. Blob 3 is new.
        let ripe = findings.take(
            vec![blob(1, Some(6)), blob(2, None), blob(3, None)],
            start + grace,
            grace,
        );
        assert_eq!(ripe, vec![blob(2, None)]);
        assert_eq!(findings.next(grace), Some(start + 2 * grace));
        // Blob 3 found named (absent), blob 1 unnamed and untouched a grace later.
        let ripe = findings.take(vec![blob(1, Some(6))], start + 2 * grace, grace);
        assert_eq!(ripe, vec![blob(1, Some(6))]);
        assert_eq!(findings.next(grace), None);
    }
}
