#![no_main]
//! Blob manifests, requests and answers from a peer: never a panic; what decodes
//! round-trips byte for byte.
use hearth_protocol::blob::{BlobRequest, BlobResponse, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::decode(data) {
        assert_eq!(
            manifest.encode(),
            data,
            "a manifest decodes from one encoding only"
        );
    }
    if let Ok(request) = BlobRequest::decode(data) {
        assert_eq!(
            BlobRequest::decode(&request.encode())
                .expect("round trip")
                .encode(),
            request.encode()
        );
    }
    if let Ok(response) = BlobResponse::decode(data) {
        assert_eq!(
            BlobResponse::decode(&response.encode())
                .expect("round trip")
                .encode(),
            response.encode()
        );
    }
});
