//! Record writes to one collection (the owner's, a view's, a DAV client's), persisted
//! together.
//!
//! A write persisted alone pays for a saved change, a sealed value and an index batch
//! of its own, and the collection's writers wait for each other under its lock. Writes
//! that arrive while another is being applied wait in the collection's queue instead,
//! without holding a thread, and the next drain takes them all: each is applied as its
//! own Automerge change (a refused one is rolled back alone), then one persist writes
//! them together. Each is answered only after that persist, with its own result, or
//! with the persist's failure, which then fails every write of the group. Durable, as
//! any write, after [`Store::commit`](crate::store::Store::commit).
//!
//! The write that finds nobody draining drains on its own task, so a lone write costs
//! what it did before; writes that queued meanwhile are drained on the blocking pool,
//! until the queue is empty. A drain that does not finish (a panic, a runtime shutting
//! down) drops what is still queued, and those writes fail as if the store had closed.

use std::collections::HashMap;
use std::sync::Arc;

use hearth_protocol::{CollectionName, RecordId};
use serde_json::{Map, Value as Json};
use tokio::sync::oneshot;

use super::{
    Abandon, Collection, CollectionError, Collections, PartName, RecordWrite, apply_checked,
};
use crate::records;

/// Why a text edit written with [`Collections::edit_text_combined`] was refused.
#[derive(Debug)]
pub enum EditRefused<E> {
    /// There is no such record.
    Missing,
    /// An edit does not apply (out of range, or the field is not text).
    Edit(String),
    /// The record with the edits was refused.
    Decided(E),
}
use crate::store::StoreError;

/// The most writes persisted together.
const MAX_GROUP: usize = 128;

/// The writes waiting for one collection.
#[derive(Default)]
pub(super) struct Queue {
    jobs: Vec<Job>,
    /// Whether a drain is running (it takes what is queued before it stops).
    draining: bool,
}

/// One waiting write: the record it touches and how to apply it.
struct Job {
    id: String,
    apply: Apply,
}

/// Applies a write to its record (given by id) in the collection, or answers it with
/// the failure that kept it from the collection; returns how to answer it once
/// persisted, if it wrote.
type Apply =
    Box<dyn FnOnce(Result<&mut Collection, &CollectionError>, &str) -> Option<Answer> + Send>;
/// Answers an applied write with the outcome of the persist that covers it.
type Answer = Box<dyn FnOnce(Result<(), &CollectionError>) + Send>;

