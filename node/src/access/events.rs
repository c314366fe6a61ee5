//! Event streams of views: what changed inside a grant's scope, pushed as it happens.
//!
//! One pump task follows the collections' change broadcast. For a collection that some
//! stream reads, it works out once per change which records changed (from the
//! document's history since the heads it last saw, not by re-reading the collection)
//! and projects each of them once per feed — a feed is one grant with one effective
//! scope, shared by all of its open streams. A feed's task then delivers what piled up
//! as one batch: it reserves room in every stream's queue, appends one audit entry per
//! stream (per collection in the batch) in a single change, waits for the commit, and
//! only then sends. A stream whose queue is full is too slow and is ended, never
//! waited for. Grants are re-checked whenever `_access` changes and every second, so a
//! revoked or expired grant's streams end within a second of the revocation reaching
//! this node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_protocol::CollectionName;
use hearth_protocol::api::{ErrorCode, ViewRemove, ViewUpsert};
use hearth_protocol::scope::CollectionScope;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use super::AccessError;
use super::audit::{AuditEvent, Operation};
use super::door::{Caller, Door, MAX_STREAMS_PER_GRANT, Proof};
use super::grants::ACCESS;
use crate::clock::now_unix;
use crate::collections::LogPosition;

/// Batches a stream may have waiting; a stream that falls further behind is ended.
const STREAM_QUEUE: usize = 16;
/// Events a feed may have waiting for delivery; beyond that its streams are ended.
const MAX_PENDING: usize = 10_000;
/// Event streams open at once on this node, all grants together: half of the local
/// API's connections ([`crate::server::MAX_CONNECTIONS`]), so that streams held open
/// by services never take the connections the owner, the CLI and other requests
/// need.
pub const MAX_STREAMS: usize = crate::server::MAX_CONNECTIONS / 2;
/// How often grants and token expiries are checked without a change to `_access`.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// One change inside a view.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewChange {
    /// The record (projected) entered the view or changed inside it.
    Upsert { collection: String, record: Value },
    /// The record left the view: removed, or no longer matching the filter.
    Remove { collection: String, id: String },
}

/// A change with its JSON (`ViewUpsert` or `ViewRemove`), encoded once for all the
/// streams that receive it.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewEvent {
    pub change: ViewChange,
    pub json: Arc<str>,
}

impl ViewEvent {
    fn new(change: ViewChange) -> Self {
        let json = match &change {
            ViewChange::Upsert { collection, record } => serde_json::to_string(&ViewUpsert {
                collection: collection.clone(),
                record: record.clone(),
            }),
            ViewChange::Remove { collection, id } => serde_json::to_string(&ViewRemove {
                collection: collection.clone(),
                id: id.clone(),
            }),
        }
        .expect("a view event serializes");
        Self {
            change,
            json: json.into(),
        }
    }

    /// `upsert` or `remove`.
    pub fn kind(&self) -> &'static str {
        match self.change {
            ViewChange::Upsert { .. } => "upsert",
            ViewChange::Remove { .. } => "remove",
        }
    }
}

/// What a stream receives.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// A batch of events, already audited: those of the shared batch from index
    /// `from` on (a stream that joined while the batch was being gathered gets only the
    /// changes made after it joined).
    Events {
        batch: Arc<Vec<ViewEvent>>,
        from: usize,
    },
    /// The stream ends, and why (revoked, expired, fell behind).
    End { code: ErrorCode, message: String },
}

/// An open stream. Dropping it closes the stream.
pub struct Subscription {
    rx: mpsc::Receiver<StreamItem>,
    guard: StreamGuard,
}

impl Subscription {
    /// The next batch, or the end (`None` once the stream is over).
    pub async fn next(&mut self) -> Option<StreamItem> {
        self.rx.recv().await
    }

    /// This stream's number in the audit log.
    pub fn id(&self) -> u64 {
        self.guard.slot
    }
}

struct StreamGuard {
    door: Door,
    feed: Arc<Feed>,
    slot: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.door.0.hub.leave(&self.feed, self.slot);
    }
}

#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
    tasks: Mutex<JoinSet<()>>,
    next_stream: AtomicU64,
    stop: Mutex<Option<watch::Sender<bool>>>,
    /// Joins go through the pump, so that it first catches up on every change made
    /// before the join: a stream gets exactly the changes made after it is live.
    joins: Mutex<Option<mpsc::Sender<Join>>>,
}

