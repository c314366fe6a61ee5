//! The grant promise as a set relation, checked against a model: random records, random
//! grants (read fields, write fields, a filter, nested paths) and random service
//! operations (read one, read all, write, create, subscribe) through a real node's
//! view routes. After every step the service has seen exactly what the model projects,
//! and the vault is exactly what the model says — it differs from before only inside
//! the write scope and the filter.
//!
//! Records may name blobs (two real blobs, written `@b0` and `@b1` in the model): the
//! service reads a blob exactly when a record it can read names it in a field it reads,
//! and that naming is not one the service itself tried to add to that record.
//!
//! A grant names the collection or its family (`things*`); a collection beside the
//! family (`thingsa`) is never reached.
//!
//! The model below is written independently of `hearth_protocol::scope`: it is the
//! rule as DESIGN.md states it, not the code that implements it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use hearth_node::{Node, NodeConfig, NodeHandle};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const COLLECTION: &str = "things-a";
/// The family a grant may name instead of [`COLLECTION`].
const FAMILY: &str = "things*";
/// A collection beside the family (`things*` does not cover it), with a record no
/// grant here may see.
const BESIDE: &str = "thingsa";
const IDS: [&str; 5] = ["r0", "r1", "r2", "r3", "r4"];
/// How the model writes the two blobs; the node sees their real ids.
const BLOBS: [&str; 2] = ["@b0", "@b1"];

type Record = Map<String, Value>;

/// Granted fields: all of them, or these dotted paths.
#[derive(Debug, Clone)]
enum Granted {
    All,
    Only(Vec<Vec<String>>),
}

impl Granted {
    fn covers(&self, path: &[String]) -> bool {
        match self {
            Granted::All => true,
            Granted::Only(paths) => paths.iter().any(|g| path.starts_with(g)),
        }
    }

    /// The shortest granted path `path` lies within.
    fn grant_of(&self, path: &[String]) -> Option<Vec<String>> {
        match self {
            Granted::All => None,
            Granted::Only(paths) => paths
                .iter()
                .filter(|g| path.starts_with(g))
                .min_by_key(|g| g.len())
                .cloned(),
        }
    }