impl Collections {
    /// Reads record `id` (without its `"id"`) and, under the collection's lock, lets
    /// `decide` say what to write — so a check and the change it allows see the same
    /// record — persisted together with the writes to the same collection waiting at
    /// the same moment (see the module's doc). Returns whether the record existed and
    /// the value `decide` gave back beside its write, or `decide`'s refusal (nothing
    /// written). Durable only after [`Store::commit`](crate::store::Store::commit).
    pub async fn write_combined<T, E>(
        self: &Arc<Self>,
        name: &CollectionName,
        id: &RecordId,
        decide: impl FnOnce(Option<&Map<String, Json>>) -> Result<(RecordWrite, T), E> + Send + 'static,
    ) -> Result<Result<(bool, T), E>, CollectionError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        self.enqueue(name, id, move |doc, record| {
            apply_checked(doc, record, decide)
        })
        .await
    }

    /// As [`Collections::write_combined`], after applying `edits` to text field `field`
    /// of the record in the same change: `decide` sees the record with the edits, and
    /// if it refuses (or an edit is out of range: `Err(Edit)`), neither the edits nor
    /// its write are kept. How a text edit and the step that keeps a contact's or
    /// event's fields in step with it are one write, all or nothing.
    pub async fn edit_text_combined<T, E>(
        self: &Arc<Self>,
        name: &CollectionName,
        id: &RecordId,
        field: String,
        edits: Vec<records::TextEdit>,
        decide: impl FnOnce(Option<&Map<String, Json>>) -> Result<(RecordWrite, T), E> + Send + 'static,
    ) -> Result<Result<(bool, T), EditRefused<E>>, CollectionError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        self.enqueue(name, id, move |doc, record| {
            match records::edit_text(doc, record, &field, &edits) {
                Ok(true) => {}
                Ok(false) => return Err(Abandon::Refused(EditRefused::Missing)),
                Err(records::TextEditError::Automerge(e)) => return Err(Abandon::Automerge(e)),
                Err(e) => return Err(Abandon::Refused(EditRefused::Edit(e.to_string()))),
            }
            apply_checked(doc, record, decide).map_err(|e| match e {
                Abandon::Refused(e) => Abandon::Refused(EditRefused::Decided(e)),
                Abandon::Automerge(e) => Abandon::Automerge(e),
            })
        })
        .await
    }

    /// Queues `apply` (given the document and the record's id) as one write to the
    /// collection and answers it once the persist that covers it is done.
    async fn enqueue<T, E>(
        self: &Arc<Self>,
        name: &CollectionName,
        id: &RecordId,
        apply_one: impl FnOnce(&mut automerge::AutoCommit, &str) -> Result<(bool, T), Abandon<E>>
        + Send
        + 'static,
    ) -> Result<Result<(bool, T), E>, CollectionError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let apply: Apply = Box::new(move |collection, record| {
            let c = match collection {
                Ok(c) => c,
                Err(e) => {
                    drop(answer.send(Err(e.shared())));
                    return None;
                }
            };
            // A panic while deciding (untrusted text a parser chokes on) fails this
            // write alone: its half-made change is rolled back, the lock stays usable
            // and the writes beside it go on.
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                apply_one(&mut c.doc, record)
            }));
            let Ok(applied) = applied else {
                c.doc.rollback();
                tracing::error!(collection = %c.name, "a write panicked; it is refused and the collection goes on");
                drop(answer.send(Err(CollectionError::Shared {
                    code: hearth_protocol::api::ErrorCode::Internal,
                    message: "the write failed inside the node; nothing was written".into(),
                })));
                return None;
            };
            match applied {
                Ok(done) => Some(Box::new(move |persisted: Result<(), &CollectionError>| {
                    drop(answer.send(persisted.map(|()| Ok(done)).map_err(|e| e.shared())));
                })),
                Err(abandoned) => {
                    c.doc.rollback();
                    drop(answer.send(match abandoned {
                        Abandon::Refused(e) => Ok(Err(e)),
                        Abandon::Automerge(e) => Err(c.automerge(e)),
                    }));
                    None
                }
            }
        });
        let job = Job {
            id: id.as_str().to_owned(),
            apply,
        };
        let lead = {
            let mut queues = self.write_queues();
            let queue = queues.entry(name.clone()).or_default();
            queue.jobs.push(job);
            !std::mem::replace(&mut queue.draining, true)
        };
        if lead {
            let drain = Drain {
                collections: self.clone(),
                name: name.clone(),
                done: false,
            };
            drain.first();
        }
        answered
            .await
            .unwrap_or(Err(CollectionError::Store(StoreError::Closed)))
    }

    fn write_queues(&self) -> std::sync::MutexGuard<'_, HashMap<CollectionName, Queue>> {
        self.writes
            .lock()
            .expect("write queue lock is never poisoned")
    }

    /// Takes up to [`MAX_GROUP`] queued writes; `None` (and nobody draining) if none.
    fn take_group(&self, name: &CollectionName) -> Option<Vec<Job>> {
        let mut queues = self.write_queues();
        let queue = queues.get_mut(name)?;
        if queue.jobs.is_empty() {
            queues.remove(name);
            return None;
        }
        let rest = queue.jobs.split_off(queue.jobs.len().min(MAX_GROUP));
        Some(std::mem::replace(&mut queue.jobs, rest))
    }

    /// Applies `jobs` (writes to collection `name`) one by one, each to the part that
    /// holds its record and as a change of its own, and persists the parts they
    /// changed together, in one store transaction.
    fn write_group(&self, name: &CollectionName, jobs: Vec<Job>) {
        let mut parts: Vec<PartName> = jobs.iter().map(|j| self.part_of(name, &j.id)).collect();
        parts.sort();
        parts.dedup();
        let mut jobs = Some(jobs);
        let mut answers = Vec::new();
        let persisted = self.with_all(&parts, |guards| {
            let mut touched: Vec<Vec<String>> = vec![Vec::new(); parts.len()];
            for job in jobs.take().into_iter().flatten() {
                let at = parts
                    .binary_search(&self.part_of(name, &job.id))
                    .expect("every write's part is locked");
                let c = &mut *guards[at];
                if let Some(answer) = (job.apply)(Ok(c), &job.id) {
                    // Its own change: a later write rolled back leaves it.
                    c.doc.commit();
                    answers.push(answer);
                    touched[at].push(job.id);
                }
            }
            for ids in &mut touched {
                ids.sort_unstable();
                ids.dedup();
            }
            let touched: Vec<Vec<&str>> = touched
                .iter()
                .map(|ids| ids.iter().map(String::as_str).collect())
                .collect();
            self.persist_together(guards, &touched)
        });
        if let Err(e) = &persisted {
            // The collection could not be used (nothing was applied), or the persist failed.
            for job in jobs.into_iter().flatten() {
                (job.apply)(Err(e), &job.id);
            }
        }
        for answer in answers {
            answer(persisted.as_ref().map(|_| ()));
        }
    }
}

