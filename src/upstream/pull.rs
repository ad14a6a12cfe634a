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
//! after [`backoff`]. A command that is not one (not an object, no string `id`) is refused
//! alone: reported in `taken` with 400 (under its `id` as written, or `#N`, its place in the
//! answer), while the commands beside it are taken and the cursor moves on. Polls are paced
//! ([`pace`]): an upstream that answers at once with nothing is polled once a second, not in
//! a loop.

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
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Where the next poll starts; absent: where this one started.
    pub cursor: Option<String>,
    pub commands: Vec<Pulled>,
}

/// The answer as written, before each command is looked at on its own.
#[derive(Deserialize)]
struct Written {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    commands: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    /// Its `id`, or for one without a string id what stands in for it in `taken`.
    pub id: String,
    /// The command itself (`type`/`event` and `data`, as pushed), or why it is none.
    pub command: Result<serde_json::Map<String, Value>, String>,
}

/// The longest command id taken.
pub const MAX_ID: usize = 256;

impl Pulled {
    /// Command `index` (from 1) of an answer, as written.
    fn read(index: usize, value: Value) -> Pulled {
        let Value::Object(map) = value else {
            return Pulled {
                id: format!("#{index}"),
                command: Err(format!("command #{index} is not a JSON object")),
            };
        };
        let (id, problem) = match map.get("id") {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID => (id.clone(), None),
            Some(Value::String(id)) if id.is_empty() => {
                (format!("#{index}"), Some("`id` is empty".to_string()))
            }
            Some(Value::String(id)) => (
                id.chars().take(64).collect(),
                Some(format!("`id` is over {MAX_ID} bytes")),
            ),
            Some(other) => {
                let written: String = other.to_string().chars().take(64).collect();
                (written, Some("`id` must be a string".to_string()))
            }
            None => (format!("#{index}"), Some("it has no `id`".to_string())),
        };
        Pulled {
            id,
            command: match problem {
                None => {
                    let mut map = map;
                    map.remove("id");
                    Ok(map)
                }
                Some(p) => Err(p),
            },
        }
    }
}

/// At most this many commands are taken from one answer (the rest come in the next).
pub const MAX_COMMANDS: usize = 256;

pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("not a pull answer ({e})"))?;
    if !value.is_object() {
        return Err("not a pull answer (a JSON object {\"cursor\", \"commands\"})".into());
    }
    let written: Written =
        serde_json::from_value(value).map_err(|e| format!("not a pull answer ({e})"))?;
    let answer = Answer {
        cursor: written.cursor,
        commands: written
            .commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| Pulled::read(i + 1, c))
            .collect(),
    };
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

/// How long to wait before the next poll, after one answered in `answered_in` with `commands`
/// commands: none, when it brought some (a backlog is drained at once) or when upstream held
/// it for a second or more (a long poll); otherwise the rest of a second, so that an upstream
/// answering at once with nothing is polled once a second, not in a loop.
pub fn pace(answered_in: Duration, commands: usize) -> Duration {
    const MIN_GAP: Duration = Duration::from_secs(1);
    if commands > 0 {
        Duration::ZERO
    } else {
        MIN_GAP.saturating_sub(answered_in)
    }
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

    /// #43.16: one malformed command (a numeric or missing `id`) made the whole answer fail
    /// to parse: the cursor never moved, the valid command beside it was never taken, and
    /// upstream was never told.
    #[test]
    fn a_malformed_command_is_refused_alone() {
        let answer = parse_answer(
            br#"{"cursor": "c-5", "commands": [
                {"id": 42, "type": "booking.end", "data": {}},
                {"type": "booking.end"},
                "booking.end",
                {"id": "", "type": "x"},
                {"id": "cmd-ok", "type": "booking.end", "data": {"booking_id": "b", "workspace_id": "w"}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(answer.cursor.as_deref(), Some("c-5"));
        let rows: Vec<(&str, Result<(), &str>)> = answer
            .commands
            .iter()
            .map(|c| {
                (
                    c.id.as_str(),
                    c.command.as_ref().map(|_| ()).map_err(String::as_str),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("42", Err("`id` must be a string")),
                ("#2", Err("it has no `id`")),
                ("#3", Err("command #3 is not a JSON object")),
                ("#4", Err("`id` is empty")),
                ("cmd-ok", Ok(())),
            ]
        );
    }

    #[test]
    fn polls_are_paced_when_upstream_answers_at_once_with_nothing() {
        let ms = Duration::from_millis;
        // (answered in, commands, pause before the next poll)
        let rows = [
            (ms(0), 0, ms(1000)),
            (ms(30), 0, ms(970)),
            (ms(1000), 0, ms(0)),
            (ms(30_000), 0, ms(0)),
            (ms(0), 3, ms(0)),
        ];
        for (answered_in, commands, want) in rows {
            assert_eq!(
                pace(answered_in, commands),
                want,
                "{answered_in:?} {commands}"
            );
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
        assert_eq!(
            ok.commands[0].command.as_ref().unwrap()["type"],
            "booking.end"
        );
        assert_eq!(parse_answer(b"{}").unwrap().commands, vec![]);
        for bad in [
            &b"[]"[..],
            br#"{"commands": {"id": "x"}}"#,
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
