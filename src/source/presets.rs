//! Presets: the subscriptions for an ecosystem that already speaks MQTT, named in one line
//! (`[mqtt] presets = ["zigbee2mqtt"]`). Each expands to ordinary subscriptions (the general
//! mapping underneath: topic patterns, a JSON pointer to the fields, flattening, excluded
//! topics), checked like any other, so what a preset does is what its subscriptions say:
//!
//! | preset | topics | fields | status |
//! |---|---|---|---|
//! | `zigbee2mqtt` | `zigbee2mqtt/<friendly name>` (names may contain `/`); `bridge/...`, `.../set`, `.../get` skipped | the JSON state (`occupancy`, `illuminance`, `battery`, ...; `linkquality` and `last_seen` carried, not compared) | `zigbee2mqtt/<name>/availability`: `{"state":"online"}` or the legacy `online` |
//! | `chirpstack` | `application/<id>/device/<devEUI>/event/up` (ChirpStack v4; the device from `deviceInfo.devEui`); `.../event/status` | the decoded `object`; from a status event `battery`, `external_power`, `margin` (a jq mapping) | `.../event/join`: online |
//! | `the_things_stack` | `v3/<app>[@<tenant>]/devices/<id>/up` | `uplink_message.decoded_payload` | - |
//! | `tasmota` | `tele/<topic>/SENSOR` | nested sensor objects, flattened (`AM2301.Temperature`; `Time` carried) | `tele/<topic>/LWT`: `Online` / `Offline` |
//! | `shelly` | `<id>/events/rpc` (Gen2+, on by default: `NotifyStatus`, `NotifyFullStatus`, `NotifyEvent`); `<id>/status/<component>` (with "generic status update over MQTT" on) | each component's status (`switch:0`, `temperature:0`, ...), flattened as `status/` gives it (`tC`, `temperature.tC`); `sys`, `wifi`, `cloud`, `mqtt` left out; an event is a sign of life | `<id>/online`: `true` / `false` |
//!
//! With `mqtt.radio_metadata = true` the LoRaWAN presets also carry each uplink's `rssi`,
//! `snr` (the best gateway's) and `f_cnt` as fields, not compared.
//!
//! Any message of a device's that carries no fields (a LoRaWAN uplink without a decoded
//! payload, a Shelly event) is still a sign of life: registration, online, heartbeat.

use serde::{Deserialize, Serialize};

use super::config::{PayloadKind, Subscription};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Zigbee2mqtt,
    Chirpstack,
    TheThingsStack,
    Tasmota,
    Shelly,
}

/// ChirpStack's device-status event as fields: `battery` (percent; left out when the device
/// cannot tell), `external_power`, `margin` (dB). List `battery` in the class's `state_fields`
/// to have it reported as `sensor.state.updated`.
/// Shelly Gen2+ notifications on `<id>/events/rpc` (JSON-RPC frames): the components'
/// statuses of a `NotifyStatus` / `NotifyFullStatus` merged into one object (flattened
/// afterwards, as `<id>/status/<component>` is), the device services (`sys`, `wifi`, `cloud`,
/// `mqtt`, `ble`: no `:` in their names) left out; anything else (`NotifyEvent`) no fields.
const SHELLY_RPC: &str = r#"if (.method == "NotifyStatus" or .method == "NotifyFullStatus") then ((.params // {}) | with_entries(select((.key | contains(":")) and (.value | type) == "object")) | [.[]] | add // {}) else {} end"#;

/// A ChirpStack v4 uplink with its radio metadata (`mqtt.radio_metadata`): the decoded
/// `object` (if any), and the best gateway's `rssi` and `snr`, and `fCnt` as `f_cnt`.
const CHIRPSTACK_UP_RADIO: &str = r#"(.object // {}) + {rssi: ([.rxInfo[]?.rssi] | max), snr: ([.rxInfo[]?.snr] | max), f_cnt: .fCnt} | with_entries(select(.value != null))"#;

/// A The Things Stack uplink with its radio metadata: `decoded_payload` (if any), the best
/// gateway's `rssi` and `snr`, and `f_cnt`.
const TTN_UP_RADIO: &str = r#"(.uplink_message.decoded_payload // {}) + {rssi: ([.uplink_message.rx_metadata[]?.rssi] | max), snr: ([.uplink_message.rx_metadata[]?.snr] | max), f_cnt: .uplink_message.f_cnt} | with_entries(select(.value != null))"#;

/// The radio metadata fields: carried, not compared.
const RADIO_FIELDS: [&str; 3] = ["rssi", "snr", "f_cnt"];