/// The one drain of a collection's queue. Dropped before it finished, it drops what
/// is still queued (those writes fail) and frees the queue for the next write.
struct Drain {
    collections: Arc<Collections>,
    name: CollectionName,
    done: bool,
}

impl Drain {
    /// One group on the caller's thread; the rest, if any, on the blocking pool.
    fn first(mut self) {
        if let Some(jobs) = self.collections.take_group(&self.name) {
            self.collections.write_group(&self.name, jobs);
        }
        let more = {
            let mut queues = self.collections.write_queues();
            match queues.get(&self.name) {
                Some(queue) if !queue.jobs.is_empty() => true,
                _ => {
                    queues.remove(&self.name);
                    false
                }
            }
        };
        if more {
            // Dropped unrun if the runtime is shutting down: then `Drop` fails them.
            drop(tokio::task::spawn_blocking(move || self.rest()));
        } else {
            self.done = true;
        }
    }

    fn rest(mut self) {
        while let Some(jobs) = self.collections.take_group(&self.name) {
            self.collections.write_group(&self.name, jobs);
        }
        self.done = true;
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if !self.done {
            // Dropping the jobs drops their answers: each waiting write fails.
            drop(self.collections.write_queues().remove(&self.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collections::NAME_DOMAIN;
    use crate::collections::tests::{doc_kinds, one_part};
    use crate::testutil::TestVault;
    use serde_json::json;
    use std::time::{Duration, Instant};
    use tokio::task::JoinHandle;

    type Written = Result<Result<(bool, ()), String>, CollectionError>;

    fn notes() -> CollectionName {
        CollectionName::parse("notes").unwrap()
    }

    /// Writes `{"n": i}` to record `r{i}` of notes; the write of r7 is refused.
    fn write(c: &Arc<Collections>, i: usize) -> JoinHandle<Written> {
        let c = c.clone();
        let id = RecordId::parse(&format!("r{i}")).unwrap();
        tokio::spawn(async move {
            c.write_combined(&notes(), &id, move |_| {
                if i == 7 {
                    return Err(format!("r{i} refused"));
                }
                let record = json!({ "n": i }).as_object().unwrap().clone();
                Ok((RecordWrite::Put(record), ()))
            })
            .await
        })
    }

    /// Waits (on this thread, which holds no runtime worker) until `done`.
    fn wait_until(done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Starts 64 writes to notes while the test holds the collection: the first takes
    /// the queue and waits for the collection, the other 63 queue behind it. Returns
    /// them once all are queued, the collection still held.
    fn queue_64(c: &Arc<Collections>) -> Vec<JoinHandle<Written>> {
        let mut writes = vec![write(c, 0)];
        wait_until(|| {
            c.write_queues()
                .get(&notes())
                .is_some_and(|q| q.draining && q.jobs.is_empty())
        });
        writes.extend((1..64).map(|i| write(c, i)));
        wait_until(|| {
            c.write_queues()
                .get(&notes())
                .is_some_and(|q| q.jobs.len() == 63)
        });
        writes
    }

    /// A write whose `decide` panics (as a parser choking on untrusted text would)
    /// fails alone: the writes queued beside it are persisted, the collection stays
    /// usable, and nothing of the panicking write is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_write_fails_alone_and_the_collection_goes_on() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        let collection = c.load(&PartName::only(notes())).unwrap();
        let held = collection.lock().unwrap();
        let before = write(&c, 1);
        wait_until(|| {
            c.write_queues()
                .get(&notes())
                .is_some_and(|q| q.draining && q.jobs.is_empty())
        });
        let boom = {
            let c = c.clone();
            tokio::spawn(async move {
                let decide = |_: Option<&Map<String, Json>>| -> Result<(RecordWrite, ()), String> {
                    panic!("a parser choked")
                };
                c.write_combined(&notes(), &RecordId::parse("boom").unwrap(), decide)
                    .await
            })
        };
        let after = write(&c, 2);
        wait_until(|| {
            c.write_queues()
                .get(&notes())
                .is_some_and(|q| q.jobs.len() == 2)
        });
        drop(held);
        assert!(matches!(before.await.unwrap(), Ok(Ok((false, ())))));
        let boom = boom.await.expect("the writer's task itself does not panic");
        assert!(
            boom.is_err(),
            "the panicking write is answered with an error"
        );
        assert!(matches!(after.await.unwrap(), Ok(Ok((false, ())))));
        for i in [1, 2] {
            let id = RecordId::parse(&format!("r{i}")).unwrap();
            assert!(c.get(&notes(), &id).unwrap().is_some());
        }
        let boom_id = RecordId::parse("boom").unwrap();
        assert!(c.get(&notes(), &boom_id).unwrap().is_none());
        assert!(matches!(write(&c, 3).await.unwrap(), Ok(Ok((false, ())))));
    }

    /// A panic while a collection's lock is held (anywhere, not only in a write's
    /// `decide`) poisons the lock: the next use drops that copy and reads the
    /// collection from the disk, where every persisted write is, instead of failing
    /// until a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poisoned_collection_is_read_again_from_the_disk() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        assert!(matches!(write(&c, 1).await.unwrap(), Ok(Ok((false, ())))));
        let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.with(
                &PartName::only(notes()),
                |_| -> Result<(), CollectionError> {
                    panic!("a request panicked while holding the collection")
                },
            )
        }));
        assert!(poisoned.is_err());
        assert!(
            c.load(&PartName::only(notes())).unwrap().is_poisoned(),
            "the test poisoned the lock"
        );
        assert!(matches!(write(&c, 2).await.unwrap(), Ok(Ok((false, ())))));
        assert_eq!(c.records(&notes()).unwrap().len(), 2);
        assert!(!c.load(&PartName::only(notes())).unwrap().is_poisoned());
    }

