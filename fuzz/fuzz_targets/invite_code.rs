#![no_main]
//! Invite codes as a user might paste them: never a panic; a code that decodes
//! re-encodes to one that decodes the same.
use hearth_protocol::invite::Invite;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(invite) = Invite::decode(text) {
        let again = Invite::decode(&invite.encode()).expect("a re-encoded invite decodes");
        assert_eq!(again.encode(), invite.encode());
    }
});
