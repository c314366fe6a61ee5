#![no_main]
//! Sync tokens a DAV client sends back (sync-collection REPORT): never a panic; a token
//! that parses names a log position whose token is the same text (one way to write
//! it); a refusal does not echo the whole token. Positions made from the input
//! round-trip.
use hearth_node::fuzzing::{parse_sync_token, sync_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match parse_sync_token(text) {
            Ok((epoch, seq)) => {
                let token = sync_token(epoch, seq);
                assert_eq!(parse_sync_token(&token), Ok((epoch, seq)));
                assert_eq!(token, text.trim(), "one way to write a token");
            }
            Err(e) => assert!(
                e.len() <= 200,
                "the refusal echoes the token: {} bytes",
                e.len()
            ),
        }
    }
    if let (Some(epoch), Some(seq)) = (data.get(..8), data.get(8..16)) {
        let epoch = u64::from_be_bytes(epoch.try_into().expect("8 bytes"));
        let seq = u64::from_be_bytes(seq.try_into().expect("8 bytes"));
        assert_eq!(parse_sync_token(&sync_token(epoch, seq)), Ok((epoch, seq)));
    }
});
