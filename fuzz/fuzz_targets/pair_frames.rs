#![no_main]
//! Pairing frames from an unknown peer: never a panic; what decodes round-trips.
use hearth_protocol::invite::{PairRequest, PairResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = PairRequest::decode(data) {
        assert_eq!(
            PairRequest::decode(&request.encode())
                .expect("round trip")
                .encode(),
            request.encode()
        );
    }
    if let Ok(response) = PairResponse::decode(data) {
        assert_eq!(
            PairResponse::decode(&response.encode())
                .expect("round trip")
                .encode(),
            response.encode()
        );
    }
});
