//! Device stage: the registry of devices, their online/offline state, change detection
//! (report by exception) and workspace status.
//!
//! [`Registry::apply`] is pure: it takes one inbound message and returns the events it
//! produces plus the device states to persist. The task around it ([`run`]) only moves messages
//! from the sources to the outbox writer. Device state is written in the same sled transaction as
//! the events it produced, so after a crash the two always agree: a message whose events were
//! lost is also not remembered, and its redelivery produces them again.
//!
//! Workspace status is derived from the presence values of its bound sensors, never stored on
//! its own: Occupied when any sensor reports presence, Free once all of them report absence, and
//! no status until every sensor has reported.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::config::WorkspaceConfig;
use crate::event::{Envelope, Event, EventType};
use crate::outbox::Commit;
use crate::source::{Inbound, InboundBody};

/// What edgehook remembers of one device, persisted in the outbox's `devices` tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub online: bool,
    /// Last known value of every field ever reported (metadata fields included).
    pub values: Map<String, Value>,
}

/// Workspace status values, as sent in `workspace.status.updated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WorkspaceStatus {
    Free,
    Occupied,
}

/// The outcome of one inbound message.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub events: Vec<Event>,
    /// The device's new state, when it changed and must be persisted.
    pub state: Option<DeviceState>,
}

/// All devices and workspaces this gateway knows about.
#[derive(Debug)]
pub struct Registry {
    devices: HashMap<String, DeviceState>,
    workspaces: Vec<WorkspaceConfig>,
    /// Sensor id → indexes into `workspaces`.
    workspaces_of: HashMap<String, Vec<usize>>,
}

impl Registry {
    pub fn new(
        workspaces: Vec<WorkspaceConfig>,
        known: impl IntoIterator<Item = (String, DeviceState)>,
    ) -> Registry {
        let mut workspaces_of: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, ws) in workspaces.iter().enumerate() {
            for sensor in &ws.sensors {
                workspaces_of.entry(sensor.clone()).or_default().push(i);
            }
        }
        Registry {
            devices: known.into_iter().collect(),
            workspaces,
            workspaces_of,
        }
    }

    pub fn device(&self, id: &str) -> Option<&DeviceState> {
        self.devices.get(id)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Apply one message from `device_id`; return the events it produces.
    pub fn apply(&mut self, device_id: &str, body: &InboundBody) -> Applied {
        let ws_before: Vec<(usize, Option<WorkspaceStatus>)> = self
            .workspaces_of
            .get(device_id)
            .map(|idx| idx.iter().map(|&i| (i, self.workspace_status(i))).collect())
            .unwrap_or_default();

        let mut events = Vec::new();
        let state = self.devices.entry(device_id.to_string()).or_default();
        let mut dirty = false;
        match body {
            InboundBody::Status { online } => {
                if state.online != *online {
                    state.online = *online;
                    dirty = true;
                    let kind = if *online {
                        EventType::DeviceOnline
                    } else {
                        EventType::DeviceOffline
                    };
                    events.push(Event::device(kind, device_id, Map::new()));
                }
            }
            InboundBody::Reading { fields, metadata } => {
                if !state.online {
                    state.online = true;
                    dirty = true;
                    events.push(Event::device(
                        EventType::DeviceOnline,
                        device_id,
                        Map::new(),
                    ));
                }
                let changed: Vec<Value> = fields
                    .iter()
                    .filter(|(k, _)| !metadata.iter().any(|m| m == *k))
                    .filter(|(k, v)| !state.values.get(*k).is_some_and(|old| same_value(old, v)))
                    .map(|(k, _)| Value::String(k.clone()))
                    .collect();
                if !changed.is_empty() {
                    dirty = true;
                    for (k, v) in fields {
                        state.values.insert(k.clone(), v.clone());
                    }
                    let mut data = Map::new();
                    data.insert("fields".into(), Value::Object(fields.clone()));
                    data.insert("changed".into(), Value::Array(changed));
                    events.push(Event::device(
                        EventType::SensorReadingUpdated,
                        device_id,
                        data,
                    ));
                }
            }
        }
        let state = dirty.then(|| state.clone());

        for (i, before) in ws_before {
            let after = self.workspace_status(i);
            if let (Some(status), true) = (after, after != before) {
                let ws = &self.workspaces[i];
                let mut data = Map::new();
                data.insert("workspace_id".into(), Value::String(ws.id.clone()));
                data.insert(
                    "status".into(),
                    serde_json::to_value(status).expect("enum serialises"),
                );
                data.insert(
                    "previous_status".into(),
                    before.map_or(Value::Null, |b| {
                        serde_json::to_value(b).expect("enum serialises")
                    }),
                );
                data.insert("device_id".into(), Value::String(device_id.to_string()));
                events.push(Event::workspace(&ws.id, data));
            }
        }
        Applied { events, state }
    }

    /// Occupied if any bound sensor reports presence; Free if all report absence; otherwise
    /// (some sensor has never reported) no status yet.
    pub fn workspace_status(&self, index: usize) -> Option<WorkspaceStatus> {
        let ws = &self.workspaces[index];
        let mut all_absent = true;
        for sensor in &ws.sensors {
            match self
                .devices
                .get(sensor)
                .and_then(|d| d.values.get(&ws.presence_field))
                .and_then(presence)
            {
                Some(true) => return Some(WorkspaceStatus::Occupied),
                Some(false) => {}
                None => all_absent = false,
            }
        }
        all_absent.then_some(WorkspaceStatus::Free)
    }
}

