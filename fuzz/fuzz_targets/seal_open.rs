#![no_main]
//! Opening arbitrary bytes as a sealed value never panics and never succeeds unless
//! the bytes were sealed under this key and binding; sealing then opening returns the
//! plaintext.
use hearth_protocol::seal::{Binding, SealKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SealKey::from_bytes([7; 32]);
    let binding = Binding::new(b"docs", b"key");
    assert!(key.open(binding, data).is_err(), "forged bytes opened");
    let sealed = key.seal(binding, data, [3; 24]);
    assert_eq!(&key.open(binding, &sealed).unwrap()[..], data);
    assert!(key.open(Binding::new(b"docs", b"other"), &sealed).is_err());
});
