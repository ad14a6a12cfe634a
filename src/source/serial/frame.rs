//! Serial framing: bytes from a port → device messages, as a pure, incremental decoder.
//!
//! Every frame is one line ending in `\n` (a `\r` before it is dropped). Two formats:
//!
//! **`json_lines`** — one JSON object per line, with the device id in a configured field
//! (default `device`), which is removed from the fields:
//! `{"device":"desk-12","presence":true,"temperature":21.4}`. An object holding only the device
//! id and `status` (`online`/`offline`) is a status report.
//!
//! **`text`** — a compact protocol for cheap sensors, NMEA-style:
//!
//! ```text
//! $OCC,desk-12,1,21.4*7C\r\n
//!  ^^^ ^^^^^^^ ^^^^^^^^ ^^
//!  |   |       |        checksum: XOR of every byte between `$` and `*`, two hex digits
//!  |   |       values, named by the port's `sentences` table (OCC = presence, temperature, seq)
//!  |   device id
//!  sentence type: 1–8 capital letters or digits
//! ```
//!
//! Values that read as numbers become JSON numbers, `true`/`false` booleans, anything else a
//! string; an empty value is left out; a frame may carry fewer values than its sentence names,
//! never more. The built-in sentence `STA` reports status: `$STA,desk-12,offline*XX`.
//!
//! **Actions** go the other way, as command frames, and devices answer with result frames:
//!
//! ```text
//! → $ACT,desk-12,a-17,identify,seconds=10*XX          text: action id, name, params
//! ← $RES,desk-12,a-17,succeeded*XX                     (or failed,<reason>)
//! → {"device":"desk-12","action":"identify","id":"a-17","params":{"seconds":10},"deadline":"…"}
//! ← {"device":"desk-12","action_id":"a-17","status":"succeeded","result":{…}}
//! ```
//!
//! In a text command, an object's params are `key=value` fields in key order, an array's its
//! values, a scalar itself; `,`, `*`, `$`, `%`, `=` and control characters in a value or key are
//! written `%XX` (hex), so a command is always one well-formed frame. A result's reason is
//! decoded the same way.
//!
//! **Faults** are counted per kind and skipped, and the decoder resynchronises on the next
//! frame: a line longer than `max_frame_bytes` is dropped up to its newline (`overlong`, counted
//! once, however long it runs); bytes before a frame's `$` are `garbage` (the frame after them
//! still counts); a bad checksum, invalid UTF-8, a malformed frame or JSON are errors of their own
//! kind. Memory is bounded by `max_frame_bytes`; nothing blocks; nothing panics (fuzzed:
//! `fuzz/fuzz_targets/serial_frames.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Number, Value};

use crate::source::{check_device_id, InboundBody};

/// The built-in status sentence of the text protocol.
pub const STATUS_SENTENCE: &str = "STA";
/// The command sentence (gateway → device) and the result sentence (device → gateway).
pub const ACTION_SENTENCE: &str = "ACT";
pub const RESULT_SENTENCE: &str = "RES";

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub device_id: String,
    pub body: InboundBody,
}

/// Why bytes were skipped. Counted per [`FrameError::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("line longer than {limit} bytes; skipped up to its newline")]
    Overlong { limit: usize },
    #[error("{len} bytes of garbage before a frame")]
    Garbage { len: usize },
    #[error("checksum {got:02X} does not match the frame's {expected:02X}")]
    BadChecksum { expected: u8, got: u8 },
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("unknown sentence type `{0}`")]
    UnknownSentence(String),
    #[error("line is not valid JSON: {0}")]
    NotJson(String),
    #[error("line is JSON but not an object")]
    NotAnObject,
    #[error("no device id (field `{0}`)")]
    NoDeviceId(String),
    #[error("device id `{0}` is empty, too long or has control characters")]
    BadDeviceId(String),
}

impl FrameError {
    /// Every kind, for metrics.
    pub const KINDS: [&'static str; 10] = [
        "overlong",
        "garbage",
        "bad_checksum",
        "not_utf8",
        "malformed",
        "unknown_sentence",
        "not_json",
        "not_object",
        "no_device_id",
        "bad_device_id",
    ];

