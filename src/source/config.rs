//! `[mqtt]` and `[[serial_ports]]`: the sources' configuration and its checks (run by
//! `check-config` and at start, as every stage's are).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Client id; must be stable, because the broker keeps our session (and the QoS 1 messages
    /// we have not acknowledged yet) under it. Empty means `edgehook-<gateway_id>`.
    pub client_id: String,
    pub username: String,
    pub password: Secret,
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub keep_alive: Duration,
    /// Keep the broker-side session across reconnects and restarts so that nothing published
    /// while edgehook was away is lost. Only turn off for brokers that cannot persist sessions.
    pub persistent_session: bool,
    /// Payloads larger than this are counted and skipped.
    pub max_payload_bytes: usize,
    /// Largest MQTT packet the client reads in the normal course. A message over it that the
    /// broker delivers anyway is read once at a raised limit (at most 16 MiB), counted as
    /// oversize and acknowledged, so that it cannot block the session; set the broker's own
    /// `max_packet_size` to at most this so that it refuses such messages from the start.
    pub max_packet_bytes: usize,
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub reconnect_min: Duration,
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub reconnect_max: Duration,
    pub tls: TlsConfig,
    pub subscriptions: Vec<Subscription>,
    /// Ecosystems whose topics and payloads edgehook knows (`zigbee2mqtt`, `chirpstack`,
    /// `the_things_stack`, `tasmota`, `shelly`): each adds its subscriptions after these
    /// (see [`super::presets`]).
    #[serde(default)]
    pub presets: Vec<super::presets::Preset>,
    /// The LoRaWAN presets (`chirpstack`, `the_things_stack`) carry each uplink's radio
    /// metadata as fields: `rssi` and `snr` (the best gateway's) and `f_cnt` (the frame
    /// counter) — carried in readings, not compared (an uplink that changes only them reports
    /// nothing). Off by default.
    #[serde(default)]
    pub radio_metadata: bool,
}

impl MqttConfig {
    /// The subscriptions in force: the configured ones, then each preset's.
    pub fn all_subscriptions(&self) -> Vec<Subscription> {
        let mut all = self.subscriptions.clone();
        for preset in &self.presets {
            all.extend(preset.subscriptions_with(self.radio_metadata));
        }
        all
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub enabled: bool,
    /// PEM file of extra CA certificates (a private broker CA). The bundled web PKI roots are
    /// always trusted as well. Certificates are always verified.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key, for brokers that authenticate clients by certificate.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// What the payloads on a subscription mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum PayloadKind {
    /// A JSON object of fields: one reading of the device.
    Reading,
    /// A device's birth / last-will: `online` / `offline` (or `true` / `false`), bare or as
    /// `{"status": "..."}` or `{"state": "..."}`.
    Status,
    /// Any message means the device is online (a LoRaWAN join).
    Online,
    /// A device's answer to an action: `{"id", "status": "succeeded"|"failed", "reason",
    /// "result"}`.
    ActionResult,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Topic pattern with exactly one `{device}` segment capturing the device id, e.g.
    /// `sensors/{device}/reading`. `+` and a trailing `#` are allowed elsewhere.
    pub topic: String,
    pub kind: PayloadKind,
    /// Fields carried in events but ignored for change detection (sequence numbers, timestamps).
    #[serde(default)]
    pub metadata_fields: Vec<String>,
    /// Readings: a JSON pointer to the object of fields in the payload (`/object`,
    /// `/uplink_message/decoded_payload`). Empty: the payload is the object of fields.
    #[serde(default)]
    pub fields: String,
    /// Readings: nested objects become dotted field names (`{"AM2301":{"Temperature":21}}`
    /// gives `AM2301.Temperature`).
    #[serde(default)]
    pub flatten: bool,
    /// Topics that match `topic` but carry no device message (`zigbee2mqtt/bridge/#`), as
    /// patterns like `topic` (a `{device}` level is allowed, not needed): skipped.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A jq filter (run by jaq, as templates are: no clock, environment or input) that maps
    /// the JSON payload before the rest applies: for a reading, to an object of fields (then
    /// `fields` and `flatten` apply to it); for a status, to `true`/`false`, `"online"` or
    /// `{"state": ...}`. `empty` skips the message (it is no device message); a filter that
    /// fails on a payload counts it as a `mapping` decode error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jq: String,
    /// A JSON pointer to the device id in the payload (as received), for ecosystems that name
    /// the device inside the message (`/deviceInfo/devEui`); then `topic` needs no `{device}`
    /// level, and the payload's id wins over the topic's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
}

/// One serial port and how its bytes become device messages. Frames are lines; see
/// [`crate::source::serial::frame`] for the exact formats.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SerialPortConfig {
    /// The device node, ideally a stable name: `/dev/serial/by-id/usb-FTDI_...`.
    pub path: PathBuf,
    #[serde(default = "default_baud_rate")]
    pub baud_rate: u32,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    pub framing: SerialFraming,
    /// `json_lines`: the field of each object that holds the device id (removed from the
    /// reading's fields).
    #[serde(default = "default_device_field")]
    pub device_field: String,
    /// `text`: sentence type → the names of its values, in order, after the device id.
    #[serde(default = "default_sentences")]
    pub sentences: BTreeMap<String, Vec<String>>,
    /// Fields carried in events but ignored for change detection.
    #[serde(default)]
    pub metadata_fields: Vec<String>,
    /// Longest frame (line, without its newline); longer lines are counted and skipped.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Reopen backoff after the port fails or disappears (USB unplugged): doubles from
    /// `reopen_min` to `reopen_max`.
    #[serde(default = "default_reopen_min", with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub reopen_min: Duration,
    #[serde(default = "default_reopen_max", with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub reopen_max: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SerialFraming {
    /// One JSON object per line, with the device id in `device_field`.
    JsonLines,
    /// `$TYPE,device,v1,v2*CS` lines with an XOR checksum.
    Text,
}

