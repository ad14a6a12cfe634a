//! Ecosystem profiles: the topics and payload shapes a simulated device uses when it pretends
//! to sit behind an ecosystem that already speaks MQTT — as that project documents them, and
//! as edgehook's presets of the same names take them (`[mqtt] presets = ["zigbee2mqtt"]`).
//!
//! | profile | a reading | online / offline |
//! |---|---|---|
//! | `edgehook` | `sensors/<id>/reading`, `rooms/<id>/display` (flat JSON, `seq`, `ts`) | `devices/<id>/status`: `online` / `offline` (retained, last-will) |
//! | `zigbee2mqtt` | `zigbee2mqtt/<id>`: `occupancy`, `temperature`, `linkquality`, `last_seen` | `zigbee2mqtt/<id>/availability`: `{"state":"online"}` |
//! | `chirpstack` | `application/<app>/device/<id>/event/up`: the decoded `object` | a `join` event when it connects; no goodbye |
//! | `the_things_stack` | `v3/<app>@ttn/devices/<id>/up`: `uplink_message.decoded_payload` | none |
//! | `tasmota` | `tele/<id>/SENSOR`: `{"Time", "AM2301": {"Temperature"}, "Switch1": "ON"}` | `tele/<id>/LWT`: `Online` / `Offline` |
//! | `shelly` | `<id>/status/input:0` (presence) and `<id>/status/temperature:0` (`tC`, `tF`) | `<id>/online`: `true` / `false` |

use serde_json::{json, Map, Value};

use crate::{DeviceClass, Topics};

/// How a simulated device publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// edgehook's own topics (the default, what the demo and the benchmark use).
    #[default]
    Edgehook,
    Zigbee2mqtt,
    Chirpstack,
    TheThingsStack,
    Tasmota,
    Shelly,
}

/// The application a LoRaWAN device belongs to, in its topics.
const APPLICATION: &str = "5a1f0c3e-1d2b-4c6a-9e8f-7a6b5c4d3e2f";

impl Profile {
    pub const ALL: [Profile; 6] = [
        Profile::Edgehook,
        Profile::Zigbee2mqtt,
        Profile::Chirpstack,
        Profile::TheThingsStack,
        Profile::Tasmota,
        Profile::Shelly,
    ];

