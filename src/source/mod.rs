//! Sources: where device messages come from — [`mqtt`], [`serial`] and [`modbus`]. Each source decodes its
//! transport into [`Inbound`] messages for the device stage, and hands along an [`Ack`] (where
//! the transport has one) that the outbox runs once everything the message produced is durable.
//!
//! A source is a value with `run(self, out: mpsc::Sender<Inbound>, cancel)`, which reads its
//! transport until cancelled (or until the device stage is gone) and reconnects with the
//! shared [`backoff`]. Adding one is a module here, its section in [`config`] (or its own, as
//! `modbus::config`), and one `tracker.spawn(source.run(..))` line in `crate::daemon`.

mod acks;
pub mod backoff;
pub mod config;
pub mod metrics;
pub mod modbus;
pub mod mqtt;
pub mod presets;
pub mod redelivery;
pub mod serial;

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// One decoded device message.
#[derive(Debug)]
pub struct Inbound {
    pub device_id: String,
    pub body: InboundBody,
    /// Acknowledges the transport message; run only after the outbox has flushed.
    pub ack: Option<Ack>,
    /// A retained MQTT message, which the broker kept and delivers at every (re)subscribe:
    /// what the device said some time ago, not now (see `device::health::retained_is_news`).
    pub retained: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboundBody {
    /// A reading: a JSON object of fields.
    Reading {
        fields: Map<String, Value>,
        /// Fields ignored for change detection (still carried in the event).
        metadata: Arc<[String]>,
    },
    /// A birth (`online = true`) or last-will / status `offline` message.
    Status { online: bool },
    /// A device's answer to an action: `{"id", "status": "succeeded"|"failed", "reason",
    /// "result"}`.
    ActionResult {
        id: String,
        succeeded: bool,
        reason: Option<String>,
        result: Option<Value>,
    },
}

/// A message to a device (an action): published at QoS 1 on `topic` by the MQTT source, or
/// written as a command frame by the serial source of the port the device is heard on (see
/// [`Router`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub device: String,
    pub topic: String,
    /// `{"id", "name", "params", "deadline"}`.
    pub message: Value,
}

impl Outgoing {
    /// The MQTT payload: the message as JSON.
    pub fn payload(&self) -> Vec<u8> {
        self.message.to_string().into_bytes()
    }
}

/// Where a device's actions go: the serial port it was last heard on, else the broker; none
/// to a device on a Modbus bus (edgehook reads its registers and writes none).
#[derive(Clone, Default)]
pub struct Router {
    mqtt: Option<tokio::sync::mpsc::Sender<Outgoing>>,
    serial: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, tokio::sync::mpsc::Sender<Outgoing>>>,
    >,
    modbus: std::sync::Arc<std::collections::HashSet<String>>,
}

/// Why an action to a Modbus device is not sent.
pub const MODBUS_TAKES_NO_ACTIONS: &str =
    "the device is on a Modbus bus, which edgehook reads and never writes: it takes no actions";

impl Router {
    pub fn new(mqtt: Option<tokio::sync::mpsc::Sender<Outgoing>>) -> Router {
        Router {
            mqtt,
            serial: Default::default(),
            modbus: Default::default(),
        }
    }

    /// The devices on Modbus buses: an action to one of them is not sent anywhere.
    pub fn with_modbus(mut self, devices: impl IntoIterator<Item = String>) -> Router {
        self.modbus = std::sync::Arc::new(devices.into_iter().collect());
        self
    }

    /// `device` is heard on the serial port that `port` writes to.
    pub fn heard_on_serial(&self, device: &str, port: &tokio::sync::mpsc::Sender<Outgoing>) {
        let mut serial = self.serial.lock().expect("not poisoned");
        if !serial.get(device).is_some_and(|p| p.same_channel(port)) {
            serial.insert(device.to_string(), port.clone());
        }
    }

    /// `devices` are no longer reachable on the port (it closed).
    pub fn left_serial(&self, devices: impl IntoIterator<Item = impl AsRef<str>>) {
        let mut serial = self.serial.lock().expect("not poisoned");
        for d in devices {
            serial.remove(d.as_ref());
        }
    }

    /// Hand `message` on without waiting; `Err` says why it could not be.
    pub fn send(&self, message: Outgoing) -> Result<(), &'static str> {
        if self.modbus.contains(&message.device) {
            return Err(MODBUS_TAKES_NO_ACTIONS);
        }
        let port = self
            .serial
            .lock()
            .expect("not poisoned")
            .get(&message.device)
            .cloned();
        match (port, &self.mqtt) {
            (Some(port), _) => port
                .try_send(message)
                .map_err(|_| "the serial port's queue is full or the port has closed"),
            (None, Some(mqtt)) => mqtt
                .try_send(message)
                .map_err(|_| "the MQTT source's queue is full"),
            (None, None) => Err("the device is not on a serial port and no broker is configured"),
        }
    }
}