    pub fn kind(&self) -> &'static str {
        Self::KINDS[match self {
            FrameError::Overlong { .. } => 0,
            FrameError::Garbage { .. } => 1,
            FrameError::BadChecksum { .. } => 2,
            FrameError::NotUtf8 => 3,
            FrameError::Malformed(_) => 4,
            FrameError::UnknownSentence(_) => 5,
            FrameError::NotJson(_) => 6,
            FrameError::NotAnObject => 7,
            FrameError::NoDeviceId(_) => 8,
            FrameError::BadDeviceId(_) => 9,
        }]
    }
}

/// What a port's lines mean.
#[derive(Debug, Clone)]
pub enum Format {
    JsonLines {
        device_field: String,
    },
    Text {
        sentences: BTreeMap<String, Vec<String>>,
    },
}

/// The incremental decoder of one port.
#[derive(Debug)]
pub struct FrameDecoder {
    format: Format,
    metadata: Arc<[String]>,
    max_len: usize,
    /// The line so far (never longer than `max_len`).
    line: Vec<u8>,
    /// Dropping an overlong line up to its newline.
    discarding: bool,
}

/// XOR of `body`'s bytes: the text protocol's checksum.
pub fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0, |acc, b| acc ^ b)
}

impl FrameDecoder {
    pub fn new(format: Format, metadata: Arc<[String]>, max_len: usize) -> FrameDecoder {
        FrameDecoder {
            format,
            metadata,
            max_len,
            line: Vec::with_capacity(max_len.min(4096)),
            discarding: false,
        }
    }

    /// Feed bytes as they arrive; complete frames and faults are appended to `out` in order.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Result<Frame, FrameError>>) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            let (chunk, rest) = match newline {
                Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
                None => (bytes, None),
            };
            if !self.discarding {
                if self.line.len() + chunk.len() > self.max_len {
                    self.line.clear();
                    self.discarding = true;
                    out.push(Err(FrameError::Overlong {
                        limit: self.max_len,
                    }));
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            match rest {
                Some(rest) => {
                    if !self.discarding {
                        let line = std::mem::take(&mut self.line);
                        self.decode_line(&line, out);
                        self.line = line;
                        self.line.clear();
                    }
                    self.discarding = false;
                    bytes = rest;
                }
                None => return,
            }
        }
    }

    fn decode_line(&self, line: &[u8], out: &mut Vec<Result<Frame, FrameError>>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match &self.format {
            Format::JsonLines { device_field } => out.push(self.json_line(line, device_field)),
            Format::Text { sentences } => {
                let Some(start) = line.iter().rposition(|b| *b == b'$') else {
                    out.push(Err(FrameError::Garbage { len: line.len() }));
                    return;
                };
                let prefix = &line[..start];
                if !prefix.iter().all(u8::is_ascii_whitespace) {
                    out.push(Err(FrameError::Garbage { len: prefix.len() }));
                }
                out.push(self.text_frame(&line[start + 1..], sentences));
            }
        }
    }

    fn json_line(&self, line: &[u8], device_field: &str) -> Result<Frame, FrameError> {
        let text = std::str::from_utf8(line).map_err(|_| FrameError::NotUtf8)?;
        let mut fields = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => return Err(FrameError::NotAnObject),
            Err(e) => return Err(FrameError::NotJson(e.to_string())),
        };
        let device_id = match fields.remove(device_field) {
            Some(Value::String(id)) => id,
            _ => return Err(FrameError::NoDeviceId(device_field.to_string())),
        };
        check_device(&device_id)?;
        if fields.contains_key("action_id") {
            let body =
                super::super::action_result(&fields, "action_id").map_err(FrameError::Malformed)?;
            return Ok(Frame { device_id, body });
        }
        let body = match (fields.len(), fields.get("status")) {
            (1, Some(Value::String(word))) => InboundBody::Status {
                online: status_word(word)
                    .ok_or(FrameError::Malformed("status is not online/offline"))?,
            },
            _ => InboundBody::Reading {
                fields,
                metadata: self.metadata.clone(),
            },
        };
        Ok(Frame { device_id, body })
    }

    fn text_frame(
        &self,
        frame: &[u8],
        sentences: &BTreeMap<String, Vec<String>>,
    ) -> Result<Frame, FrameError> {
        let star = frame
            .iter()
            .rposition(|b| *b == b'*')
            .ok_or(FrameError::Malformed("no `*` checksum"))?;
        let (body, sum) = (&frame[..star], frame[star + 1..].trim_ascii_end());
        let expected = std::str::from_utf8(sum)
            .ok()
            .filter(|s| s.len() == 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .ok_or(FrameError::Malformed("checksum is not two hex digits"))?;
        let got = checksum(body);
        if got != expected {
            return Err(FrameError::BadChecksum { expected, got });
        }
        let body = std::str::from_utf8(body).map_err(|_| FrameError::NotUtf8)?;
        let mut parts = body.split(',');
        let sentence = parts.next().unwrap_or_default();
        let device_id = parts.next().ok_or(FrameError::Malformed(
            "no device id after the sentence type",
        ))?;
        check_device(device_id)?;
        let body = if sentence == RESULT_SENTENCE {
            let id = parts
                .next()
                .map(unescape)
                .filter(|id| !id.is_empty() && id.len() <= 128)
                .ok_or(FrameError::Malformed("a result frame has no action id"))?;
            let succeeded = match parts.next() {
                Some("succeeded") => true,
                Some("failed") => false,
                _ => return Err(FrameError::Malformed("a result is not succeeded/failed")),
            };
            InboundBody::ActionResult {
                id,
                succeeded,
                reason: parts.next().map(unescape).filter(|r| !r.is_empty()),
                result: None,
            }
        } else if sentence == STATUS_SENTENCE {
            let word = parts.next().unwrap_or_default();
            InboundBody::Status {
                online: status_word(word)
                    .ok_or(FrameError::Malformed("status is not online/offline"))?,
            }
        } else {
            let names = sentences
                .get(sentence)
                .ok_or_else(|| FrameError::UnknownSentence(printable(sentence)))?;
            let mut fields = Map::new();
            let mut names = names.iter();
            for value in parts {
                let name = names
                    .next()
                    .ok_or(FrameError::Malformed("more values than the sentence names"))?;
                if !value.is_empty() {
                    fields.insert(name.clone(), text_value(value));
                }
            }
            InboundBody::Reading {
                fields,
                metadata: self.metadata.clone(),
            }
        };
        Ok(Frame {
            device_id: device_id.to_string(),
            body,
        })
    }
}

