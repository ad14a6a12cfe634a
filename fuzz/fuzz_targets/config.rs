//! Configuration parsing and validation on arbitrary text: errors, never panics.
#![no_main]

use edgehook::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Config::from_toml_str(&text) {
        let _ = e.to_string();
    }
});
