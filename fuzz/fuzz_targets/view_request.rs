#![no_main]
//! Remote view requests (JSON) from a peer: never a panic; what parses re-serializes
//! to something that parses the same.
use hearth_protocol::view::ViewRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<ViewRequest>(data) {
        let bytes = serde_json::to_vec(&request).expect("serializes");
        assert_eq!(
            serde_json::from_slice::<ViewRequest>(&bytes).expect("round trip"),
            request
        );
    }
});