fn check_device(id: &str) -> Result<(), FrameError> {
    check_device_id(id).map_err(|_| FrameError::BadDeviceId(printable(id)))
}

/// At most 64 characters, without control characters, for logs.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn status_word(word: &str) -> Option<bool> {
    match word.trim().to_ascii_lowercase().as_str() {
        "online" | "on" | "1" => Some(true),
        "offline" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A text-protocol value as JSON: an integer, a finite number, a boolean, or a string.
fn text_value(v: &str) -> Value {
    if let Ok(i) = v.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Some(n) = v.parse::<f64>().ok().and_then(Number::from_f64) {
        if v.bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        {
            return Value::Number(n);
        }
    }
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(v.to_string()),
    }
}

/// `%XX` for the bytes that would break a text frame's fields.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, ',' | '*' | '$' | '%' | '=') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The reverse of [`escape`] (a malformed `%` is left as it is).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A param value as one text field.
fn text_field(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        Value::Null => String::new(),
        other => escape(&other.to_string()),
    }
}

/// An action (`message`: `{"id", "name", "params", "deadline"}`) for `device` as one command
/// frame in `format` (see the module docs).
pub fn encode_action(format: &Format, device: &str, message: &Value) -> Vec<u8> {
    let text = |key: &str| message.get(key).and_then(Value::as_str).unwrap_or_default();
    match format {
        Format::JsonLines { device_field } => {
            let mut line = serde_json::json!({
                device_field.as_str(): device,
                "action": text("name"),
                "id": text("id"),
                "params": message.get("params").cloned().unwrap_or(Value::Null),
                "deadline": text("deadline"),
            })
            .to_string()
            .into_bytes();
            line.push(b'\n');
            line
        }
        Format::Text { .. } => {
            let mut fields = vec![
                ACTION_SENTENCE.to_string(),
                escape(device),
                escape(text("id")),
                escape(text("name")),
            ];
            match message.get("params") {
                Some(Value::Object(params)) => {
                    let mut keys: Vec<&String> = params.keys().collect();
                    keys.sort();
                    for k in keys {
                        fields.push(format!("{}={}", escape(k), text_field(&params[k])));
                    }
                }
                Some(Value::Array(values)) => fields.extend(values.iter().map(text_field)),
                Some(Value::Null) | None => {}
                Some(scalar) => fields.push(text_field(scalar)),
            }
            encode_text(&fields.join(","))
        }
    }
}

