//! Group audit: the entries of requests that wait at the same time go into the log
//! with one append and become durable with one commit.
//!
//! Every access is audited, durably, before it is answered. Appended one request at a
//! time, each entry cost an Automerge change, a sealed value and an index write, all
//! under the chain's lock, and at 64 connections that serial work, not the disk, set
//! the pace (measured in docs/BENCHMARKS.md: ~2,200 audited reads/s, against ~22,000
//! with the append left out and the commit kept). Here a request queues its entries
//! and waits; one drain on the blocking pool takes everything queued, appends it with
//! [`AuditLog::append_many`] (one record per log document), asks the store for a
//! commit, and goes on with what queued meanwhile while that commit's fsync runs. Each
//! request is answered once the commit that covers its entries is done, so the promise
//! is unchanged: nothing is answered that the log does not hold durably.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use hearth_protocol::api::ErrorCode;
use tokio::sync::oneshot;

use super::AccessError;
use super::audit::{AuditEvent, AuditLog};
use crate::collections::Collections;
use crate::store::Store;

/// The most requests one append takes, so one group's record stays small.
const MAX_GROUP: usize = 128;

/// What a group's requests are told: done, or the failure they share.
type Outcome = Result<(), (ErrorCode, String)>;

/// The requests whose entries wait for the next append, and the log they go to.
pub(super) struct AuditGroups {
    queue: Mutex<Queue>,
    audit: Arc<AuditLog>,
    collections: Arc<Collections>,
    store: Arc<Store>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<(Vec<AuditEvent>, oneshot::Sender<Outcome>)>,
    /// A drain is running: it takes what is queued before it stops.
    draining: bool,
}

impl AuditGroups {
    pub fn new(audit: Arc<AuditLog>, collections: Arc<Collections>, store: Arc<Store>) -> Self {
        Self {
            queue: Mutex::default(),
            audit,
            collections,
            store,
        }
    }

    /// Appends `events` and returns once they are durable, with every write made
    /// before the call. With no events the request waits for a commit only.
    pub async fn durable(self: &Arc<Self>, events: Vec<AuditEvent>) -> Result<(), AccessError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push_back((events, tx));
            !std::mem::replace(&mut queue.draining, true)
        };
        if start {
            let drain = Drain {
                groups: self.clone(),
                runtime: tokio::runtime::Handle::current(),
                done: false,
            };
            // The drain is nobody's request: one whose client goes away leaves it
            // running for the others.
            tokio::task::spawn_blocking(move || drain.run());
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((code, message))) => Err(AccessError::Shared { code, message }),
            // The drain or its commit task ended without an answer: the runtime is
            // shutting down (or the drain panicked).
            Err(_) => Err(crate::store::StoreError::Closed.into()),
        }
    }

    /// Whether a drain runs, and how many requests wait for it.
    #[cfg(test)]
    fn queued(&self) -> (bool, usize) {
        let queue = self.lock();
        (queue.draining, queue.waiting.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .expect("audit group lock is never poisoned")
    }
}

struct Drain {
    groups: Arc<AuditGroups>,
    runtime: tokio::runtime::Handle,
    /// Set when it stops with nothing queued (the queue says no drain runs).
    done: bool,
}

impl Drain {
    fn run(mut self) {
        let groups = self.groups.clone();
        loop {
            let group: Vec<_> = {
                let mut queue = groups.lock();
                if queue.waiting.is_empty() {
                    queue.draining = false;
                    self.done = true;
                    return;
                }
                let n = queue.waiting.len().min(MAX_GROUP);
                queue.waiting.drain(..n).collect()
            };
            let (events, waiters): (Vec<Vec<AuditEvent>>, Vec<_>) = group.into_iter().unzip();
            let appended = groups
                .audit
                .append_many(&groups.collections, events.into_iter().flatten().collect());
            let store = groups.store.clone();
            // The commit is awaited on a task of its own, so the next group's append
            // runs while this one's fsync does.
            self.runtime.spawn(async move {
                let outcome: Outcome = match appended {
                    Ok(()) => store.commit().await.map_err(AccessError::from),
                    Err(e) => Err(e.into()),
                }
                .map_err(|e| (e.code(), e.to_string()));
                for waiter in waiters {
                    let _ = waiter.send(outcome.clone());
                }
            });
        }
    }
}

