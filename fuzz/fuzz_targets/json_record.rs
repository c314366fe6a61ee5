#![no_main]
//! JSON bodies mapped to Automerge records: never a panic; an object reads back equal;
//! a merge patch applies without panicking.
use automerge::AutoCommit;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(record)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut doc = AutoCommit::new();
    hearth_node::records::put_record(&mut doc, "r", &record).expect("a JSON object is a record");
    let back = hearth_node::records::read_record(&doc, "r")
        .expect("reads")
        .expect("exists");
    assert_eq!(back, record);
    let _ = hearth_node::records::patch_record(&mut doc, "r", &record);
    let _ = hearth_node::records::read_record(&doc, "r");
});
