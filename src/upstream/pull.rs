//! The pull protocol's messages and its retry rule (pure; `control::pull` runs the loop).
//!
//! The gateway POSTs a poll to `upstream.pull.url`, signed like a pushed command (Standard
//! Webhooks headers over the body, the first secret):
//!
//! ```json
//! {"gateway_id": "gw-1", "cursor": "c-41", "wait": 30,
//!  "taken": [{"id": "cmd-7", "status": 202}, {"id": "cmd-8", "status": 404, "error": "..."}]}
//! ```
//!
//! `cursor` is the last cursor upstream gave (absent at first): everything before it is taken,
//! so upstream may drop it. `taken` says what became of each command of the previous answer
//! (the status the push listener would have answered). Upstream answers 200, signed the same
//! way (and checked like a pushed request: tolerance, replay), holding the request up to
//! `wait` seconds while it has nothing:
//!
//! ```json
//! {"cursor": "c-42", "commands": [{"id": "cmd-9", "type": "booking.start", "data": {...}}]}
//! ```
//!
//! The gateway takes every command, durably, and only then keeps `cursor` (on disk) and polls
//! with it. A command refused for now (429: too many actions pending) keeps the old cursor:
//! the same answer comes again after a pause, and the commands already taken are recognised
//! by their own ids. A failed poll (no answer, not 200, not signed, not parseable) is retried
//! after [`backoff`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One command's outcome, reported in the next poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Taken {
    pub id: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Poll {
    pub gateway_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    pub wait: u64,
    #[serde(default)]
    pub taken: Vec<Taken>,
}

/// Upstream's answer to a poll.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Answer {
    /// Where the next poll starts; absent: where this one started.
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub commands: Vec<Pulled>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Pulled {
    pub id: String,
    /// The command itself (`type`/`event` and `data`, as pushed).
    #[serde(flatten)]
    pub command: serde_json::Map<String, Value>,
}

/// At most this many commands are taken from one answer (the rest come in the next).
pub const MAX_COMMANDS: usize = 256;

pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("not a pull answer ({e})"))?;
    if !value.is_object() {
        return Err("not a pull answer (a JSON object {\"cursor\", \"commands\"})".into());
    }
    let answer: Answer =
        serde_json::from_value(value).map_err(|e| format!("not a pull answer ({e})"))?;
    if answer.commands.len() > MAX_COMMANDS {
        return Err(format!(
            "{} commands in one answer; at most {MAX_COMMANDS} are taken",
            answer.commands.len()
        ));
    }
    if let Some(c) = &answer.cursor {
        if c.is_empty() || c.len() > 1024 {
            return Err("cursor must be 1 to 1024 characters".into());
        }
    }
    Ok(answer)
}

/// The pause before the next poll after `failures` failed ones in a row: 1 s, doubling, at
/// most a minute.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_polls_back_off_to_a_minute() {
        let rows = [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (100, 60)];
        for (failures, secs) in rows {
            assert_eq!(backoff(failures), Duration::from_secs(secs), "{failures}");
        }
    }

    #[test]
    fn answers_parse_or_say_why() {
        let ok = parse_answer(
            br#"{"cursor": "c-2", "commands": [{"id": "cmd-1", "type": "booking.end", "data": {"booking_id": "b", "workspace_id": "w"}}]}"#,
        )
        .unwrap();
        assert_eq!(ok.cursor.as_deref(), Some("c-2"));
        assert_eq!(ok.commands[0].id, "cmd-1");
        assert_eq!(ok.commands[0].command["type"], "booking.end");
        assert_eq!(parse_answer(b"{}").unwrap().commands, vec![]);
        for bad in [
            &b"[]"[..],
            br#"{"commands": [{"type": "booking.end"}]}"#,
            br#"{"cursor": ""}"#,
            b"not json",
        ] {
            assert!(
                parse_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