/// A deferred transport acknowledgement (an MQTT PUBACK).
pub struct Ack {
    send: Box<dyn FnOnce() + Send + Sync>,
    /// The message's fingerprint (MQTT: `redelivery::Redeliveries::fingerprint`), kept by
    /// the outbox with the batch it was applied in, so that its redelivery after a crash is
    /// recognised.
    pub fingerprint: Option<u64>,
}

impl Ack {
    pub fn new(f: impl FnOnce() + Send + Sync + 'static) -> Ack {
        Ack {
            send: Box::new(f),
            fingerprint: None,
        }
    }
    pub fn with_fingerprint(fingerprint: u64, f: impl FnOnce() + Send + Sync + 'static) -> Ack {
        Ack {
            send: Box::new(f),
            fingerprint: Some(fingerprint),
        }
    }
    pub fn send(self) {
        (self.send)()
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ack")
    }
}

/// Why a message could not be decoded. Counted per kind; the message is skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {size} bytes is over the {limit}-byte limit")]
    Oversize { size: usize, limit: usize },
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("payload is JSON but not an object of fields")]
    NotAnObject,
    #[error("status payload is neither online nor offline")]
    BadStatus,
    #[error("device id `{0}` is empty, too long or has control characters")]
    BadDeviceId(String),
    #[error("payload has no object of fields at `{0}`")]
    NoFields(String),
    #[error("the subscription's jq mapping failed on the payload: {0}")]
    Mapping(String),
    #[error("payload has no device id (a string or number) at `{0}`")]
    NoDevice(String),
}

impl DecodeError {
    /// Every kind, for metrics.
    pub const KINDS: [&'static str; 8] = [
        "oversize",
        "not_json",
        "not_object",
        "bad_status",
        "bad_device_id",
        "no_fields",
        "mapping",
        "no_device",
    ];

    /// A short stable name, used as a metric label.
    pub fn kind(&self) -> &'static str {
        Self::KINDS[match self {
            DecodeError::Oversize { .. } => 0,
            DecodeError::NotJson(_) => 1,
            DecodeError::NotAnObject => 2,
            DecodeError::BadStatus => 3,
            DecodeError::BadDeviceId(_) => 4,
            DecodeError::NoFields(_) => 5,
            DecodeError::Mapping(_) => 6,
            DecodeError::NoDevice(_) => 7,
        }]
    }
}

/// Device ids become sled keys, URL-less JSON strings and log fields: keep them sane.
pub fn check_device_id(id: &str) -> Result<(), DecodeError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        let shown: String = id.chars().take(64).filter(|c| !c.is_control()).collect();
        return Err(DecodeError::BadDeviceId(shown));
    }
    Ok(())
}

/// `payload` as JSON, if it is within `limit` bytes and JSON at all.
pub fn parse_json(payload: &[u8], limit: usize) -> Result<Value, DecodeError> {
    if payload.len() > limit {
        return Err(DecodeError::Oversize {
            size: payload.len(),
            limit,
        });
    }
    serde_json::from_slice::<Value>(payload).map_err(|e| DecodeError::NotJson(e.to_string()))
}

/// Decode an action result payload: `{"id", "status": "succeeded"|"failed", "reason",
/// "result"}`.
pub fn decode_action_result(payload: &[u8], limit: usize) -> Result<InboundBody, DecodeError> {
    let value = parse_json(payload, limit)?;
    let fields = value.as_object().ok_or(DecodeError::BadStatus)?;
    action_result(fields, "id").map_err(|_| DecodeError::BadStatus)
}

/// An action result from a JSON object, its action id under `id_key` (MQTT: `id`; a serial
/// JSON line, whose `id` could be anything of the device's: `action_id`); `status` is
/// `succeeded` (or `ok`) or `failed` (or `error`). `Err` says what is wrong.
pub fn action_result(
    fields: &Map<String, Value>,
    id_key: &str,
) -> Result<InboundBody, &'static str> {
    let id = fields
        .get(id_key)
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .ok_or("the action id is not a string of 1 to 128 characters")?;
    let succeeded = match fields.get("status").and_then(Value::as_str) {
        Some("succeeded" | "ok") => true,
        Some("failed" | "error") => false,
        _ => return Err("an action result's status is not succeeded/failed"),
    };
    Ok(InboundBody::ActionResult {
        id: id.to_string(),
        succeeded,
        reason: fields
            .get("reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        result: fields.get("result").cloned(),
    })
}

/// Decode a reading payload: a JSON object of fields.
pub fn decode_reading(payload: &[u8], limit: usize) -> Result<Map<String, Value>, DecodeError> {
    decode_fields(payload, limit, "", false)
}

/// Decode a reading payload: the object of fields at JSON pointer `at` (empty: the payload),
/// with nested objects flattened to dotted names when `flatten`.
pub fn decode_fields(
    payload: &[u8],
    limit: usize,
    at: &str,
    flatten: bool,
) -> Result<Map<String, Value>, DecodeError> {
    let value = parse_json(payload, limit)?;
    let fields = match (at, value) {
        ("", Value::Object(fields)) => fields,
        ("", _) => return Err(DecodeError::NotAnObject),
        (at, mut value) => match value.pointer_mut(at).map(Value::take) {
            Some(Value::Object(fields)) => fields,
            _ => return Err(DecodeError::NoFields(at.to_string())),
        },
    };
    Ok(if flatten { flattened(fields) } else { fields })
}

