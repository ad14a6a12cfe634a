//! Request bodies from API clients and upstream, on arbitrary bytes: an endpoint's settings
//! (`POST /v1/endpoints`, as the API plans the change), a pushed or pulled command, and a pull
//! answer. Errors, never panics; an error never repeats a secret given in the body.
#![no_main]

use std::sync::OnceLock;

use edgehook::control::endpoints::{Change, Endpoints};
use libfuzzer_sys::fuzz_target;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("edgehook-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    });
    let _ = edgehook::upstream::pull::parse_answer(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = edgehook::upstream::command::parse(&value, 1_800_000_000_000);
    let Ok((endpoints, _)) = Endpoints::load(dir, Vec::new()) else {
        return;
    };
    if let Err(refused) = endpoints.plan(&Change::Create(value.clone()), |_| 0) {
        // A secret given with any shape is never repeated: its text is in the refusal only
        // if it is there too when the secret is something else (fixed words of the message,
        // a key or another value that says the same).
        for key in ["secret", "secrets"] {
            let Some(secret) = value.get(key) else {
                continue;
            };
            let text = match secret {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if text.len() < 8 || !refused.message.contains(&text) {
                continue;
            }
            let mut neutral = value.clone();
            neutral[key] = serde_json::Value::String("Q".repeat(12));
            let without = endpoints
                .plan(&Change::Create(neutral), |_| 0)
                .err()
                .map(|r| r.message)
                .unwrap_or_default();
            assert!(without.contains(&text), "{key} echoed: {}", refused.message);
        }
    }
});
