#![no_main]
//! Sync tokens a DAV client sends back (sync-collection REPORT): never a panic; a token
//! that parses names heads whose token parses to the same heads, and is written one way
//! only; a refusal does not echo the whole token. Heads made from the input round-trip.
use hearth_node::fuzzing::{parse_sync_token, sync_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match parse_sync_token(text) {
            Ok(mut heads) => {
                let token = sync_token(&heads);
                let mut back = parse_sync_token(&token).expect("a written token parses");
                heads.sort();
                back.sort();
                assert_eq!(back, heads);
                assert_eq!(sync_token(&back), token, "one way to write a token");
            }
            Err(e) => assert!(
                e.len() <= 200,
                "the refusal echoes the token: {} bytes",
                e.len()
            ),
        }
    }
    let mut heads: Vec<[u8; 32]> = data
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    let token = sync_token(&heads);
    let mut back = parse_sync_token(&token).expect("a written token parses");
    heads.sort();
    back.sort();
    assert_eq!(back, heads);
});
