//! What the API acknowledged is on disk: it survives SIGKILL right after.

use std::sync::{Arc, Mutex};

use hearth_tests::*;
use reqwest::Method;
use serde_json::json;

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("vault");
    let mut acknowledged: Vec<(String, serde_json::Value)> = Vec::new();
    for round in 0..5 {
        let node = spawn_node(&home, &[]);
        let api = Arc::new(Api::new(&node));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (api, acked) = (api.clone(), acked.clone());
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let id = format!("r{round}-{w}-{i}");
                        let record = json!({"round": round, "writer": w, "i": i});
                        let (status, _) = api.send(
                            api.request(Method::PUT, &format!("/v1/collections/log/records/{id}"))
                                .json(&record),
                        );
                        assert_eq!(status, 201);
                        acked.lock().unwrap().push((id, record));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        // Killed right after the last acknowledgement: no clean shutdown, no flush.
        node.kill9();
        acknowledged.extend(acked.lock().unwrap().drain(..));
    }
    let node = spawn_node(&home, &[]);
    let listed = node.json(&["ls", "log"]);
    assert_eq!(listed.as_array().unwrap().len(), acknowledged.len());
    for (id, record) in &acknowledged {
        let mut want = record.clone();
        want["id"] = json!(id);
        assert!(listed.as_array().unwrap().contains(&want), "lost {id}");
    }
    node.stop();
}

#[test]
fn an_acknowledged_blob_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("vault");
    let node = spawn_node(&home, &[]);
    let api = Api::new(&node);
    let blob: Vec<u8> = (0..3_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (status, info) = api.send(api.request(Method::POST, "/v1/blobs").body(blob.clone()));
    assert_eq!(status, 201);
    node.kill9();
    let node = spawn_node(&home, &[]);
    let api = Api::new(&node);
    let response = api
        .request(
            Method::GET,
            &format!("/v1/blobs/{}", info["id"].as_str().unwrap()),
        )
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().unwrap().to_vec(), blob);
    node.stop();
}