    fn arg(&self, family: bool) -> String {
        let key = if family { FAMILY } else { COLLECTION };
        match self {
            Granted::All => key.to_owned(),
            Granted::Only(paths) => paths
                .iter()
                .map(|p| format!("{key}.{}", p.join(".")))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

#[derive(Debug, Clone)]
struct GrantSpec {
    read: Option<Granted>,
    write: Option<Granted>,
    /// `tag=work` when set.
    filtered: bool,
    /// The grant names the family `things*`, not the collection.
    family: bool,
}

#[derive(Debug, Clone)]
enum Op {
    ReadOne(usize),
    ReadAll,
    /// A service write: the record id (or none: a new record) and the body.
    Write(Option<usize>, Record),
    /// The owner changes a record (so the model's state moves under the service).
    Owner(usize, Record),
    /// Open an event stream, let the owner change a record, read what arrives.
    Subscribe(usize, Record),
    /// The service asks for a blob's bytes.
    ReadBlob(usize),
}

struct Model {
    grant: GrantSpec,
    records: BTreeMap<String, Record>,
    /// (record, blob): namings the service tried to add (refused writes included: a
    /// naming it tried to make never counts for it).
    own: BTreeSet<(String, String)>,
}

/// Every blob `value` names (a string that is one of [`BLOBS`], at any depth).
fn blobs_in(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if BLOBS.contains(&s.as_str()) => {
            out.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| blobs_in(v, out)),
        Value::Object(map) => map.values().for_each(|v| blobs_in(v, out)),
        _ => {}
    }
}

fn blobs_of(record: &Record) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (key, value) in record {
        if key != "id" {
            blobs_in(value, &mut out);
        }
    }
    out
}

/// `value` with every string `from[i]` replaced by `to[i]`.
fn swap(value: &Value, from: &[String], to: &[String]) -> Value {
    match value {
        Value::String(s) => match from.iter().position(|f| f == s) {
            Some(i) => Value::String(to[i].clone()),
            None => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(|v| swap(v, from, to)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), swap(v, from, to)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn lookup<'a>(record: &'a Record, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = record.get(first)?;
    for part in rest {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn insert_at(out: &mut Record, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            out.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let child = out
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = child {
                insert_at(map, rest, value);
            }
        }
    }
}

fn leaves(map: &Record, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (key, value) in map {
        prefix.push(key.clone());
        match value {
            Value::Object(inner) if !inner.is_empty() => leaves(inner, prefix, out),
            _ => out.push(prefix.clone()),
        }
        prefix.pop();
    }
}

fn merge(target: &mut Record, patch: &Record) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                merge(slot.as_object_mut().expect("made an object"), inner);
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

impl Model {
    fn visible(&self, record: &Record) -> bool {
        if !self.grant.filtered {
            return true;
        }
        match record.get("tag") {
            Some(Value::Array(items)) => items.contains(&json!("work")),
            Some(v) => *v == json!("work"),
            None => false,
        }
    }

    fn project(&self, id: &str, record: &Record) -> Option<Value> {
        let read = self.grant.read.as_ref()?;
        if !self.visible(record) {
            return None;
        }
        let mut out = Map::new();
        out.insert("id".into(), json!(id));
        match read {
            Granted::All => out.extend(record.clone()),
            Granted::Only(paths) => {
                for path in paths {
                    if let Some(v) = lookup(record, path) {
                        insert_at(&mut out, path, v.clone());
                    }
                }
            }
        }
        Some(Value::Object(out))
    }

    /// Whether the service may read blob `blob`: a record it can read names it in a
    /// field it reads, and not by the service's own doing.
    fn blob_readable(&self, blob: &str) -> bool {
        self.records.iter().any(|(id, record)| {
            !self.own.contains(&(id.clone(), blob.to_owned()))
                && self.project(id, record).is_some_and(|view| {
                    let mut view = view.as_object().cloned().unwrap_or_default();
                    view.remove("id");
                    blobs_of(&view).contains(blob)
                })
        })
    }

    /// Notes the namings a service write tries to add to record `id`.
    fn note_attempt(&mut self, id: &str, patch: &Record) {
        if self.grant.write.is_none() {
            return;
        }
        let before = self.records.get(id).map(blobs_of).unwrap_or_default();
        for blob in blobs_of(patch).difference(&before) {
            self.own.insert((id.to_owned(), blob.clone()));
        }
    }

    fn view(&self) -> Vec<Value> {
        self.records
            .iter()
            .filter_map(|(id, r)| self.project(id, r))
            .collect()
    }

    /// What a service write should do: `Ok(after)` or the status it is refused with.
    fn write(&self, id: Option<&str>, patch: &Record) -> Result<Record, u16> {
        let write = self.grant.write.as_ref().ok_or(403u16)?;
        let mut paths = Vec::new();
        leaves(patch, &mut Vec::new(), &mut paths);
        if paths.iter().any(|p| !write.covers(p)) {
            return Err(403);
        }
        let before = id.and_then(|id| self.records.get(id));
        match (id, before) {
            (Some(_), None) if self.grant.filtered => return Err(404),
            (Some(_), Some(b)) if !self.visible(b) => return Err(404),
            _ => {}
        }
        if let Some(before) = before {
            for path in &paths {
                if let Some(granted) = write.grant_of(path) {
                    for depth in 1..granted.len() {
                        if lookup(before, &granted[..depth]).is_some_and(|v| !v.is_object()) {
                            return Err(403);
                        }
                    }
                }
            }
        }
        let mut after = before.cloned().unwrap_or_default();
        merge(&mut after, patch);
        if !self.visible(&after) {
            return Err(403);
        }
        Ok(after)
    }
}

// ---- strategies ----

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (0i64..3).prop_map(Value::from),
        3 => Just(json!("work")),
        3 => Just(json!("home")),
        3 => Just(json!(["work", "x"])),
        2 => (0..BLOBS.len()).prop_map(|b| json!(BLOBS[b])),
        1 => (0..BLOBS.len()).prop_map(|b| json!({"blob": BLOBS[b]})),
    ]
}

fn meta() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => proptest::collection::btree_map(prop_oneof![Just("x"), Just("y")], value(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        3 => Just(json!("a plain string")),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(prop_oneof![Just(json!("work")), Just(json!("home"))]),
        proptest::option::weighted(0.8, meta()),
    )
        .prop_map(|(a, b, tag, meta)| {
            let mut r = Map::new();
            for (k, v) in [("a", a), ("b", b), ("tag", tag), ("meta", meta)] {
                if let Some(v) = v {
                    r.insert(k.to_owned(), v);
                }
            }
            r
        })
}

/// A service's body: some fields set, some removed (`null`), nested writes. Each field
/// is there less often than not, so bodies that fit a narrow grant come up.
fn patch() -> impl Strategy<Value = Record> {
    let field = prop_oneof![value(), Just(Value::Null)];
    (
        proptest::option::weighted(0.35, field.clone()),
        proptest::option::weighted(0.35, field),
        proptest::option::weighted(0.35, prop_oneof![Just(json!("work")), Just(json!("home"))]),
        proptest::option::weighted(
            0.5,
            prop_oneof![
                3 => value().prop_map(|v| json!({"x": v})),
                1 => Just(json!({"y": 1})),
                1 => Just(Value::Null),
            ],
        ),
    )
        .prop_map(|(a, b, tag, meta)| {
            let mut r = Map::new();
            for (k, v) in [("a", a), ("b", b), ("tag", tag), ("meta", meta)] {
                if let Some(v) = v {
                    r.insert(k.to_owned(), v);
                }
            }
            r
        })
}

fn granted(choices: &'static [&'static str]) -> impl Strategy<Value = Option<Granted>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Granted::All)),
        3 => proptest::sample::subsequence(choices, 1..=choices.len()).prop_map(|paths| {
            Some(Granted::Only(
                paths.iter().map(|p| p.split('.').map(str::to_owned).collect()).collect(),
            ))
        }),
    ]
}