const CHIRPSTACK_STATUS: &str = r#"{battery: (if .batteryLevelUnavailable then null else .batteryLevel end), external_power: .externalPowerSource, margin: .margin} | with_entries(select(.value != null))"#;

fn sub(topic: &str, kind: PayloadKind) -> Subscription {
    Subscription {
        topic: topic.into(),
        kind,
        metadata_fields: Vec::new(),
        fields: String::new(),
        flatten: false,
        exclude: Vec::new(),
        jq: String::new(),
        device: String::new(),
    }
}

impl Preset {
    /// The subscriptions this preset stands for, most specific first (the first that matches
    /// a topic takes it).
    pub fn subscriptions(self) -> Vec<Subscription> {
        self.subscriptions_with(false)
    }

    /// [`Preset::subscriptions`], the LoRaWAN ones with each uplink's radio metadata as
    /// fields when `radio` (`mqtt.radio_metadata`).
    pub fn subscriptions_with(self, radio: bool) -> Vec<Subscription> {
        let mut subscriptions = self.plain();
        if radio {
            let mapping = match self {
                Preset::Chirpstack => Some(("/event/up", CHIRPSTACK_UP_RADIO)),
                Preset::TheThingsStack => Some(("/up", TTN_UP_RADIO)),
                _ => None,
            };
            if let Some((ending, jq)) = mapping {
                for s in subscriptions
                    .iter_mut()
                    .filter(|s| s.topic.ends_with(ending))
                {
                    s.jq = jq.into();
                    s.fields = String::new();
                    s.metadata_fields = RADIO_FIELDS.map(String::from).to_vec();
                }
            }
        }
        subscriptions
    }