/// A request to open a stream, answered by the pump.
struct Join {
    caller: Caller,
    reply: tokio::sync::oneshot::Sender<Result<Subscription, AccessError>>,
}

/// Joins waiting for the pump; more wait for room.
const JOIN_QUEUE: usize = 64;

#[derive(Default)]
struct State {
    feeds: HashMap<(String, String), Arc<Feed>>,
    /// Where in its change log each followed collection was last read. Changed only
    /// by the pump.
    tracked: HashMap<CollectionName, LogPosition>,
    per_grant: HashMap<String, usize>,
    streams: usize,
}

struct Feed {
    key: (String, String),
    caller: Caller,
    slots: Mutex<Vec<Slot>>,
    /// How many streams have joined this feed: each pending event carries the count
    /// at the moment it was worked out, each stream the count it joined at.
    joins: AtomicU64,
    pending: Mutex<Pending>,
    wake: Notify,
    closed: AtomicBool,
}

struct Slot {
    id: u64,
    /// Gets the events worked out from this join on.
    since: u64,
    tx: mpsc::Sender<StreamItem>,
    proof: Proof,
}

#[derive(Default)]
struct Pending {
    /// Each with the feed's join count when it was worked out (never decreasing).
    events: Vec<(u64, ViewEvent)>,
    overflowed: bool,
}

impl Feed {
    /// What this feed's streams read of collection `name`, if anything: looked up at
    /// each change, so a collection made later under a family the grant names is
    /// followed too.
    fn reads(&self, name: &str) -> Option<CollectionScope> {
        self.caller
            .scope
            .collection(name)
            .filter(|c| c.read.is_some())
    }

    /// Ends every stream of this feed with `error`.
    fn end(&self, code: ErrorCode, message: &str) {
        self.closed.store(true, Ordering::SeqCst);
        let slots = std::mem::take(&mut *self.slots.lock().expect("slots lock is never poisoned"));
        for slot in slots {
            // A full queue cannot take the reason; dropping the sender ends it anyway.
            let _ = slot.tx.try_send(StreamItem::End {
                code,
                message: message.to_owned(),
            });
        }
        self.wake.notify_one();
    }
}