    /// In a collection kept in parts, the writes that wait together go to several
    /// parts and are still persisted in one store transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_waiting_together_over_parts_are_one_transaction() {
        let vault = TestVault::new();
        let c = Arc::new(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        c.set_user_fan_out(8);
        let collection = c.load(&c.part_of(&notes(), "r0")).unwrap();
        let held = collection.lock().unwrap();
        let writes = queue_64(&c);
        // The first write alone, then the 63 queued over 8 parts: two store writes
        // if the group is one transaction; a third would fail.
        vault
            .store
            .faults()
            .inject(crate::store::Fault::WriteErrorAfter(2));
        drop(held);
        for (i, write) in writes.into_iter().enumerate() {
            let written = write.await.unwrap();
            if i == 7 {
                assert_eq!(written.unwrap(), Err("r7 refused".to_owned()));
            } else {
                assert_eq!(written.unwrap(), Ok((false, ())), "r{i}");
            }
        }
        vault.store.faults().clear();
        assert_eq!(c.count(&notes()).unwrap(), 63);
    }

    /// 64 writes that wait together: the first is persisted alone (it drained the
    /// queue before the others came), the other 63 together, as one saved change. Each
    /// is answered with its own outcome, a refused one is left out alone, and every
    /// other write is there after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_waiting_together_are_persisted_once_and_each_is_answered() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        let key = vault.store.name_key(NAME_DOMAIN, "notes");
        let collection = c.load(&PartName::only(notes())).unwrap();
        let held = collection.lock().unwrap();
        let writes = queue_64(&c);
        drop(held);
        for (i, write) in writes.into_iter().enumerate() {
            let written = write.await.unwrap().unwrap();
            if i == 7 {
                assert_eq!(written, Err("r7 refused".to_owned()));
            } else {
                assert_eq!(written, Ok((false, ())), "r{i}");
            }
        }
        assert_eq!(
            doc_kinds(&vault.store, &key).len(),
            2,
            "64 writes, two persists: the first alone, the queued ones together"
        );
        // The drain answers first, then finds the queue empty and frees it.
        wait_until(|| c.write_queues().is_empty());
        vault.store.commit().await.unwrap();
        drop((c, collection));

