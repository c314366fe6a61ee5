//! Micro benchmarks of the protocol's hot code: sealing values at rest and projecting
//! a record through a view's scope.
//!
//!     cargo bench -p hearth-protocol

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hearth_protocol::scope::Scope;
use hearth_protocol::seal::{Binding, SealKey};
use serde_json::{Map, Value, json};

fn sealing(c: &mut Criterion) {
    let key = SealKey::from_bytes([7; 32]);
    let mut group = c.benchmark_group("seal");
    for size in [256usize, 64 * 1024, 1024 * 1024] {
        let plaintext = vec![0x5a_u8; size];
        let binding = Binding::new(b"docs", b"some-key");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &plaintext, |b, p| {
            b.iter(|| key.seal(binding, black_box(p), [1; 24]))
        });
        let sealed = key.seal(binding, &plaintext, [1; 24]);
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, s| {
            b.iter(|| key.open(binding, black_box(s)).expect("opens"))
        });
        group.bench_with_input(BenchmarkId::new("memcpy", size), &plaintext, |b, p| {
            b.iter(|| black_box(p).to_vec())
        });
    }
    group.finish();
}

/// A contact of about 1 KB, the size the view benchmark serves.
pub fn contact(i: usize) -> Map<String, Value> {
    json!({
        "name": format!("Person {i}"),
        "email": format!("person{i}@example.org"),
        "phone": "+33 6 12 34 56 78",
        "tag": if i.is_multiple_of(2) { "work" } else { "home" },
        "address": {"street": "12 rue des Lilas", "city": "Lyon", "zip": "69003"},
        "notes": "x".repeat(700),
        "birthday": "1990-04-01",
    })
    .as_object()
    .expect("a JSON object")
    .clone()
}

fn projection(c: &mut Criterion) {
    let record = contact(2);
    let mut group = c.benchmark_group("project");
    for (label, read, filters) in [
        ("whole collection", "contacts", vec![]),
        (
            "three fields",
            "contacts.name,contacts.email,contacts.address.city",
            vec![],
        ),
        (
            "fields and filter",
            "contacts.name,contacts.email",
            vec!["tag=work".to_owned()],
        ),
    ] {
        let scope = Scope::parse(Some(read), None, &filters).expect("a valid scope");
        let scope = scope
            .collection("contacts")
            .expect("contacts granted")
            .clone();
        group.bench_function(label, |b| b.iter(|| scope.project(black_box(&record))));
    }
    group.finish();
}

criterion_group!(benches, sealing, projection);
criterion_main!(benches);