    fn plain(self) -> Vec<Subscription> {
        match self {
            Preset::Zigbee2mqtt => {
                let skip = vec![
                    "zigbee2mqtt/bridge/#".to_string(),
                    "zigbee2mqtt/{device...}/set".to_string(),
                    "zigbee2mqtt/{device...}/get".to_string(),
                ];
                vec![
                    Subscription {
                        exclude: skip.clone(),
                        ..sub("zigbee2mqtt/{device...}/availability", PayloadKind::Status)
                    },
                    Subscription {
                        exclude: skip,
                        metadata_fields: vec!["linkquality".into(), "last_seen".into()],
                        ..sub("zigbee2mqtt/{device...}", PayloadKind::Reading)
                    },
                ]
            }
            Preset::Chirpstack => vec![
                Subscription {
                    fields: "/object".into(),
                    device: "/deviceInfo/devEui".into(),
                    ..sub(
                        "application/+/device/{device}/event/up",
                        PayloadKind::Reading,
                    )
                },
                sub(
                    "application/+/device/{device}/event/join",
                    PayloadKind::Online,
                ),
                Subscription {
                    jq: CHIRPSTACK_STATUS.into(),
                    device: "/deviceInfo/devEui".into(),
                    ..sub(
                        "application/+/device/{device}/event/status",
                        PayloadKind::Reading,
                    )
                },
            ],
            Preset::TheThingsStack => vec![Subscription {
                fields: "/uplink_message/decoded_payload".into(),
                ..sub("v3/+/devices/{device}/up", PayloadKind::Reading)
            }],
            Preset::Tasmota => vec![
                sub("tele/{device}/LWT", PayloadKind::Status),
                Subscription {
                    flatten: true,
                    metadata_fields: vec!["Time".into()],
                    ..sub("tele/{device}/SENSOR", PayloadKind::Reading)
                },
            ],
            Preset::Shelly => vec![
                sub("{device}/online", PayloadKind::Status),
                Subscription {
                    flatten: true,
                    jq: SHELLY_RPC.into(),
                    ..sub("{device}/events/rpc", PayloadKind::Reading)
                },
                Subscription {
                    flatten: true,
                    ..sub("{device}/status/+", PayloadKind::Reading)
                },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::mqtt::Decoder;
    use crate::source::InboundBody;
    use serde_json::Value;

    /// Each ecosystem's messages as its project documents them (tests/fixtures/ecosystems.json),
    /// through a decoder with only that preset: the device, and its fields or status, or
    /// nothing for what is not a device message.
    #[test]
    fn every_preset_takes_its_ecosystems_messages_as_documented() {
        let fixtures: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/ecosystems.json")).unwrap();
        let mut checked = 0;
        for (name, messages) in fixtures.as_object().unwrap() {
            if name.starts_with('_') {
                continue;
            }
            let preset: Preset = serde_json::from_value(Value::String(name.clone())).unwrap();
            let mut config = crate::config::Config::default().mqtt;
            config.presets = vec![preset];
            let decoder = Decoder::new(&config).unwrap();
            for m in messages.as_array().unwrap() {
                let topic = m["topic"].as_str().unwrap();
                let payload = match &m["payload"] {
                    Value::String(s) => s.clone().into_bytes(),
                    v => serde_json::to_vec(v).unwrap(),
                };
                let got = decoder.decode(topic, &payload).unwrap();
                match got {
                    None => assert_eq!(m["skipped"], true, "{name}: {topic} was skipped"),
                    Some((device, body)) => {
                        assert_eq!(device, m["device"].as_str().unwrap(), "{name}: {topic}");
                        match body {
                            InboundBody::Reading { fields, .. } => {
                                assert_eq!(Value::Object(fields), m["fields"], "{name}: {topic}")
                            }
                            InboundBody::Status { online } => {
                                assert_eq!(Value::Bool(online), m["online"], "{name}: {topic}")
                            }
                            other => panic!("{name}: {topic}: {other:?}"),
                        }
                    }
                }
                checked += 1;
            }
            // What the broker is asked for covers every message of the preset.
            assert!(!decoder.filters().is_empty());
        }
        assert_eq!(checked, 25);
    }

    /// With `mqtt.radio_metadata`, a LoRaWAN uplink's radio metadata are fields (carried, not
    /// compared), with or without a decoded payload; without it, only the payload.
    #[test]
    fn radio_metadata_ride_with_lorawan_uplinks_when_asked() {
        let fixtures: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/ecosystems.json")).unwrap();
        let uplink = |eco: &str, device: &str, decoded: bool| -> (String, Vec<u8>) {
            let m = fixtures[eco]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| {
                    m["device"] == device
                        && m["topic"].as_str().unwrap().ends_with("/up")
                        && m["fields"].is_object() == decoded
                })
                .unwrap();
            (
                m["topic"].as_str().unwrap().into(),
                serde_json::to_vec(&m["payload"]).unwrap(),
            )
        };
        let decode = |preset: Preset, radio: bool, (topic, payload): (String, Vec<u8>)| {
            let mut config = crate::config::Config::default().mqtt;
            config.presets = vec![preset];
            config.radio_metadata = radio;
            Decoder::new(&config)
                .unwrap()
                .decode(&topic, &payload)
                .unwrap()
                .unwrap()
                .1
        };
        let cases = [
            (
                Preset::Chirpstack,
                "0101010101010101",
                true,
                true,
                serde_json::json!({"occupancy": 1, "temperature": 21.5, "rssi": -60, "snr": 10.5, "f_cnt": 10}),
            ),
            (
                Preset::Chirpstack,
                "0101010101010101",
                false,
                true,
                serde_json::json!({"rssi": -36, "snr": 10.5}),
            ),
            (
                Preset::TheThingsStack,
                "eui-0004a30b001c0530",
                true,
                true,
                serde_json::json!({"occupancy": true, "temperature": 21.5, "rssi": -49, "snr": 10, "f_cnt": 4}),
            ),
            (
                Preset::TheThingsStack,
                "dev2",
                false,
                true,
                serde_json::json!({"rssi": -42, "snr": 9.5, "f_cnt": 43}),
            ),
            (
                Preset::Chirpstack,
                "0101010101010101",
                true,
                false,
                serde_json::json!({"occupancy": 1, "temperature": 21.5}),
            ),
        ];
        for (preset, device, decoded, radio, want) in cases {
            let eco = if preset == Preset::Chirpstack {
                "chirpstack"
            } else {
                "the_things_stack"
            };
            match decode(preset, radio, uplink(eco, device, decoded)) {
                InboundBody::Reading { fields, metadata } => {
                    assert_eq!(Value::Object(fields), want, "{eco} {device} radio {radio}");
                    let carried: Vec<&str> = metadata.iter().map(String::as_str).collect();
                    assert_eq!(carried, if radio { RADIO_FIELDS.to_vec() } else { vec![] });
                }
                other => panic!("{eco} {device}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_preset_passes_the_checks_a_subscription_gets() {
        for preset in [
            Preset::Zigbee2mqtt,
            Preset::Chirpstack,
            Preset::TheThingsStack,
            Preset::Tasmota,
            Preset::Shelly,
        ] {
            for radio in [false, true] {
                let mut config = crate::config::Config::default().mqtt;
                config.subscriptions = preset.subscriptions_with(radio);
                assert_eq!(
                    super::super::config::validate(&config, &[], &Default::default()),
                    Ok(()),
                    "{preset:?}, radio metadata {radio}"
                );
            }
        }
    }
}