fn grant() -> impl Strategy<Value = GrantSpec> {
    (
        granted(&["a", "b", "tag", "meta", "meta.x"]),
        granted(&["a", "b", "tag", "meta.x", "meta"]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_filter("the grant must allow something", |(r, w, _, _)| {
            r.is_some() || w.is_some()
        })
        .prop_map(|(read, write, filtered, family)| GrantSpec {
            read,
            write,
            filtered,
            family,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..IDS.len();
    prop_oneof![
        2 => id.clone().prop_map(Op::ReadOne),
        1 => Just(Op::ReadAll),
        4 => (proptest::option::of(id.clone()), patch()).prop_map(|(i, p)| Op::Write(i, p)),
        1 => (id.clone(), patch()).prop_map(|(i, p)| Op::Owner(i, p)),
        1 => (id, patch()).prop_map(|(i, p)| Op::Subscribe(i, p)),
        2 => (0..BLOBS.len()).prop_map(Op::ReadBlob),
    ]
}

// ---- the node side ----

struct Service {
    http: reqwest::Client,
    base: String,
    owner: String,
    token: String,
    /// The real ids of [`BLOBS`].
    blob_ids: Vec<String>,
}

impl Service {
    /// A model value as the node stores it (real blob ids).
    fn real(&self, value: &Value) -> Value {
        let names: Vec<String> = BLOBS.iter().map(|b| (*b).to_owned()).collect();
        swap(value, &names, &self.blob_ids)
    }

    /// A node value as the model writes it.
    fn modeled(&self, value: &Value) -> Value {
        let names: Vec<String> = BLOBS.iter().map(|b| (*b).to_owned()).collect();
        swap(value, &self.blob_ids, &names)
    }

    async fn owner(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.owner);
        if let Some(body) = body {
            request = request.json(&self.real(body));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, self.modeled(&body))
    }

    async fn service(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&self.real(body));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, self.modeled(&body))
    }

    /// Every record of the collection as the owner sees it, without ids.
    async fn vault(&self) -> BTreeMap<String, Record> {
        let (status, all) = self
            .owner(
                reqwest::Method::GET,
                &format!("/v1/collections/{COLLECTION}/records"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        all.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.as_object().unwrap().clone();
                let id = r.remove("id").unwrap().as_str().unwrap().to_owned();
                (id, r)
            })
            .collect()
    }
}

async fn start(home: &std::path::Path) -> NodeHandle {
    let mut config = NodeConfig::new(home);
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    config.mesh = None;
    Node::start(config).await.unwrap()
}

/// Reads server-sent events until `until` returns true for one; returns them all.
async fn read_events(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
    mut until: impl FnMut(&(String, Value)) -> bool,
) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            if name.is_empty() {
                continue;
            }
            let event = (name, serde_json::from_str(&data).unwrap());
            let done = until(&event);
            events.push(event);
            if done {
                return events;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream stays open")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The complete events already received.
fn drain_events(buffer: &mut String) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let (mut name, mut data) = (String::new(), String::new());
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim());
            }
        }
        if !name.is_empty() {
            events.push((name, serde_json::from_str(&data).unwrap()));
        }
    }
    events
}

