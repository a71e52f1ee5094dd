//! Any datagram at a keyed peer: checking its AUTH tag never panics, a datagram it accepts is
//! one the key signed (signing what remains gives back the same bytes), and whatever it accepts
//! still parses, or is refused, like any 1.0 datagram.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerstash::protocol::auth::{sign, verify, LanKey};
use peerstash::protocol::Message;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let key = LanKey::new([7u8; 32]);
    if let Ok(stripped) = verify(&key, data, NOW) {
        let _ = Message::parse(&stripped);
    }
    // A signed copy of any input verifies and gives the input back.
    let signed = sign(&key, data, NOW);
    if let Ok(back) = verify(&key, &signed, NOW) {
        assert_eq!(back, data);
    }
});
