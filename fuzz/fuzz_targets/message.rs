//! Any datagram: parsing never panics, and whatever parses encodes back to a datagram that
//! parses to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerstash::protocol::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::parse(data) {
        let again = Message::parse(&msg.encode()).expect("an encoded message parses");
        assert_eq!(again, msg);
    }
});