impl Hub {
    pub(super) fn start(&self, door: Door) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (join_tx, join_rx) = mpsc::channel(JOIN_QUEUE);
        *self.stop.lock().expect("stop lock is never poisoned") = Some(stop_tx);
        *self.joins.lock().expect("joins lock is never poisoned") = Some(join_tx);
        self.tasks
            .lock()
            .expect("tasks lock is never poisoned")
            .spawn(pump(door, stop_rx, join_rx));
    }

    pub(super) async fn shutdown(&self) {
        if let Some(stop) = self
            .stop
            .lock()
            .expect("stop lock is never poisoned")
            .take()
        {
            let _ = stop.send(true);
        }
        let feeds: Vec<Arc<Feed>> = {
            let mut state = self.state.lock().expect("hub lock is never poisoned");
            state.tracked.clear();
            state.feeds.drain().map(|(_, f)| f).collect()
        };
        for feed in feeds {
            feed.end(ErrorCode::Unavailable, "the node is stopping");
        }
        let mut tasks =
            std::mem::take(&mut *self.tasks.lock().expect("tasks lock is never poisoned"));
        tasks.shutdown().await;
    }

    /// Opens a stream for `caller`: asks the pump, which catches up on what changed
    /// before it registers the stream.
    pub(super) async fn subscribe(&self, caller: Caller) -> Result<Subscription, AccessError> {
        let joins = self
            .joins
            .lock()
            .expect("joins lock is never poisoned")
            .clone()
            .ok_or_else(stopping)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        joins
            .send(Join { caller, reply })
            .await
            .map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }

    /// Registers a stream (on the pump's task, after catching up).
    fn register(&self, door: &Door, caller: Caller) -> Result<Subscription, AccessError> {
        let mut state = self.state.lock().expect("hub lock is never poisoned");
        let open = state.per_grant.get(&caller.grant.id).copied().unwrap_or(0);
        if open >= MAX_STREAMS_PER_GRANT {
            return Err(AccessError::TooManyStreams(open));
        }
        if state.streams >= MAX_STREAMS {
            return Err(AccessError::StreamsFull(state.streams));
        }
        let scope_key = serde_json::to_string(&caller.scope).expect("a scope serializes");
        let key = (caller.grant.id.clone(), scope_key);
        let feed = match state.feeds.get(&key) {
            Some(feed) => feed.clone(),
            None => {
                let feed = Arc::new(Feed {
                    key: key.clone(),
                    caller: caller.clone(),
                    slots: Mutex::new(Vec::new()),
                    joins: AtomicU64::new(0),
                    pending: Mutex::new(Pending::default()),
                    wake: Notify::new(),
                    closed: AtomicBool::new(false),
                });
                state.feeds.insert(key, feed.clone());
                self.tasks
                    .lock()
                    .expect("tasks lock is never poisoned")
                    .spawn(deliver(door.clone(), feed.clone()));
                feed
            }
        };
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let since = feed.joins.fetch_add(1, Ordering::SeqCst) + 1;
        feed.slots
            .lock()
            .expect("slots lock is never poisoned")
            .push(Slot {
                id,
                since,
                tx,
                proof: caller.proof.clone(),
            });
        *state.per_grant.entry(caller.grant.id.clone()).or_default() += 1;
        state.streams += 1;
        Ok(Subscription {
            rx,
            guard: StreamGuard {
                door: door.clone(),
                feed,
                slot: id,
            },
        })
    }

    /// A stream closed: forget it, and its feed once no stream is left.
    fn leave(&self, feed: &Arc<Feed>, slot: u64) {
        let mut state = self.state.lock().expect("hub lock is never poisoned");
        let grant = &feed.key.0;
        if let Some(count) = state.per_grant.get_mut(grant) {
            *count -= 1;
            if *count == 0 {
                state.per_grant.remove(grant);
            }
        }
        state.streams = state.streams.saturating_sub(1);
        let mut slots = feed.slots.lock().expect("slots lock is never poisoned");
        slots.retain(|s| s.id != slot);
        let last = slots.is_empty();
        drop(slots);
        let is_current = state
            .feeds
            .get(&feed.key)
            .is_some_and(|f| Arc::ptr_eq(f, feed));
        if last && is_current {
            // Collections nobody follows any more are forgotten by the pump.
            state.feeds.remove(&feed.key);
            feed.closed.store(true, Ordering::SeqCst);
            feed.wake.notify_one();
        }
    }

    fn feeds(&self) -> Vec<Arc<Feed>> {
        self.state
            .lock()
            .expect("hub lock is never poisoned")
            .feeds
            .values()
            .cloned()
            .collect()
    }

    /// Removes a feed whose grant no longer stands.
    fn close(&self, feed: &Arc<Feed>, code: ErrorCode, message: &str) {
        let mut state = self.state.lock().expect("hub lock is never poisoned");
        if state
            .feeds
            .get(&feed.key)
            .is_some_and(|f| Arc::ptr_eq(f, feed))
        {
            state.feeds.remove(&feed.key);
        }
        drop(state);
        feed.end(code, message);
    }
}

fn stopping() -> AccessError {
    AccessError::Store(crate::store::StoreError::Closed)
}

/// The collections `caller` reads among those that exist (and those it names).
async fn readable(door: &Door, caller: &Caller) -> Result<Vec<CollectionName>, AccessError> {
    let scope = caller.scope.clone();
    door.blocking(move |inner| {
        let existing = inner.collections.names()?;
        scope
            .readable(existing.iter().map(CollectionName::as_str))
            .into_iter()
            .map(|(name, _)| {
                CollectionName::parse(&name).map_err(|e| AccessError::BadRequest(e.to_string()))
            })
            .collect()
    })
    .await
}

/// The one task that turns collection changes into feed events and registers new
/// streams: everything it does happens in order.
async fn pump(door: Door, mut stop: watch::Receiver<bool>, mut joins: mpsc::Receiver<Join>) {
    let mut changes = door.0.collections.subscribe();
    let mut tick = tokio::time::interval(RECHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            join = joins.recv() => match join {
                Some(join) => {
                    let answer = join_feed(&door, join.caller).await;
                    let _ = join.reply.send(answer);
                }
                None => return,
            },
            change = changes.recv() => match change {
                Ok(changed) => on_change(&door, changed.collection).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let followed: Vec<CollectionName> = door.0.hub.state.lock()
                        .expect("hub lock is never poisoned").tracked.keys().cloned().collect();
                    for name in followed {
                        on_change(&door, name).await;
                    }
                    recheck_feeds(&door);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                recheck_feeds(&door);
                forget_unfollowed(&door);
                door.flush_refusals();
            }
        }
    }
}