/// Encode a text-protocol frame (for firmware simulators and tests): `$body*CS\r\n`.
pub fn encode_text(body: &str) -> Vec<u8> {
    format!("${body}*{:02X}\r\n", checksum(body.as_bytes())).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text_decoder(max: usize) -> FrameDecoder {
        FrameDecoder::new(
            Format::Text {
                sentences: [(
                    "OCC".to_string(),
                    vec!["presence".into(), "temperature".into(), "seq".into()],
                )]
                .into(),
            },
            Arc::from(vec!["seq".to_string()]),
            max,
        )
    }

    fn json_decoder(max: usize) -> FrameDecoder {
        FrameDecoder::new(
            Format::JsonLines {
                device_field: "device".into(),
            },
            Arc::from(Vec::<String>::new()),
            max,
        )
    }

    fn decode(d: &mut FrameDecoder, bytes: &[u8]) -> Vec<Result<Frame, FrameError>> {
        let mut out = Vec::new();
        d.push(bytes, &mut out);
        out
    }

    fn fields(frame: &Result<Frame, FrameError>) -> Value {
        match &frame.as_ref().unwrap().body {
            InboundBody::Reading { fields, .. } => Value::Object(fields.clone()),
            other => panic!("not a reading: {other:?}"),
        }
    }

    fn kinds(out: &[Result<Frame, FrameError>]) -> Vec<&'static str> {
        out.iter()
            .map(|r| match r {
                Ok(_) => "frame",
                Err(e) => e.kind(),
            })
            .collect()
    }

    #[test]
    fn the_documented_example_checksums() {
        // XOR of "OCC,desk-12,1,21.4"
        assert_eq!(
            encode_text("OCC,desk-12,1,21.4"),
            b"$OCC,desk-12,1,21.4*7C\r\n"
        );
        let out = decode(&mut text_decoder(256), b"$OCC,desk-12,1,21.4*7C\r\n");
        assert_eq!(out[0].as_ref().unwrap().device_id, "desk-12");
        assert_eq!(fields(&out[0]), json!({"presence": 1, "temperature": 21.4}));
    }

    #[test]
    fn values_status_and_lowercase_checksums() {
        let mut d = text_decoder(256);
        let out = decode(&mut d, &encode_text("OCC,d1,,-3.5e1,17"));
        assert_eq!(fields(&out[0]), json!({"temperature": -35.0, "seq": 17}));
        let out = decode(&mut d, &encode_text("OCC,d1,yes"));
        assert_eq!(fields(&out[0]), json!({"presence": "yes"}));
        let out = decode(&mut d, &encode_text("STA,d1,offline"));
        assert_eq!(
            out[0].as_ref().unwrap().body,
            InboundBody::Status { online: false }
        );
        let lower = String::from_utf8(encode_text("OCC,d1,1"))
            .unwrap()
            .to_lowercase()
            .replace("$occ,d1", "$OCC,d1");
        assert_eq!(kinds(&decode(&mut d, lower.as_bytes())), ["frame"]);
    }

    #[test]
    fn every_split_point_yields_the_same_frames() {
        let stream: Vec<u8> = [
            encode_text("OCC,a,1,20.5,1"),
            b"\r\n".to_vec(),
            encode_text("STA,b,online"),
            encode_text("OCC,b,0,19,2"),
        ]
        .concat();
        let whole = decode(&mut text_decoder(64), &stream);
        assert_eq!(kinds(&whole), ["frame", "frame", "frame"]);
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let mut d = text_decoder(64);
                let mut out = Vec::new();
                d.push(&stream[..i], &mut out);
                d.push(&stream[i..j], &mut out);
                d.push(&stream[j..], &mut out);
                assert_eq!(out, whole, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn faults_are_counted_and_the_next_frame_still_decodes() {
        let good = encode_text("OCC,a,1,20.5");
        let sum = checksum(b"OCC,a,1,20.5");
        let bad_sum = format!("$OCC,a,1,20.5*{:02X}\r\n", sum ^ 0x5A).into_bytes();
        let mut flipped = good.clone();
        flipped[6] = b'b'; // the device id corrupted in transit
        let garbage_then_frame = [b"\x00\xff noise ".as_slice(), &good].concat();
        let bad_utf8_body = b"OCC,\xc3\x28";
        let bad_utf8 = [
            b"$".as_slice(),
            bad_utf8_body,
            format!("*{:02X}\n", checksum(bad_utf8_body)).as_bytes(),
        ]
        .concat();
        let cases: &[(&[u8], &[&str])] = &[
            (&bad_sum, &["bad_checksum"]),
            (&flipped, &["bad_checksum"]),
            (&garbage_then_frame, &["garbage", "frame"]),
            (b"noise without a frame\n", &["garbage"]),
            (b"$OCC,a,1,20.5\n", &["malformed"]),
            (b"$OCC,a,1,20.5*zz\n", &["malformed"]),
            (b"$OCC,a,1,20.5*5\n", &["malformed"]),
            (&encode_text("XYZ,a,1"), &["unknown_sentence"]),
            (&encode_text("OCC,a,1,2,3,4"), &["malformed"]),
            (&encode_text("OCC"), &["malformed"]),
            (&encode_text("STA,a,maybe"), &["malformed"]),
            (&encode_text("OCC,,1"), &["bad_device_id"]),
            (&bad_utf8, &["not_utf8"]),
            (b"\n\r\n   \n", &[]),
        ];
        for (input, want) in cases {
            let mut d = text_decoder(256);
            let mut out = decode(&mut d, input);
            // whatever came before, the decoder is in sync again
            d.push(&good, &mut out);
            let mut want = want.to_vec();
            want.push("frame");
            assert_eq!(kinds(&out), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn overlong_lines_are_dropped_once_and_memory_stays_bounded() {
        let mut d = text_decoder(64);
        let mut out = Vec::new();
        for _ in 0..1024 {
            d.push(&[b'x'; 64], &mut out); // 64 KiB without a newline
        }
        assert_eq!(kinds(&out), ["overlong"]);
        assert!(d.line.capacity() <= 64);
        d.push(b"still the same line\n", &mut out);
        d.push(&encode_text("OCC,a,1"), &mut out);
        assert_eq!(kinds(&out), ["overlong", "frame"]);
        // exactly the limit is fine; one more is not
        let frame = encode_text(&format!("OCC,a,{}", "1".repeat(53)));
        assert_eq!(
            frame.len() - 1,
            64,
            "64 bytes before the newline, \\r included"
        );
        assert_eq!(kinds(&decode(&mut text_decoder(64), &frame)), ["frame"]);
        assert_eq!(kinds(&decode(&mut text_decoder(63), &frame)), ["overlong"]);
    }

    #[test]
    fn json_lines() {
        let mut d = json_decoder(256);
        let out = decode(
            &mut d,
            b"{\"device\":\"occ-1\",\"presence\":true}\n{\"device\":\"occ-1\",\"status\":\"offline\"}\r\n",
        );
        assert_eq!(out[0].as_ref().unwrap().device_id, "occ-1");
        assert_eq!(fields(&out[0]), json!({"presence": true}));
        assert_eq!(
            out[1].as_ref().unwrap().body,
            InboundBody::Status { online: false }
        );
        let cases: &[(&[u8], &str)] = &[
            (b"{oops\n", "not_json"),
            (b"[1,2]\n", "not_object"),
            (b"{\"presence\":true}\n", "no_device_id"),
            (b"{\"device\":7}\n", "no_device_id"),
            (b"{\"device\":\"a\\nb\"}\n", "bad_device_id"),
            (b"{\"device\":\"\xff\"}\n", "not_utf8"),
            (b"{\"device\":\"a\",\"status\":\"maybe\"}\n", "malformed"),
        ];
        for (input, want) in cases {
            assert_eq!(
                kinds(&decode(&mut d, input)),
                [*want],
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn actions_are_written_as_one_well_formed_frame_per_format() {
        let message = json!({"id": "a-17", "name": "identify", "params": {"seconds": 10, "note": "a,b*c$d%e=f\n"}, "deadline": "2026-12-03T18:00:00.000Z"});
        let text = Format::Text {
            sentences: BTreeMap::new(),
        };
        // (format, params, the frame)
        let rows: Vec<(&Format, Value, &str)> = vec![
            (
                &text,
                message["params"].clone(),
                "ACT,desk-12,a-17,identify,note=a%2Cb%2Ac%24d%25e%3Df%0A,seconds=10",
            ),
            (
                &text,
                json!([1, "x", true]),
                "ACT,desk-12,a-17,identify,1,x,true",
            ),
            (&text, json!("now"), "ACT,desk-12,a-17,identify,now"),
            (&text, Value::Null, "ACT,desk-12,a-17,identify"),
        ];
        for (format, params, body) in rows {
            let mut m = message.clone();
            m["params"] = params;
            let frame = encode_action(format, "desk-12", &m);
            assert_eq!(
                String::from_utf8(frame).unwrap(),
                String::from_utf8(encode_text(body)).unwrap()
            );
        }
        let json = Format::JsonLines {
            device_field: "dev".into(),
        };
        let line = encode_action(&json, "desk-12", &message);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        let back: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            back,
            json!({"dev": "desk-12", "action": "identify", "id": "a-17", "params": message["params"], "deadline": "2026-12-03T18:00:00.000Z"})
        );
        assert_eq!(unescape(&escape("a,b*c$d%e=f\n✓")), "a,b*c$d%e=f\n✓");
    }

    #[test]
    fn results_come_back_as_frames_or_are_named_faults() {
        let result = |id: &str, succeeded: bool, reason: Option<&str>, result: Option<Value>| {
            Ok(Frame {
                device_id: "desk-12".into(),
                body: InboundBody::ActionResult {
                    id: id.into(),
                    succeeded,
                    reason: reason.map(str::to_string),
                    result,
                },
            })
        };
        let rows: Vec<(FrameDecoder, Vec<u8>, Result<Frame, FrameError>)> = vec![
            (text_decoder(256), encode_text("RES,desk-12,a-17,succeeded"), result("a-17", true, None, None)),
            (text_decoder(256), encode_text("RES,desk-12,a-17,failed,no%2C not now"), result("a-17", false, Some("no, not now"), None)),
            (text_decoder(256), encode_text("RES,desk-12,a-17,maybe"), Err(FrameError::Malformed("a result is not succeeded/failed"))),
            (text_decoder(256), encode_text("RES,desk-12"), Err(FrameError::Malformed("a result frame has no action id"))),
            (json_decoder(256), b"{\"device\":\"desk-12\",\"action_id\":\"a-17\",\"status\":\"succeeded\",\"result\":{\"ok\":1}}\n".to_vec(), result("a-17", true, None, Some(json!({"ok": 1})))),
            (json_decoder(256), b"{\"device\":\"desk-12\",\"action_id\":\"a-17\",\"status\":\"failed\",\"reason\":\"jammed\"}\n".to_vec(), result("a-17", false, Some("jammed"), None)),
            (json_decoder(256), b"{\"device\":\"desk-12\",\"action_id\":\"a-17\",\"status\":\"online\"}\n".to_vec(), Err(FrameError::Malformed("an action result's status is not succeeded/failed"))),
            (json_decoder(256), b"{\"device\":\"desk-12\",\"action_id\":7,\"status\":\"failed\"}\n".to_vec(), Err(FrameError::Malformed("the action id is not a string of 1 to 128 characters"))),
        ];
        for (mut decoder, bytes, expected) in rows {
            let got = decode(&mut decoder, &bytes);
            assert_eq!(got, vec![expected], "{}", String::from_utf8_lossy(&bytes));
        }
    }
}