    /// Its name, as edgehook's preset of the same ecosystem is named.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Edgehook => "edgehook",
            Profile::Zigbee2mqtt => "zigbee2mqtt",
            Profile::Chirpstack => "chirpstack",
            Profile::TheThingsStack => "the_things_stack",
            Profile::Tasmota => "tasmota",
            Profile::Shelly => "shelly",
        }
    }

    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// What one reading of device `id` (edgehook's flat shape: `presence`, `temperature`, or a
    /// display's `state` and `booked`, with `seq` and `ts`) is on the wire: the publishes.
    pub fn reading(
        self,
        topics: &Topics,
        class: DeviceClass,
        id: &str,
        reading: &Value,
    ) -> Vec<(String, Vec<u8>)> {
        let get = |k: &str| reading.get(k).cloned().unwrap_or(Value::Null);
        let ts = reading.get("ts").and_then(Value::as_u64).unwrap_or(0);
        let time = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts),
        )
        .to_string();
        // What the device senses, without edgehook's own `seq` and `ts`.
        let sensed: Map<String, Value> = reading
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "seq" | "ts"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let one = |topic: String, payload: Value| vec![(topic, payload.to_string().into_bytes())];
        match self {
            Profile::Edgehook => one(topics.reading(class, id), reading.clone()),
            Profile::Zigbee2mqtt => {
                let mut state = sensed.clone();
                if let Some(p) = state.remove("presence") {
                    state.insert("occupancy".into(), p);
                }
                state.insert("linkquality".into(), json!(120));
                state.insert("last_seen".into(), json!(ts));
                one(format!("zigbee2mqtt/{id}"), Value::Object(state))
            }
            Profile::Chirpstack => one(
                format!("application/{APPLICATION}/device/{id}/event/up"),
                json!({
                    "deduplicationId": format!("00000000-0000-4000-8000-{:012x}", get("seq").as_u64().unwrap_or(0)),
                    "time": time,
                    "deviceInfo": {"applicationId": APPLICATION, "applicationName": "firmware-sim", "deviceName": id, "devEui": id},
                    "fCnt": get("seq"),
                    "fPort": 1,
                    "object": sensed,
                }),
            ),
            Profile::TheThingsStack => one(
                format!("v3/firmware-sim@ttn/devices/{id}/up"),
                json!({
                    "end_device_ids": {"device_id": id, "application_ids": {"application_id": "firmware-sim"}},
                    "received_at": time,
                    "uplink_message": {"f_port": 1, "f_cnt": get("seq"), "decoded_payload": sensed},
                }),
            ),
            Profile::Tasmota => {
                let on = |v: Value| json!(if v == true { "ON" } else { "OFF" });
                let body = match class {
                    DeviceClass::OccupancySensor => json!({
                        "Time": time,
                        "AM2301": {"Temperature": get("temperature")},
                        "Switch1": on(get("presence")),
                    }),
                    DeviceClass::RoomDisplay => json!({
                        "Time": time,
                        "Switch1": on(json!(get("state") == "in_use")),
                        "Switch2": on(get("booked")),
                    }),
                };
                one(format!("tele/{id}/SENSOR"), body)
            }
            Profile::Shelly => match class {
                DeviceClass::OccupancySensor => {
                    let c = get("temperature").as_f64().unwrap_or(0.0);
                    let f = (c * 9.0 / 5.0 + 32.0) * 10.0;
                    vec![
                        (
                            format!("{id}/status/input:0"),
                            json!({"id": 0, "state": get("presence")})
                                .to_string()
                                .into_bytes(),
                        ),
                        (
                            format!("{id}/status/temperature:0"),
                            json!({"id": 0, "tC": c, "tF": f.round() / 10.0})
                                .to_string()
                                .into_bytes(),
                        ),
                    ]
                }
                DeviceClass::RoomDisplay => vec![
                    (
                        format!("{id}/status/input:0"),
                        json!({"id": 0, "state": get("state") == "in_use"})
                            .to_string()
                            .into_bytes(),
                    ),
                    (
                        format!("{id}/status/input:1"),
                        json!({"id": 1, "state": get("booked")})
                            .to_string()
                            .into_bytes(),
                    ),
                ],
            },
        }
    }

    /// Where and what a device says of its health, retained (its birth when `online`, its
    /// last-will otherwise); `None` where the ecosystem says nothing so.
    pub fn status(self, topics: &Topics, id: &str, online: bool) -> Option<(String, Vec<u8>)> {
        let word = |on: &str, off: &str| if online { on } else { off }.as_bytes().to_vec();
        match self {
            Profile::Edgehook => Some((topics.status(id), word("online", "offline"))),
            Profile::Zigbee2mqtt => Some((
                format!("zigbee2mqtt/{id}/availability"),
                word(r#"{"state":"online"}"#, r#"{"state":"offline"}"#),
            )),
            // A LoRaWAN network server tells of a join, never of a goodbye.
            Profile::Chirpstack if online => Some((
                format!("application/{APPLICATION}/device/{id}/event/join"),
                json!({"deviceInfo": {"devEui": id, "deviceName": id}, "devAddr": "00000000"})
                    .to_string()
                    .into_bytes(),
            )),
            Profile::Chirpstack | Profile::TheThingsStack => None,
            Profile::Tasmota => Some((format!("tele/{id}/LWT"), word("Online", "Offline"))),
            Profile::Shelly => Some((format!("{id}/online"), word("true", "false"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(Profile::from_name(p.name()), Some(p));
        }
        assert_eq!(Profile::from_name("nope"), None);
    }

    #[test]
    fn each_profile_shapes_a_reading_as_its_ecosystem_does() {
        let topics = Topics::default();
        let reading =
            json!({"presence": true, "temperature": 21.5, "seq": 3, "ts": 1_700_000_000_000u64});
        let shaped = |p: Profile| -> Vec<(String, Value)> {
            p.reading(&topics, DeviceClass::OccupancySensor, "occ-1", &reading)
                .into_iter()
                .map(|(t, b)| (t, serde_json::from_slice(&b).unwrap()))
                .collect()
        };
        assert_eq!(
            shaped(Profile::Zigbee2mqtt),
            [(
                "zigbee2mqtt/occ-1".to_string(),
                json!({"occupancy": true, "temperature": 21.5, "linkquality": 120, "last_seen": 1_700_000_000_000u64})
            )]
        );
        assert_eq!(
            shaped(Profile::Chirpstack)[0].1["object"],
            json!({"presence": true, "temperature": 21.5})
        );
        assert_eq!(
            shaped(Profile::TheThingsStack)[0].1["uplink_message"]["decoded_payload"],
            json!({"presence": true, "temperature": 21.5})
        );
        assert_eq!(
            shaped(Profile::Tasmota)[0].1["AM2301"],
            json!({"Temperature": 21.5})
        );
        let shelly = shaped(Profile::Shelly);
        assert_eq!(
            shelly[0],
            (
                "occ-1/status/input:0".into(),
                json!({"id": 0, "state": true})
            )
        );
        assert_eq!(shelly[1].1["tF"], json!(70.7));
        assert_eq!(
            Profile::Chirpstack.status(&topics, "occ-1", false),
            None,
            "no goodbye over LoRaWAN"
        );
    }
}