async fn run_case(records: Vec<Option<Record>>, grant: GrantSpec, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("v")).await;
    let owner = std::fs::read_to_string(node.home().join("owner.token"))
        .unwrap()
        .trim()
        .to_owned();
    let mut svc = Service {
        http: reqwest::Client::new(),
        base: format!("http://{}", node.api_addr()),
        owner,
        token: String::new(),
        blob_ids: Vec::new(),
    };
    for (i, _) in BLOBS.iter().enumerate() {
        let answer = svc
            .http
            .post(format!("{}/v1/blobs", svc.base))
            .bearer_auth(&svc.owner)
            .body(format!("the bytes of blob {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 201);
        let info: Value = answer.json().await.unwrap();
        svc.blob_ids.push(info["id"].as_str().unwrap().to_owned());
    }
    let mut model = Model {
        grant: grant.clone(),
        records: BTreeMap::new(),
        own: BTreeSet::new(),
    };
    for (i, r) in records.into_iter().enumerate() {
        if let Some(r) = r {
            let path = format!("/v1/collections/{COLLECTION}/records/{}", IDS[i]);
            let (status, _) = svc
                .owner(reqwest::Method::PUT, &path, Some(&Value::Object(r.clone())))
                .await;
            assert_eq!(status, 201);
            model.records.insert(IDS[i].to_owned(), r);
        }
    }
    let beside = format!("/v1/collections/{BESIDE}/records/x");
    let (status, _) = svc
        .owner(
            reqwest::Method::PUT,
            &beside,
            Some(&json!({"a": 1, "tag": "work"})),
        )
        .await;
    assert_eq!(status, 201);
    let mut request = json!({"service": "model", "expires": "1h"});
    if let Some(read) = &grant.read {
        request["read"] = json!(read.arg(grant.family));
    }
    if let Some(write) = &grant.write {
        request["write"] = json!(write.arg(grant.family));
    }
    if grant.filtered {
        request["where"] = json!(["tag=work"]);
    }
    let (status, created) = svc
        .owner(reqwest::Method::POST, "/v1/grants", Some(&request))
        .await;
    assert_eq!(status, 201, "{created}");
    svc.token = created["token"].as_str().unwrap().to_owned();

    for (step, op) in ops.into_iter().enumerate() {
        let context = format!("step {step}: {op:?} under {grant:?}");
        match op {
            Op::ReadOne(i) => {
                let id = IDS[i];
                let path = format!("/v1/view/{COLLECTION}/{id}");
                let (status, body) = svc.service(reqwest::Method::GET, &path, None).await;
                let expected = if grant.read.is_none() {
                    (403, None)
                } else {
                    match model.records.get(id).and_then(|r| model.project(id, r)) {
                        Some(view) => (200, Some(view)),
                        None => (404, None),
                    }
                };
                assert_eq!(status, expected.0, "{context}: {body}");
                if let Some(view) = expected.1 {
                    assert_eq!(body, view, "{context}");
                }
            }
            Op::ReadAll => {
                let path = format!("/v1/view/{COLLECTION}");
                let (status, body) = svc.service(reqwest::Method::GET, &path, None).await;
                if grant.read.is_none() {
                    assert_eq!(status, 403, "{context}: {body}");
                } else {
                    assert_eq!(status, 200, "{context}: {body}");
                    assert_eq!(body, Value::Array(model.view()), "{context}");
                }
                // Nothing beside the family, whatever the grant.
                let path = format!("/v1/view/{BESIDE}");
                let (status, body) = svc.service(reqwest::Method::GET, &path, None).await;
                assert_eq!(status, 403, "{context}: {body}");
                let (status, body) = svc.service(reqwest::Method::GET, "/v1/view", None).await;
                if grant.read.is_some() {
                    assert_eq!(status, 200, "{context}: {body}");
                    let names: Vec<&String> =
                        body["collections"].as_object().unwrap().keys().collect();
                    assert!(names.iter().all(|n| *n == COLLECTION), "{context}: {body}");
                }
            }
            Op::Write(i, patch) => {
                let id = i.map(|i| IDS[i]);
                let mut body = patch.clone();
                if let Some(id) = id {
                    body.insert("id".into(), json!(id));
                }
                let path = format!("/v1/view/{COLLECTION}");
                let (status, answer) = svc
                    .service(reqwest::Method::POST, &path, Some(&Value::Object(body)))
                    .await;
                let expected = model.write(id, &patch);
                if let Some(id) = id {
                    model.note_attempt(id, &patch);
                }
                match expected {
                    Ok(after) => {
                        let created = id.is_none_or(|id| !model.records.contains_key(id));
                        assert_eq!(
                            status,
                            if created { 201 } else { 200 },
                            "{context}: {answer}"
                        );
                        let new_id = answer["id"].as_str().unwrap().to_owned();
                        if let Some(id) = id {
                            assert_eq!(new_id, id, "{context}");
                        } else {
                            model.note_attempt(&new_id, &patch);
                        }
                        model.records.insert(new_id, after);
                    }
                    Err(expected) => {
                        assert_eq!(status, expected, "{context}: {answer}");
                        if expected == 404 {
                            // Exactly as for an id that does not exist.
                            assert_eq!(answer["error"]["code"], "not_found", "{context}");
                            let id = id.unwrap();
                            assert_eq!(
                                answer["error"]["message"],
                                format!("no record {id} in collection {COLLECTION}"),
                                "{context}"
                            );
                        }
                    }
                }
                assert_eq!(svc.vault().await, model.records, "{context}: the vault");
            }
            Op::Owner(i, patch) => {
                owner_change(&svc, &mut model, IDS[i], &patch).await;
            }
            Op::ReadBlob(b) => {
                let path = format!("/v1/view/_blobs/{}", svc.blob_ids[b]);
                let answer = svc
                    .http
                    .get(format!("{}{path}", svc.base))
                    .bearer_auth(&svc.token)
                    .send()
                    .await
                    .unwrap();
                let status = answer.status().as_u16();
                let bytes = answer.bytes().await.unwrap();
                if model.blob_readable(BLOBS[b]) {
                    assert_eq!(status, 200, "{context}: blob {}", BLOBS[b]);
                    assert_eq!(&bytes[..], format!("the bytes of blob {b}").as_bytes());
                } else {
                    assert_eq!(status, 404, "{context}: blob {} was served", BLOBS[b]);
                }
            }
            Op::Subscribe(i, patch) => {
                let response = svc
                    .http
                    .get(format!("{}/v1/view/events", svc.base))
                    .bearer_auth(&svc.token)
                    .send()
                    .await
                    .unwrap();
                if grant.read.is_none() {
                    // A grant that reads nothing gets a stream that shows nothing.
                    continue;
                }
                assert_eq!(response.status().as_u16(), 200, "{context}");
                let mut stream = response.bytes_stream();
                let mut buffer = String::new();
                // Live once it says so: changes from then on arrive.
                let ready = read_events(&mut stream, &mut buffer, |_| true).await;
                assert_eq!(ready[0].0, "ready", "{context}");
                let id = IDS[i];
                let before = model.records.get(id).and_then(|r| model.project(id, r));
                owner_change(&svc, &mut model, id, &patch).await;
                let after = model.records.get(id).and_then(|r| model.project(id, r));
                let marker_id = format!("marker{step}");
                let marker = json!({"a": 1, "b": 2, "tag": "work", "meta": {"x": 3}});
                let path = format!("/v1/collections/{COLLECTION}/records/{marker_id}");
                svc.owner(reqwest::Method::PUT, &path, Some(&marker)).await;
                let marker = marker.as_object().unwrap().clone();
                let marker_view = model
                    .project(&marker_id, &marker)
                    .expect("markers are visible");
                model.records.insert(marker_id.clone(), marker);
                let mut expected = Vec::new();
                if before != after {
                    expected.push(match after {
                        Some(record) => (
                            "upsert".to_owned(),
                            json!({"collection": COLLECTION, "record": record}),
                        ),
                        None => (
                            "remove".to_owned(),
                            json!({"collection": COLLECTION, "id": id}),
                        ),
                    });
                }
                expected.push((
                    "upsert".to_owned(),
                    json!({"collection": COLLECTION, "record": marker_view}),
                ));
                // Changes that reach the node together arrive as one batch, in no
                // particular order between records: wait for every expected event
                // (a missing one times out), and take whatever else came with them.
                let mut events = Vec::new();
                let mut waiting = expected.clone();
                while !waiting.is_empty() {
                    let got = read_events(&mut stream, &mut buffer, |_| true).await;
                    for (name, data) in got {
                        let event = (name, svc.modeled(&data));
                        waiting.retain(|w| *w != event);
                        events.push(event);
                    }
                }
                events.extend(
                    drain_events(&mut buffer)
                        .into_iter()
                        .map(|(name, data)| (name, svc.modeled(&data))),
                );
                events.sort_by_key(|e| e.1.to_string());
                expected.sort_by_key(|e| e.1.to_string());
                assert_eq!(events, expected, "{context}");
            }
        }
    }
    node.shutdown().await.unwrap();
}

async fn owner_change(svc: &Service, model: &mut Model, id: &str, patch: &Record) {
    let path = format!("/v1/collections/{COLLECTION}/records/{id}");
    match model.records.get_mut(id) {
        Some(record) => {
            let (status, _) = svc
                .owner(
                    reqwest::Method::PATCH,
                    &path,
                    Some(&Value::Object(patch.clone())),
                )
                .await;
            assert_eq!(status, 200);
            merge(record, patch);
        }
        None => {
            let mut record = Map::new();
            merge(&mut record, patch);
            let (status, _) = svc
                .owner(
                    reqwest::Method::PUT,
                    &path,
                    Some(&Value::Object(record.clone())),
                )
                .await;
            assert_eq!(status, 201);
            model.records.insert(id.to_owned(), record);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        max_shrink_iters: 200,
        .. ProptestConfig::default()
    })]

    #[test]
    fn a_service_sees_and_changes_exactly_its_grant(
        records in proptest::collection::vec(proptest::option::of(record()), IDS.len()),
        grant in grant(),
        ops in proptest::collection::vec(op(), 1..20),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run_case(records, grant, ops));
    }
}