/// Nested objects as dotted names: `{"a":{"b":1},"c":2}` is `{"a.b":1,"c":2}`.
fn flattened(fields: Map<String, Value>) -> Map<String, Value> {
    fn walk(prefix: &str, fields: Map<String, Value>, out: &mut Map<String, Value>) {
        for (k, v) in fields {
            let name = if prefix.is_empty() {
                k
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Object(inner) => walk(&name, inner, out),
                v => {
                    out.insert(name, v);
                }
            }
        }
    }
    let mut out = Map::new();
    walk("", fields, &mut out);
    out
}

/// Decode a status payload: `online` / `offline`, bare or as `{"status": "online"}`.
pub fn decode_status(payload: &[u8], limit: usize) -> Result<bool, DecodeError> {
    if payload.len() > limit {
        return Err(DecodeError::Oversize {
            size: payload.len(),
            limit,
        });
    }
    let word = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "online" | "on" | "connected" | "1" | "true" => Some(true),
        "offline" | "off" | "disconnected" | "0" | "false" => Some(false),
        _ => None,
    };
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::BadStatus)?;
    if let Some(online) = word(text) {
        return Ok(online);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => match (o.get("status").or(o.get("state")), o.get("online")) {
            (Some(Value::String(s)), _) => word(s).ok_or(DecodeError::BadStatus),
            (_, Some(Value::Bool(b))) => Ok(*b),
            _ => Err(DecodeError::BadStatus),
        },
        Ok(Value::Bool(b)) => Ok(b),
        Ok(Value::String(s)) => word(&s).ok_or(DecodeError::BadStatus),
        _ => Err(DecodeError::BadStatus),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_must_be_json_objects_within_the_limit() {
        assert!(decode_reading(br#"{"t": 1}"#, 100).is_ok());
        assert_eq!(
            decode_reading(b"[1,2]", 100).unwrap_err(),
            DecodeError::NotAnObject
        );
        assert_eq!(decode_reading(b"42", 100).unwrap_err().kind(), "not_object");
        assert_eq!(
            decode_reading(b"{oops", 100).unwrap_err().kind(),
            "not_json"
        );
        assert_eq!(
            decode_reading(&[0xff, 0xfe], 100).unwrap_err().kind(),
            "not_json"
        );
        assert_eq!(
            decode_reading(&[b' '; 101], 100).unwrap_err(),
            DecodeError::Oversize {
                size: 101,
                limit: 100
            }
        );
    }

    #[test]
    fn status_accepts_bare_words_and_objects() {
        assert_eq!(decode_status(b"online", 64), Ok(true));
        assert_eq!(decode_status(b" OFFLINE\n", 64), Ok(false));
        assert_eq!(decode_status(br#"{"status":"offline"}"#, 64), Ok(false));
        assert_eq!(decode_status(br#"{"online":true}"#, 64), Ok(true));
        assert_eq!(decode_status(br#""online""#, 64), Ok(true));
        assert_eq!(decode_status(b"maybe", 64), Err(DecodeError::BadStatus));
        assert_eq!(
            decode_status(&[0xc3, 0x28], 64),
            Err(DecodeError::BadStatus)
        );
    }

    /// Where each device's action goes: its serial port, else the broker; never to a Modbus
    /// device (nor to the broker in its stead, where nobody would answer).
    #[test]
    fn actions_go_to_the_serial_port_else_the_broker_never_to_a_modbus_device() {
        let (mqtt, mut broker) = tokio::sync::mpsc::channel(4);
        let (port, mut line) = tokio::sync::mpsc::channel(4);
        let router = Router::new(Some(mqtt)).with_modbus(["counter-1".to_string()]);
        router.heard_on_serial("panel-1", &port);
        let action = |device: &str| Outgoing {
            device: device.into(),
            topic: format!("devices/{device}/actions"),
            message: serde_json::json!({"id": "a1"}),
        };
        assert_eq!(router.send(action("panel-1")), Ok(()));
        assert_eq!(router.send(action("occ-1")), Ok(()));
        assert_eq!(
            router.send(action("counter-1")),
            Err(MODBUS_TAKES_NO_ACTIONS)
        );
        assert_eq!(line.try_recv().unwrap().device, "panel-1");
        assert_eq!(broker.try_recv().unwrap().device, "occ-1");
        assert!(broker.try_recv().is_err() && line.try_recv().is_err());
        // Without a broker, a device on no serial port has nowhere to go.
        let alone = Router::new(None);
        assert!(alone.send(action("occ-1")).is_err());
    }

    #[test]
    fn device_ids_are_checked() {
        assert!(check_device_id("occ-12").is_ok());
        assert!(check_device_id("").is_err());
        assert!(check_device_id("a\nb").is_err());
        assert!(check_device_id(&"x".repeat(129)).is_err());
    }
}