fn default_baud_rate() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_device_field() -> String {
    "device".into()
}
fn default_sentences() -> BTreeMap<String, Vec<String>> {
    [(
        "OCC".to_string(),
        vec!["presence".into(), "temperature".into(), "seq".into()],
    )]
    .into()
}
fn default_max_frame_bytes() -> usize {
    1024
}
pub(crate) fn default_reopen_min() -> Duration {
    Duration::from_millis(500)
}
pub(crate) fn default_reopen_max() -> Duration {
    Duration::from_secs(30)
}

/// The sources' checks: the key that is wrong and why.
pub fn validate(
    mqtt: &MqttConfig,
    serial_ports: &[SerialPortConfig],
    modbus: &super::modbus::config::ModbusConfig,
) -> Result<(), (String, String)> {
    let bad = |key: &str, msg: String| Err((key.to_string(), msg));
    if mqtt.host.trim().is_empty() {
        return bad("mqtt.host", "must not be empty".into());
    }
    if mqtt.port == 0 {
        return bad("mqtt.port", "must be 1-65535".into());
    }
    if mqtt.keep_alive < Duration::from_secs(5) {
        return bad("mqtt.keep_alive", "must be at least 5s".into());
    }
    if mqtt.max_payload_bytes == 0 || mqtt.max_payload_bytes >= mqtt.max_packet_bytes {
        return bad(
            "mqtt.max_payload_bytes",
            format!(
                "must be above 0 and below mqtt.max_packet_bytes ({})",
                mqtt.max_packet_bytes
            ),
        );
    }
    if mqtt.reconnect_min.is_zero() || mqtt.reconnect_min > mqtt.reconnect_max {
        return bad(
            "mqtt.reconnect_min",
            "must be above 0 and at most mqtt.reconnect_max".into(),
        );
    }
    if mqtt.tls.client_cert.is_some() != mqtt.tls.client_key.is_some() {
        return bad(
            "mqtt.tls.client_key",
            "client_cert and client_key must be given together".into(),
        );
    }
    let no_source = mqtt.subscriptions.is_empty()
        && mqtt.presets.is_empty()
        && serial_ports.is_empty()
        && modbus.buses.is_empty();
    if no_source {
        return bad(
                "mqtt.subscriptions",
                "no device source: add a subscription, e.g. topic = \"sensors/{device}/reading\", kind = \"reading\", a preset (mqtt.presets = [\"zigbee2mqtt\"]), a [[serial_ports]] entry or a [[modbus.buses]] entry".into(),
            );
    }
    let paths: Vec<&std::path::Path> = serial_ports.iter().map(|p| p.path.as_path()).collect();
    super::modbus::config::validate(modbus, &paths)?;
    for (i, port) in serial_ports.iter().enumerate() {
        let key = |k: &str| format!("serial_ports[{i}].{k}");
        if port.path.as_os_str().is_empty() {
            return bad(&key("path"), "must name the device node".into());
        }
        if serial_ports[..i].iter().any(|p| p.path == port.path) {
            return bad(
                &key("path"),
                format!("{} is listed twice", port.path.display()),
            );
        }
        if port.baud_rate == 0 {
            return bad(
                &key("baud_rate"),
                "must be above 0, e.g. 9600 or 115200".into(),
            );
        }
        if !(5..=8).contains(&port.data_bits) {
            return bad(&key("data_bits"), "must be 5, 6, 7 or 8".into());
        }
        if !(1..=2).contains(&port.stop_bits) {
            return bad(&key("stop_bits"), "must be 1 or 2".into());
        }
        if !(16..=65536).contains(&port.max_frame_bytes) {
            return bad(
                &key("max_frame_bytes"),
                "must be between 16 and 65536".into(),
            );
        }
        if port.reopen_min.is_zero() || port.reopen_min > port.reopen_max {
            return bad(
                &key("reopen_min"),
                "must be above 0 and at most reopen_max".into(),
            );
        }
        if port.framing == SerialFraming::JsonLines && port.device_field.is_empty() {
            return bad(&key("device_field"), "must not be empty".into());
        }
        for (sentence, fields) in &port.sentences {
            let valid = !sentence.is_empty()
                && sentence.len() <= 8
                && sentence
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            if !valid || sentence == super::serial::frame::STATUS_SENTENCE {
                return bad(
                    &key(&format!("sentences.{sentence}")),
                    "sentence types are 1-8 capital letters or digits (STA is built in)".into(),
                );
            }
            if fields.is_empty() || fields.iter().any(|f| f.is_empty()) {
                return bad(
                        &key(&format!("sentences.{sentence}")),
                        "must name the values after the device id, e.g. [\"presence\", \"temperature\"]".into(),
                    );
            }
        }
    }
    for (i, sub) in mqtt.subscriptions.iter().enumerate() {
        let key = |k: &str| format!("mqtt.subscriptions[{i}].{k}");
        if !sub.device.is_empty() && !sub.device.starts_with('/') {
            return bad(
                &key("device"),
                format!(
                    "`{}` is not a JSON pointer: it starts with `/`, e.g. \"/deviceInfo/devEui\"",
                    sub.device
                ),
            );
        }
        if sub.kind == PayloadKind::Online && !sub.device.is_empty() {
            return bad(
                &key("device"),
                "an `online` subscription reads no payload".into(),
            );
        }
        let pattern = if sub.device.is_empty() {
            super::mqtt::TopicPattern::parse(&sub.topic)
        } else {
            super::mqtt::TopicPattern::parse_filter(&sub.topic)
        };
        if let Err(e) = pattern {
            return bad(&key("topic"), e);
        }
        for (j, pattern) in sub.exclude.iter().enumerate() {
            if let Err(e) = super::mqtt::TopicPattern::parse_filter(pattern) {
                return bad(&key(&format!("exclude[{j}]")), e);
            }
        }
        if !sub.fields.is_empty() && !sub.fields.starts_with('/') {
            return bad(
                &key("fields"),
                format!(
                    "`{}` is not a JSON pointer: it starts with `/`, e.g. \"/object\"",
                    sub.fields
                ),
            );
        }
        if !sub.jq.is_empty() {
            if sub.kind == PayloadKind::Online {
                return bad(
                    &key("jq"),
                    "an `online` subscription reads no payload".into(),
                );
            }
            if let Err(e) = crate::jq::Filter::compile(&sub.jq, crate::jq::Budget::MAPPING) {
                return bad(&key("jq"), format!("the filter {e}"));
            }
        }
        if sub.kind != PayloadKind::Reading && (!sub.fields.is_empty() || sub.flatten) {
            return bad(
                &key("fields"),
                "fields and flatten apply to readings only".into(),
            );
        }
    }
    Ok(())
}
