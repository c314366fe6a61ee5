#![no_main]
//! Sync frames from a peer: never a panic; what decodes round-trips.
use hearth_protocol::sync::SyncFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = SyncFrame::decode(data) {
        let bytes = frame.encode();
        assert_eq!(
            SyncFrame::decode(&bytes).expect("round trip").encode(),
            bytes
        );
    }
});
