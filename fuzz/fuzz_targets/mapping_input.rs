//! The mapping input path's parts that run in the daemon, on arbitrary bytes: the nesting
//! measure that keeps deep input away from jaq's recursive reader (never panics, and whatever
//! it lets through serde_json parses without reaching its recursion limit), and the decoding
//! of what a jq worker answers (never panics, never allocates past its frame limit).
#![no_main]

use edgehook::jq::{depth, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if !depth::deeper_than(data, depth::MAX_DEPTH - 1) {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(data) {
            assert!(
                !e.to_string().contains("recursion limit"),
                "let through, but too deep for serde_json: {e}"
            );
        }
    }
    let mut answers = data;
    while let Ok(Some(_)) = wire::read_answer(&mut answers) {}
    let mut ready = data;
    let _ = wire::await_ready(&mut ready);
});
