//! What the API acknowledged is on disk: it survives a SIGKILL right after the last
//! acknowledgement — puts, patches, deletes and blobs alike.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hearth_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

const ROUNDS: usize = 5;
const WRITERS: usize = 4;
const WRITES: usize = 25;

#[test]
fn acknowledged_writes_survive_sigkill() {
    let t = TestHome::new();
    // The model: what the vault must hold, after every acknowledged operation.
    let model: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    for round in 0..ROUNDS {
        let node = spawn_node(t.path(), &[]);
        let api = Arc::new(Api::new(&node));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (api, model) = (api.clone(), model.clone());
                std::thread::spawn(move || {
                    for i in 0..WRITES {
                        let record = json!({"round": round, "writer": w, "i": i,
                                            "text": format!("r{round} w{w} #{i}")});
                        // Writer 0 lets the node choose ids; the others name theirs.
                        let (status, body) = if w == 0 {
                            api.send(
                                api.request(Method::POST, "/v1/collections/log/records")
                                    .json(&record),
                            )
                        } else {
                            let id = format!("r{round}-{w}-{i}");
                            api.send(
                                api.request(
                                    Method::PUT,
                                    &format!("/v1/collections/log/records/{id}"),
                                )
                                .json(&record),
                            )
                        };
                        assert_eq!(status, 201, "{body}");
                        let id = body["id"].as_str().expect("the answer names the id");
                        model.lock().unwrap().insert(id.to_owned(), record);
                    }
                })
            })
            .collect();
        // Meanwhile, change what earlier rounds wrote: patch some, delete others.
        if round > 0 {
            let earlier: Vec<String> = model
                .lock()
                .unwrap()
                .keys()
                .filter(|id| id.starts_with(&format!("r{}-1-", round - 1)))
                .cloned()
                .collect();
            for (k, id) in earlier.iter().enumerate() {
                let path = format!("/v1/collections/log/records/{id}");
                if k % 2 == 0 {
                    let (status, body) = api.send(
                        api.request(Method::PATCH, &path)
                            .json(&json!({"patched_in": round, "text": null})),
                    );
                    assert_eq!(status, 200, "{body}");
                    model.lock().unwrap().insert(id.clone(), strip_id(body));
                } else {
                    let (status, _) = api.send(api.request(Method::DELETE, &path));
                    assert_eq!(status, 204);
                    model.lock().unwrap().remove(id);
                }
            }
        }
        for w in writers {
            w.join().expect("a writer failed");
        }
        // Killed right after the last acknowledgement: no clean shutdown, no flush.
        node.kill9();
    }

    let node = spawn_node(t.path(), &[]);
    let listed = node.json(&["ls", "log"]);
    let found: BTreeMap<String, Value> = listed
        .as_array()
        .expect("ls --json prints an array")
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), strip_id(r.clone())))
        .collect();
    let model = model.lock().unwrap();
    for (id, want) in model.iter() {
        match found.get(id) {
            None => panic!("lost the acknowledged record {id}"),
            Some(got) => assert_eq!(got, want, "record {id} is not as acknowledged"),
        }
    }
    for id in found.keys() {
        assert!(model.contains_key(id), "{id} was deleted, yet it is back");
    }
    assert_eq!(found.len(), model.len());
    node.stop();
}

fn strip_id(mut record: Value) -> Value {
    record.as_object_mut().expect("a record").remove("id");
    record
}

#[test]
fn an_acknowledged_blob_survives_sigkill() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    let blob: Vec<u8> = (0..3_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (status, info) = api.send(api.request(Method::POST, "/v1/blobs").body(blob.clone()));
    assert_eq!(status, 201, "{info}");
    let small = b"and a small one".to_vec();
    let (status, small_info) = api.send(api.request(Method::POST, "/v1/blobs").body(small.clone()));
    assert_eq!(status, 201, "{small_info}");
    node.kill9();

    // api.addr is left behind, but nothing answers there: clients say no node runs.
    let err = one_line_error(&cli(t.path(), &["ls", "log"]));
    assert!(err.contains("no Hearth node is running"), "{err}");

    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    for (info, bytes) in [(&info, &blob), (&small_info, &small)] {
        let answer = api.send_raw(api.request(
            Method::GET,
            &format!("/v1/blobs/{}", info["id"].as_str().unwrap()),
        ));
        assert_eq!(answer.status, 200);
        assert!(&answer.body == bytes, "the blob {info} is not intact");
    }
    node.stop();
}
