//! Micro benchmarks of the node's hot code: mapping JSON records to Automerge and back,
//! and checking a grant token.
//!
//!     cargo bench -p hearth-node

use std::hint::black_box;

use automerge::AutoCommit;
use criterion::{Criterion, criterion_group, criterion_main};
use hearth_node::access::{self, Credentials, NewGrant};
use hearth_node::{Node, NodeConfig, records};
use hearth_protocol::scope::{Narrowing, Scope};
use serde_json::{Map, Value, json};

fn contact(i: usize) -> Map<String, Value> {
    json!({
        "name": format!("Person {i}"),
        "email": format!("person{i}@example.org"),
        "phones": ["+33 6 12 34 56 78", "+33 4 78 00 00 00"],
        "address": {"street": "12 rue des Lilas", "city": "Lyon", "zip": "69003"},
        "notes": "x".repeat(700),
        "score": 4.5,
        "active": true,
    })
    .as_object()
    .expect("a JSON object")
    .clone()
}

fn json_automerge(c: &mut Criterion) {
    let mut group = c.benchmark_group("records");
    let record = contact(1);
    group.bench_function("put 1 KB record into a fresh document", |b| {
        b.iter(|| {
            let mut doc = AutoCommit::new();
            records::put_record(&mut doc, "r1", black_box(&record)).expect("put");
            doc
        })
    });
    let mut doc = AutoCommit::new();
    records::put_record(&mut doc, "r1", &record).expect("put");
    let mut changed = record.clone();
    changed.insert("score".into(), json!(5));
    group.bench_function("re-put 1 KB record, one field changed", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            let r = if flip { &changed } else { &record };
            records::put_record(&mut doc, "r1", black_box(r)).expect("put")
        })
    });
    group.bench_function("read 1 KB record", |b| {
        b.iter(|| records::read_record(&doc, black_box("r1")).expect("read"))
    });
    group.finish();
}

fn token_check(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = runtime.block_on(async {
        let mut config = NodeConfig::new(dir.path().join("vault"));
        config.api_addr = "127.0.0.1:0".parse().expect("an address");
        config.mesh = None;
        Node::start(config).await.expect("the node starts")
    });
    let v = node.vault().clone();
    let scope = Scope::parse(Some("contacts.name,contacts.email"), None, &[]).expect("scope");
    let (_, token) = access::create_grant(v.collections(), v.keys(), NewGrant::new("bench", scope))
        .expect("grant");
    let token = token.token;
    let narrowing = Narrowing::parse(Some("contacts.name"), None).expect("a narrowing");
    let narrowed = access::attenuate(&token, &narrowing, None).expect("attenuates");
    let mut group = c.benchmark_group("token");
    group.bench_function("admit a vault-issued token", |b| {
        b.iter(|| {
            runtime
                .block_on(v.door().admit(&Credentials::local(black_box(&token))))
                .expect("valid")
        })
    });
    group.bench_function("admit an attenuated token (scope narrowed)", |b| {
        b.iter(|| {
            runtime
                .block_on(v.door().admit(&Credentials::local(black_box(&narrowed))))
                .expect("valid")
        })
    });
    group.finish();
    runtime.block_on(node.shutdown()).expect("the node stops");
}

criterion_group!(benches, json_automerge, token_check);
criterion_main!(benches);
