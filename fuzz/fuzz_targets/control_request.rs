//! Any request line on the control socket: decoding never panics, and a decoded request
//! encodes back to one that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerstash::control::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        let line = serde_json::to_vec(&req).expect("a request encodes");
        assert_eq!(Request::decode(&line), Ok(req));
    }
});