        let vault = vault.reopen().await;
        let c = one_part(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        for i in 0..64 {
            let id = RecordId::parse(&format!("r{i}")).unwrap();
            let expected = (i != 7).then(|| json!({ "id": format!("r{i}"), "n": i }));
            assert_eq!(c.get(&notes(), &id).unwrap(), expected, "r{i}");
        }
    }

    /// A persist that fails fails every write of its group with the store's error:
    /// none is answered as written, none is in the collection, and the next write
    /// succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_persist_fails_every_write_of_its_group() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        let collection = c.load(&PartName::only(notes())).unwrap();
        let held = collection.lock().unwrap();
        let writes = queue_64(&c);
        vault.store.faults().inject(crate::store::Fault::WriteError);
        drop(held);
        for (i, write) in writes.into_iter().enumerate() {
            match write.await.unwrap() {
                Ok(Err(refused)) if i == 7 => assert_eq!(refused, "r7 refused"),
                Err(e) => {
                    assert!(e.to_string().contains("injected write error"), "r{i}: {e}");
                    assert_eq!(e.code(), hearth_protocol::api::ErrorCode::Storage);
                }
                other => panic!("r{i}: {other:?}"),
            }
        }
        vault.store.faults().clear();
        assert!(c.records(&notes()).unwrap().is_empty());
        assert_eq!(write(&c, 100).await.unwrap().unwrap(), Ok((false, ())));
        assert_eq!(c.records(&notes()).unwrap().len(), 1);
    }

    /// A drain dropped before it finished (a panic, a runtime shutting down) fails the
    /// writes still queued instead of leaving them waiting, and frees the queue.
    #[tokio::test]
    async fn writes_left_by_a_drain_that_did_not_finish_fail_and_the_queue_is_freed() {
        let vault = TestVault::new();
        let c = Arc::new(one_part(
            Collections::open(vault.store.clone(), [1; 16]).unwrap(),
        ));
        // As if a drain were running: the write queues behind it.
        c.write_queues().entry(notes()).or_default().draining = true;
        let waiting = write(&c, 1);
        while c
            .write_queues()
            .get(&notes())
            .is_some_and(|q| q.jobs.is_empty())
        {
            tokio::task::yield_now().await;
        }
        drop(Drain {
            collections: c.clone(),
            name: notes(),
            done: false,
        });
        assert!(matches!(
            waiting.await.unwrap(),
            Err(CollectionError::Store(StoreError::Closed))
        ));
        assert!(c.write_queues().is_empty());
        assert_eq!(write(&c, 2).await.unwrap().unwrap(), Ok((false, ())));
    }
}