/// Values compare as JSON, except that numbers compare numerically (21 == 21.0).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

/// Interpret a presence field: booleans, 0/1 and the common words.
fn presence(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|x| x != 0.0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "occupied" | "present" | "detected" => Some(true),
            "0" | "false" | "no" | "free" | "vacant" | "absent" | "clear" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The device stage task: apply each inbound message, seal the events it produced and pass
/// them, with the new device state and the message's ack, to the outbox writer. Ends when the
/// sources have all gone (their senders dropped), after passing on everything received.
pub async fn run(
    mut registry: Registry,
    gateway_id: Arc<str>,
    mut inbound: mpsc::Receiver<Inbound>,
    commits: mpsc::Sender<Commit>,
) {
    while let Some(msg) = inbound.recv().await {
        let applied = registry.apply(&msg.device_id, &msg.body);
        let now = std::time::SystemTime::now();
        let commit = Commit {
            envelopes: applied
                .events
                .iter()
                .map(|e| Envelope::seal(e, &gateway_id, now))
                .collect(),
            device: applied.state.map(|s| (msg.device_id, s)),
            ack: msg.ack,
        };
        if commits.send(commit).await.is_err() {
            tracing::error!("outbox writer has stopped; device stage stopping");
            return;
        }
    }
    tracing::debug!(devices = registry.len(), "device stage drained");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reading(v: Value) -> InboundBody {
        InboundBody::Reading {
            fields: v.as_object().unwrap().clone(),
            metadata: Arc::from(vec!["seq".to_string(), "ts".to_string()]),
        }
    }

    fn kinds(a: &Applied) -> Vec<&'static str> {
        a.events.iter().map(|e| e.kind.as_str()).collect()
    }

    fn ws(id: &str, sensors: &[&str]) -> WorkspaceConfig {
        WorkspaceConfig {
            id: id.into(),
            sensors: sensors.iter().map(|s| s.to_string()).collect(),
            presence_field: "presence".into(),
        }
    }

    #[test]
    fn first_reading_is_a_change_and_brings_the_device_online() {
        let mut r = Registry::new(vec![], []);
        let a = r.apply("t1", &reading(json!({"temp": 21.5, "seq": 1})));
        assert_eq!(kinds(&a), ["device.online", "sensor.reading.updated"]);
        assert_eq!(a.events[1].data["changed"], json!(["temp"]));
        assert_eq!(a.events[1].data["fields"], json!({"temp": 21.5, "seq": 1}));
        assert!(a.state.unwrap().online);
    }

    #[test]
    fn report_by_exception() {
        let cases: &[(Value, &[&str])] = &[
            (
                json!({"temp": 21.5, "seq": 1}),
                &["device.online", "sensor.reading.updated"],
            ),
            (json!({"temp": 21.5, "seq": 2}), &[]), // only metadata moved
            (json!({"temp": 21.5, "seq": 3, "ts": 99}), &[]), // new metadata field: still nothing
            (json!({"temp": 21.6, "seq": 4}), &["sensor.reading.updated"]),
            (json!({"temp": 21.6}), &[]),
            (json!({"hum": 40}), &["sensor.reading.updated"]), // a new tracked field
            (json!({"hum": 40.0}), &[]),                       // numbers compare numerically
            (json!({"hum": "40"}), &["sensor.reading.updated"]), // a string is not a number
            (json!({}), &[]),
        ];
        let mut r = Registry::new(vec![], []);
        for (i, (input, want)) in cases.iter().enumerate() {
            let a = r.apply("t1", &reading(input.clone()));
            assert_eq!(kinds(&a), *want, "case {i}: {input}");
            assert_eq!(
                a.state.is_some(),
                !want.is_empty(),
                "case {i}: persisted iff changed"
            );
        }
    }

    #[test]
    fn status_messages_toggle_online_once() {
        let mut r = Registry::new(vec![], []);
        let on = InboundBody::Status { online: true };
        let off = InboundBody::Status { online: false };
        assert_eq!(kinds(&r.apply("d", &on)), ["device.online"]);
        assert_eq!(kinds(&r.apply("d", &on)), Vec::<&str>::new());
        assert_eq!(kinds(&r.apply("d", &off)), ["device.offline"]);
        assert_eq!(kinds(&r.apply("d", &off)), Vec::<&str>::new());
        // a reading after offline brings it back online, then reports the reading
        assert_eq!(
            kinds(&r.apply("d", &reading(json!({"x": 1})))),
            ["device.online", "sensor.reading.updated"]
        );
    }

    #[test]
    fn restart_with_known_state_does_not_reannounce() {
        let known = DeviceState {
            online: true,
            values: json!({"temp": 20}).as_object().unwrap().clone(),
        };
        let mut r = Registry::new(vec![], [("t1".to_string(), known)]);
        assert!(r
            .apply("t1", &reading(json!({"temp": 20, "seq": 9})))
            .events
            .is_empty());
    }

    #[test]
    fn workspace_rules() {
        let mut r = Registry::new(vec![ws("room", &["a", "b"])], []);
        let status = |a: &Applied| -> Vec<(Value, Value)> {
            a.events
                .iter()
                .filter(|e| e.kind == EventType::WorkspaceStatusUpdated)
                .map(|e| (e.data["status"].clone(), e.data["previous_status"].clone()))
                .collect()
        };
        // a alone absent: b never reported → no status yet
        assert!(status(&r.apply("a", &reading(json!({"presence": false})))).is_empty());
        // b absent too → Free
        assert_eq!(
            status(&r.apply("b", &reading(json!({"presence": 0})))),
            [(json!("Free"), Value::Null)]
        );
        // presence anywhere → Occupied at once
        assert_eq!(
            status(&r.apply("a", &reading(json!({"presence": "occupied"})))),
            [(json!("Occupied"), json!("Free"))]
        );
        // b reports presence too: still Occupied, no event
        assert!(status(&r.apply("b", &reading(json!({"presence": true})))).is_empty());
        // a clears, b still present: Occupied
        assert!(status(&r.apply("a", &reading(json!({"presence": false})))).is_empty());
        // b clears: Free
        assert_eq!(
            status(&r.apply("b", &reading(json!({"presence": false})))),
            [(json!("Free"), json!("Occupied"))]
        );
        // a device outside any workspace changes nothing
        assert!(status(&r.apply("z", &reading(json!({"presence": true})))).is_empty());
        let e = &r.apply("a", &reading(json!({"presence": true}))).events;
        let w = e
            .iter()
            .find(|e| e.kind == EventType::WorkspaceStatusUpdated)
            .unwrap();
        assert_eq!(w.lane, "workspace:room");
        assert_eq!(w.data["workspace_id"], "room");
    }
}
