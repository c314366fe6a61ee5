#![no_main]
//! Tokens as a service presents them: parsing and attenuating arbitrary text never
//! panics, and never yields a token from garbage.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let narrowing = hearth_protocol::scope::Narrowing::parse(Some("contacts.name"), None)
        .expect("a valid narrowing");
    let _ = hearth_node::access::attenuate(text, &narrowing, None);
    let _ = hearth_node::access::parse_duration(text);
    let _ = hearth_node::access::parse_rate(text);
});
