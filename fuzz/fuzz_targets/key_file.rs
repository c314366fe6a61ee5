#![no_main]
//! A key file read from disk, and the secrets blob inside it: never a panic.
use hearth_protocol::keyfile::{KeyFile, SecretsBlob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = KeyFile::parse(data) {
        let _ = file.secrets_bytes();
        let again = KeyFile::parse(&file.to_json()).expect("a written key file parses");
        assert_eq!(again.to_json(), file.to_json());
    }
    if let Ok(blob) = SecretsBlob::decode(data) {
        assert_eq!(&blob.encode()[..], data);
    }
});