/// Catches up on what changed in the collections `caller` reads (for the streams
/// already open), starts following the ones nobody followed, then registers the new
/// stream: it gets exactly the changes made after this.
async fn join_feed(door: &Door, caller: Caller) -> Result<Subscription, AccessError> {
    for name in readable(door, &caller).await? {
        let followed = door
            .0
            .hub
            .state
            .lock()
            .expect("hub lock is never poisoned")
            .tracked
            .contains_key(&name);
        if followed {
            on_change(door, name).await;
        } else {
            let at = log_position(door, &name).await?;
            track(door, name, at);
        }
    }
    door.0.hub.register(door, caller)
}

async fn log_position(door: &Door, name: &CollectionName) -> Result<LogPosition, AccessError> {
    let collection = name.clone();
    door.blocking(move |inner| Ok(inner.collections.log_position(&collection)?))
        .await
}

/// Follows `name` from `at`, unless it is followed already; where it is followed from.
fn track(door: &Door, name: CollectionName, at: LogPosition) -> LogPosition {
    *door
        .0
        .hub
        .state
        .lock()
        .expect("hub lock is never poisoned")
        .tracked
        .entry(name)
        .or_insert(at)
}

/// Stops following collections no open stream reads.
fn forget_unfollowed(door: &Door) {
    let mut state = door.0.hub.state.lock().expect("hub lock is never poisoned");
    let feeds: Vec<Arc<Feed>> = state.feeds.values().cloned().collect();
    state
        .tracked
        .retain(|name, _| feeds.iter().any(|f| f.reads(name.as_str()).is_some()));
}

async fn on_change(door: &Door, name: CollectionName) {
    if name.as_str() == ACCESS {
        recheck_feeds(door);
        return;
    }
    let tracked = door
        .0
        .hub
        .state
        .lock()
        .expect("hub lock is never poisoned")
        .tracked
        .get(&name)
        .cloned();
    let since = match tracked {
        Some(since) => since,
        // A collection made after the streams opened, under a family one of them
        // reads: every change it has is new to them.
        None if door
            .0
            .hub
            .feeds()
            .iter()
            .any(|f| f.reads(name.as_str()).is_some()) =>
        {
            match log_position(door, &name).await {
                Ok(at) => track(door, name.clone(), LogPosition { seq: 0, ..at }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow a new collection for event streams");
                    return;
                }
            }
        }
        None => return,
    };
    let collection = name.clone();
    let changed = door
        .blocking(move |inner| {
            let collections = &inner.collections;
            Ok(match collections.changes_after(&collection, since)? {
                Some(found) => found,
                // Only if over `LOG_KEEP` changes came between two of its turns: the
                // streams miss them, and follow on from the log's end.
                None => {
                    tracing::warn!(collection = %collection, "event streams missed changes older than the change log keeps");
                    (collections.log_position(&collection)?, Vec::new())
                }
            })
        })
        .await;
    let (at, changes) = match changed {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "cannot work out what changed for event streams");
            return;
        }
    };
    let feeds: Vec<Arc<Feed>> = {
        let mut state = door.0.hub.state.lock().expect("hub lock is never poisoned");
        match state.tracked.get_mut(&name) {
            Some(tracked) => *tracked = at,
            None => return,
        }
        state
            .feeds
            .values()
            .filter(|f| f.reads(name.as_str()).is_some())
            .cloned()
            .collect()
    };
    if changes.is_empty() {
        return;
    }
    for feed in feeds {
        let scope = feed.reads(name.as_str()).expect("filtered on reading it");
        let mut events = Vec::new();
        for change in &changes {
            let before = change.before.as_ref().and_then(|r| scope.project(r));
            let after = change.after.as_ref().and_then(|r| scope.project(r));
            if before == after {
                continue;
            }
            events.push(ViewEvent::new(match after {
                Some(record) => ViewChange::Upsert {
                    collection: name.to_string(),
                    record: Value::Object(record),
                },
                None => ViewChange::Remove {
                    collection: name.to_string(),
                    id: change.id.clone(),
                },
            }));
        }
        if events.is_empty() {
            continue;
        }
        let epoch = feed.joins.load(Ordering::SeqCst);
        let mut pending = feed.pending.lock().expect("pending lock is never poisoned");
        if pending.events.len() + events.len() > MAX_PENDING {
            pending.overflowed = true;
            pending.events.clear();
        } else {
            pending
                .events
                .extend(events.into_iter().map(|e| (epoch, e)));
        }
        drop(pending);
        feed.wake.notify_one();
    }
}

