//! Fuzzes the client-flags parser: any text never panics and sets only defined slots.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_session_exporter::snapshot::{parse_flags, FLAG_UNKNOWN};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let bits = parse_flags(&text);
    assert_eq!(bits >> (FLAG_UNKNOWN + 1), 0);
    assert_eq!(bits == 0, text.is_empty());
});
