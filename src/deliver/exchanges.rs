//! The latest requests and their answers, whole up to a bound, in memory: what an operator sees
//! when a delivery is opened (`GET /v1/deliveries/{event_id}`, the console), as Svix's message
//! attempts or Node-RED's debug sidebar show them. The delivery log on disk keeps one line per
//! attempt and no bodies (an SD card's writes); this keeps the bodies of the latest
//! [`KEEP`] requests, at most [`BYTES`] in all, and forgets them at a restart.
//!
//! A request's body is cut at [`BODY_BYTES`] and an answer at [`ANSWER_BYTES`] (each says
//! its whole size and whether it was cut), so a receiver that answers with megabytes, or a
//! batch of a thousand events, costs no more than that (a batch's event ids count towards
//! [`BYTES`] too). Request headers are not kept: an
//! endpoint's own headers may carry its API key.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Requests kept.
pub const KEEP: usize = 64;
/// Bytes kept in all (bodies and answers); the oldest go first.
pub const BYTES: usize = 256 * 1024;
/// The most of one request's body kept.
pub const BODY_BYTES: usize = 16 * 1024;
/// The most of one answer read and kept.
pub const ANSWER_BYTES: usize = 4 * 1024;

/// Part of a body: its start, as text (bytes that are not UTF-8 as U+FFFD), and its whole size.
#[derive(Debug, Clone, PartialEq)]
pub struct Text {
    pub text: String,
    /// The whole body's size, bytes (of the answer: as far as it was read).
    pub bytes: usize,
    pub truncated: bool,
}

impl Text {
    /// The first `most` bytes of `body`, cut at a character.
    pub fn cut(body: &[u8], most: usize) -> Text {
        let truncated = body.len() > most;
        let mut end = body.len().min(most);
        let text = loop {
            match std::str::from_utf8(&body[..end]) {
                Ok(s) => break s.to_string(),
                // Cut inside a character: step back to its start (at most 3 bytes).
                Err(e) if truncated && e.error_len().is_none() => end = e.valid_up_to(),
                Err(_) => break String::from_utf8_lossy(&body[..end]).into_owned(),
            }
        };
        Text {
            text,
            bytes: body.len(),
            truncated,
        }
    }
}

/// One request and what came of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// When the answer came (or the attempt failed), Unix milliseconds.
    pub at: u64,
    pub endpoint: String,
    /// The events it carried (several for a batch).
    pub event_ids: Vec<String>,
    pub content_type: Option<String>,
    pub request: Text,
    /// The receiver's status and the start of its answer; `None` when it never answered.
    pub response: Option<(u16, Text)>,
}

impl Exchange {
    /// What it holds, bytes: its texts, and the ids of a batch's events (with their strings'
    /// own size), so that batches of many events count for what they keep.
    fn size(&self) -> usize {
        let ids: usize = self
            .event_ids
            .iter()
            .map(|i| i.len() + std::mem::size_of::<String>())
            .sum();
        self.request.text.len() + self.response.as_ref().map_or(0, |(_, t)| t.text.len()) + ids
    }
}

/// The ring of the latest exchanges, shared by every endpoint's transport and the API.
#[derive(Default)]
pub struct Exchanges {
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    list: VecDeque<Arc<Exchange>>,
    bytes: usize,
}

impl Exchanges {
    /// Keep `exchange`, forgetting the oldest beyond [`KEEP`] or [`BYTES`].
    pub fn keep(&self, exchange: Exchange) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.bytes += exchange.size();
        ring.list.push_back(Arc::new(exchange));
        while ring.list.len() > KEEP || (ring.bytes > BYTES && ring.list.len() > 1) {
            if let Some(old) = ring.list.pop_front() {
                ring.bytes -= old.size();
            }
        }
    }

    /// The latest exchange that carried `event_id` (to `endpoint`, if given).
    pub fn find(&self, event_id: &str, endpoint: Option<&str>) -> Option<Arc<Exchange>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.list
            .iter()
            .rev()
            .find(|x| {
                endpoint.is_none_or(|e| e == x.endpoint)
                    && x.event_ids.iter().any(|i| i == event_id)
            })
            .cloned()
    }

    /// Exchanges kept now, and their bytes.
    pub fn held(&self) -> (usize, usize) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (ring.list.len(), ring.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(id: &str, endpoint: &str, body: usize) -> Exchange {
        Exchange {
            at: 1,
            endpoint: endpoint.into(),
            event_ids: vec![id.into()],
            content_type: None,
            request: Text::cut(&vec![b'x'; body], BODY_BYTES),
            response: Some((200, Text::cut(b"ok", ANSWER_BYTES))),
        }
    }

    #[test]
    fn a_body_is_cut_at_a_character_and_says_its_whole_size() {
        let cases: &[(&[u8], usize, &str, bool)] = &[
            (b"hello", 10, "hello", false),
            (b"hello", 3, "hel", true),
            ("h\u{e9}llo".as_bytes(), 2, "h", true),
            ("h\u{e9}llo".as_bytes(), 3, "h\u{e9}", true),
            (&[0xff, b'o', b'k'], 10, "\u{fffd}ok", false),
            (b"", 10, "", false),
        ];
        for &(body, most, text, truncated) in cases {
            let t = Text::cut(body, most);
            assert_eq!(
                (t.text.as_str(), t.truncated),
                (text, truncated),
                "{body:?} at {most}"
            );
            assert_eq!(t.bytes, body.len());
        }
    }

    #[test]
    fn the_ring_keeps_the_latest_within_its_count_and_bytes() {
        let ring = Exchanges::default();
        for i in 0..KEEP + 10 {
            ring.keep(exchange(&format!("e{i}"), "crm", 10));
        }
        assert_eq!(ring.held().0, KEEP);
        assert!(ring.find("e0", None).is_none(), "the oldest went first");
        assert!(ring.find(&format!("e{}", KEEP + 9), None).is_some());
        // Large bodies: bounded by bytes, whatever their count.
        for i in 0..40 {
            ring.keep(exchange(&format!("big{i}"), "crm", BODY_BYTES * 4));
        }
        let (n, bytes) = ring.held();
        assert!(bytes <= BYTES, "{bytes}");
        assert!(n < 40 && n > 1, "{n}");
        assert!(ring.find("big39", Some("crm")).is_some());
        assert!(
            ring.find("big39", Some("other")).is_none(),
            "another endpoint's"
        );
        // Batches of many events: their ids count too.
        for i in 0..KEEP {
            let mut batch = exchange(&format!("b{i}"), "crm", 10);
            batch.event_ids = (0..1_000).map(|n| format!("{i}-{n:036}")).collect();
            ring.keep(batch);
        }
        let (n, bytes) = ring.held();
        assert!(bytes <= BYTES && n < KEEP, "{n} exchanges, {bytes} bytes");
    }

    #[test]
    fn the_latest_attempt_of_an_event_is_found() {
        let ring = Exchanges::default();
        let mut first = exchange("e1", "crm", 1);
        first.response = Some((503, Text::cut(b"busy", ANSWER_BYTES)));
        ring.keep(first);
        ring.keep(exchange("e1", "crm", 1));
        assert_eq!(
            ring.find("e1", None).unwrap().response.as_ref().unwrap().0,
            200
        );
    }
}
