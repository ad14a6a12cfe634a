//! MQTT payload and topic decoding on arbitrary bytes: errors, never panics.
#![no_main]

use edgehook::source::mqtt::TopicPattern;
use edgehook::source::{check_device_id, decode_reading, decode_status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_reading(data, 4096);
    let _ = decode_status(data, 4096);
    let text = String::from_utf8_lossy(data);
    let (pattern, topic) = text.split_once('\n').unwrap_or((&text, "a/b/c"));
    if let Ok(p) = TopicPattern::parse(pattern) {
        let _ = p.filter();
        if let Some(device) = p.capture(topic) {
            let _ = check_device_id(device);
        }
    }
});
