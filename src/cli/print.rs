//! How the commands print the API's JSON for a person: times with how long ago, values
//! compact. One place, so every command says a time the same way.

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// An RFC 3339 time from the API as `2026-11-23T10:15:02Z (5m 3s ago)`; `never` for null.
pub fn when(at: &Value) -> String {
    let Some(text) = at.as_str() else {
        return "never".into();
    };
    match humantime::parse_rfc3339_weak(text) {
        Ok(t) => {
            let whole = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
            match SystemTime::now().duration_since(t) {
                Ok(ago) => format!(
                    "{} ({} ago)",
                    humantime::format_rfc3339_seconds(t),
                    whole(ago)
                ),
                // A time still to come (a deadline): said as such.
                Err(ahead) => format!(
                    "{} (in {})",
                    humantime::format_rfc3339_seconds(t),
                    whole(ahead.duration())
                ),
            }
        }
        Err(_) => text.to_string(),
    }
}

/// An RFC 3339 time from the API to the second, for a column; `never` for null.
pub fn seconds(at: &Value) -> String {
    at.as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .map_or("never".to_string(), |t| {
            humantime::format_rfc3339_seconds(t).to_string()
        })
}

/// A string field, or `-`.
pub fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// A number field (0 when absent).
pub fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A value as compact JSON, cut to `max` characters.
pub fn compact(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() <= max {
        s
    } else {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// The API's JSON, indented, for `--json`.
pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time to come reads "in ...", a past one "... ago" (a deadline 24 h ahead read "0s ago").
    #[test]
    fn times_to_come_and_past_read_as_such() {
        let at = |offset: i64| {
            let t = if offset >= 0 {
                SystemTime::now() + Duration::from_secs(offset as u64)
            } else {
                SystemTime::now() - Duration::from_secs((-offset) as u64)
            };
            Value::String(humantime::format_rfc3339_seconds(t).to_string())
        };
        let ahead = when(&at(86_400 + 30));
        assert!(ahead.contains("(in 1day "), "{ahead}");
        let past = when(&at(-125));
        assert!(past.contains("(2m ") && past.ends_with(" ago)"), "{past}");
        assert_eq!(when(&Value::Null), "never");
    }
}