/// Ends the streams of grants that no longer stand, and streams whose own token
/// expired.
fn recheck_feeds(door: &Door) {
    let now = now_unix();
    for feed in door.0.hub.feeds() {
        if let Err(e) = door.recheck(&feed.caller) {
            door.0.hub.close(&feed, e.code(), &e.to_string());
            continue;
        }
        let mut slots = feed.slots.lock().expect("slots lock is never poisoned");
        slots.retain(|slot| match slot.proof.check_time(now) {
            Ok(()) => true,
            Err(e) => {
                let _ = slot.tx.try_send(StreamItem::End {
                    code: e.code(),
                    message: e.to_string(),
                });
                false
            }
        });
    }
}

/// Delivers a feed's batches until it closes.
async fn deliver(door: Door, feed: Arc<Feed>) {
    loop {
        feed.wake.notified().await;
        if feed.closed.load(Ordering::SeqCst) {
            return;
        }
        let Pending { events, overflowed } =
            std::mem::take(&mut *feed.pending.lock().expect("pending lock is never poisoned"));
        if overflowed {
            door.0.hub.close(
                &feed,
                ErrorCode::Unavailable,
                "the stream fell too far behind the changes; open it again",
            );
            return;
        }
        if events.is_empty() {
            continue;
        }
        let epochs: Vec<u64> = events.iter().map(|(epoch, _)| *epoch).collect();
        let batch: Arc<Vec<ViewEvent>> = Arc::new(events.into_iter().map(|(_, e)| e).collect());
        // Each stream's share: the events worked out since it joined (a suffix).
        let mut permits = Vec::new();
        {
            let mut slots = feed.slots.lock().expect("slots lock is never poisoned");
            // A stream whose queue is full is too slow: it is ended, not waited for.
            slots.retain(|slot| {
                let from = epochs.partition_point(|&e| e < slot.since);
                if from == batch.len() {
                    return true;
                }
                match slot.tx.clone().try_reserve_owned() {
                    Ok(permit) => {
                        permits.push((slot.id, from, permit));
                        true
                    }
                    Err(_) => false,
                }
            });
        }
        if permits.is_empty() {
            continue;
        }
        let audit = audit_batch(
            &feed,
            &batch,
            permits.iter().map(|(id, from, _)| (*id, *from)),
        );
        if let Err(e) = door.audited(audit).await {
            // Nothing is sent that the audit log does not show.
            tracing::warn!(error = %e, "cannot audit an event batch; ending its streams");
            door.0.hub.close(&feed, e.code(), &e.to_string());
            return;
        }
        for (_, from, permit) in permits {
            permit.send(StreamItem::Events {
                batch: batch.clone(),
                from,
            });
        }
    }
}

/// One audit entry per collection for the streams of the grant that get the same
/// share of the batch (most streams of a feed do): `stream` names the first of them
/// and `count` how many got it, so a hundred streams of one grant cost one entry a
/// batch, not a hundred.
fn audit_batch(
    feed: &Feed,
    batch: &[ViewEvent],
    streams: impl Iterator<Item = (u64, usize)>,
) -> Vec<AuditEvent> {
    // Streams by the point of the batch their share starts at: (first stream, count).
    let mut shares: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for (stream, from) in streams {
        let share = shares.entry(from).or_insert((stream, 0));
        share.0 = share.0.min(stream);
        share.1 += 1;
    }
    let mut events = Vec::new();
    for (from, (first, count)) in shares {
        for (collection, (records, fields)) in tally(feed, &batch[from..]) {
            events.push(AuditEvent {
                records,
                fields: fields.into_iter().collect(),
                stream: Some(first),
                count: (count > 1).then_some(count),
                ..feed.caller.grant.event(Operation::Subscribe, collection)
            });
        }
    }
    events
}

/// Per collection: how many records the events carry, and which fields.
fn tally<'a>(feed: &Feed, events: &'a [ViewEvent]) -> BTreeMap<&'a str, (usize, BTreeSet<String>)> {
    let mut per_collection: BTreeMap<&str, (usize, BTreeSet<String>)> = BTreeMap::new();
    for event in events {
        match &event.change {
            ViewChange::Upsert { collection, record } => {
                let slot = per_collection.entry(collection).or_default();
                slot.0 += 1;
                if let (Some(record), Some(scope)) = (record.as_object(), feed.reads(collection)) {
                    slot.1.extend(scope.field_names(record));
                }
            }
            ViewChange::Remove { collection, .. } => {
                per_collection.entry(collection).or_default().0 += 1
            }
        }
    }
    per_collection
}