impl Drop for Drain {
    /// A drain that did not finish (it panicked, or the blocking pool never ran it as
    /// the runtime shut down) lets the next request start another, and fails the
    /// requests still queued (their senders dropped) rather than leave them waiting.
    fn drop(&mut self) {
        if !self.done {
            let mut queue = self.groups.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.draining = false;
            queue.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hearth_protocol::scope::Scope;
    use hearth_protocol::{CollectionName, RecordId};
    use serde_json::json;

    use super::super::audit::{audit_entries, is_audit_shard, verify_audit};
    use super::super::{Credentials, Door, NewGrant, create_grant};
    use crate::collections::{Collections, RecordSource};
    use crate::store::Fault;
    use crate::testutil::TestVault;

    const READERS: usize = 64;

    /// A vault with `READERS` contacts, its door, and a token that reads them.
    fn vault() -> (TestVault, std::sync::Arc<Collections>, Door, String) {
        let vault = TestVault::new();
        let collections =
            std::sync::Arc::new(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let contacts = CollectionName::parse("contacts").unwrap();
        for i in 0..READERS {
            let record = json!({"name": format!("Person {i}")});
            collections
                .put(
                    &contacts,
                    &RecordId::parse(&format!("r{i}")).unwrap(),
                    record.as_object().unwrap(),
                )
                .unwrap();
        }
        let (door, _, token) =
            super::super::door_with_grant(&vault, &collections, "contacts.name", None);
        (vault, collections, door, token)
    }

    type Read = tokio::task::JoinHandle<Result<serde_json::Value, super::AccessError>>;

    /// Starts a read of every contact while the audit chain's lock is held on a thread
    /// of its own: the first read's append waits on the lock, and this returns once all
    /// the others are queued behind it. Returns the reads, in order, and the sender
    /// that releases the lock.
    async fn reads_queued_behind_the_chain(
        door: &Door,
        token: &str,
    ) -> (Vec<Read>, std::sync::mpsc::Sender<()>) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (held, is_held) = std::sync::mpsc::channel();
        let audit = door.0.audit.clone();
        std::thread::spawn(move || {
            let _guard = audit.hold();
            held.send(()).unwrap();
            let _ = wait.recv();
        });
        is_held.recv().unwrap();
        let contacts = CollectionName::parse("contacts").unwrap();
        let read = |i: usize| {
            let (door, token, contacts) = (door.clone(), token.to_owned(), contacts.clone());
            tokio::spawn(async move {
                let id = RecordId::parse(&format!("r{i}")).unwrap();
                door.read_record(&Credentials::local(&token), &contacts, &id)
                    .await
            })
        };
        let until = |wanted: (bool, usize)| async move {
            for _ in 0..500 {
                if door.0.groups.queued() == wanted {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the audit queue never reached {wanted:?}");
        };
        let mut reads = vec![read(0)];
        // Taken by the drain, which now waits for the lock.
        until((true, 0)).await;
        reads.extend((1..READERS).map(read));
        until((true, READERS - 1)).await;
        (reads, release)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_waiting_together_share_one_append_and_each_is_in_the_log() {
        let (_vault, collections, door, token) = vault();
        let (reads, release) = reads_queued_behind_the_chain(&door, &token).await;
        release.send(()).unwrap();
        for (i, read) in reads.into_iter().enumerate() {
            let record = read.await.unwrap().unwrap();
            assert_eq!(record["name"], format!("Person {i}"));
        }
        // Every read has its own entry, naming its record, in a chain that verifies.
        let entries = audit_entries(collections.as_ref(), None).unwrap();
        let mut ids: Vec<String> = entries
            .iter()
            .filter(|e| e.operation == "read")
            .flat_map(|e| e.ids.clone())
            .collect();
        ids.sort();
        let mut expected: Vec<String> = (0..READERS).map(|i| format!("r{i}")).collect();
        expected.sort();
        assert_eq!(ids, expected);
        assert_eq!(verify_audit(&collections).unwrap(), entries.len());
        // Grouped: the first read's append, then one for all the others (one record per
        // log document, 8 entries each in tests), not one record per read.
        let records: usize = collections
            .collection_names()
            .unwrap()
            .iter()
            .filter(|name| is_audit_shard(name))
            .map(|name| collections.collection_records(name).unwrap().len())
            .sum();
        assert!(
            records <= 1 + READERS.div_ceil(8) + 1,
            "{records} audit records for {READERS} reads: they were not grouped"
        );
    }

    /// Nothing is answered before the commit that makes its audit entry durable: with
    /// every flush held, no read and no write of a view returns; once flushes go on,
    /// all do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_access_is_answered_before_the_commit_that_holds_its_entry() {
        let (vault, collections, door, reader) = vault();
        let scope = Scope::parse(Some("contacts.name"), Some("contacts.name"), &[]).unwrap();
        let (_, writer) =
            create_grant(&collections, &vault.keys, NewGrant::new("editor", scope)).unwrap();
        let hold = vault.store.faults().hold_flushes();
        let contacts = CollectionName::parse("contacts").unwrap();
        let mut accesses = Vec::new();
        for i in 0..8 {
            let (d, token, c) = (door.clone(), reader.clone(), contacts.clone());
            accesses.push(tokio::spawn(async move {
                let id = RecordId::parse(&format!("r{i}")).unwrap();
                d.read_record(&Credentials::local(&token), &c, &id)
                    .await
                    .map(drop)
            }));
            let (d, token, c) = (door.clone(), writer.token.clone(), contacts.clone());
            accesses.push(tokio::spawn(async move {
                let record = json!({"id": format!("r{i}"), "name": format!("Renamed {i}")});
                let record = record.as_object().unwrap().clone();
                d.write(&Credentials::local(&token), &c, record)
                    .await
                    .map(drop)
            }));
        }
        for _ in 0..500 {
            if hold.flusher_waiting() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(hold.flusher_waiting(), "no commit was asked for");
        // Time enough for any access to come back if it did not wait for its commit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answered = accesses.iter().filter(|a| a.is_finished()).count();
        assert_eq!(
            answered, 0,
            "answered while its audit entry was not durable"
        );
        drop(hold);
        for access in accesses {
            access.await.unwrap().unwrap();
        }
        let renamed = collections
            .get(&contacts, &RecordId::parse("r3").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(renamed["name"], "Renamed 3");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_every_read_of_its_group_and_none_is_answered() {
        let (vault, _collections, door, token) = vault();
        let (reads, release) = reads_queued_behind_the_chain(&door, &token).await;
        vault.store.faults().inject(Fault::FlushError);
        release.send(()).unwrap();
        for read in reads {
            let refused = read
                .await
                .unwrap()
                .expect_err("answered without a durable audit");
            assert_eq!(
                refused.code(),
                hearth_protocol::api::ErrorCode::Storage,
                "{refused}"
            );
        }
    }
}
