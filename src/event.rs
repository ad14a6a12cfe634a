//! Events: what edgehook tells the receiver, and the JSON envelope they travel in.
//!
//! ```json
//! {"id":"0193f1c2-...","type":"sensor.reading.updated","timestamp":"2026-11-23T10:00:00.123Z",
//!  "gateway":"gw-lobby-1","data":{"device_id":"occ-1","fields":{"presence":true,"seq":7},
//!  "changed":["presence"]}}
//! ```
//!
//! `id` is a UUIDv7: unique, ordered by creation time, and the idempotency key the receiver uses
//! to drop duplicates (delivery is at-least-once). The envelope is serialised once, when the event
//! is created; the outbox stores those exact bytes and every delivery attempt signs and sends them.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};

/// The kinds of event, with their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    #[serde(rename = "device.online")]
    DeviceOnline,
    #[serde(rename = "device.offline")]
    DeviceOffline,
    #[serde(rename = "device.lost_communication")]
    DeviceLostCommunication,
    #[serde(rename = "device.app_updated")]
    DeviceAppUpdated,
    #[serde(rename = "device.registered")]
    DeviceRegistered,
    #[serde(rename = "device.unregistered")]
    DeviceUnregistered,
    #[serde(rename = "device.out_of_sync")]
    DeviceOutOfSync,
    #[serde(rename = "device.in_sync")]
    DeviceInSync,
    #[serde(rename = "device.action_completed")]
    DeviceActionCompleted,
    #[serde(rename = "sensor.reading.updated")]
    SensorReadingUpdated,
    #[serde(rename = "sensor.reading.stale")]
    SensorReadingStale,
    #[serde(rename = "sensor.state.updated")]
    SensorStateUpdated,
    #[serde(rename = "sensor.group.reading.updated")]
    SensorGroupReadingUpdated,
    #[serde(rename = "sensor.group.reading.stale")]
    SensorGroupReadingStale,
    #[serde(rename = "sensor.group.state.updated")]
    SensorGroupStateUpdated,
    #[serde(rename = "workspace.status.updated")]
    WorkspaceStatusUpdated,
}

impl EventType {
    /// Every event type, in the order metrics list them.
    pub const ALL: [EventType; 16] = [
        EventType::DeviceOnline,
        EventType::DeviceOffline,
        EventType::DeviceLostCommunication,
        EventType::DeviceAppUpdated,
        EventType::DeviceRegistered,
        EventType::DeviceUnregistered,
        EventType::DeviceOutOfSync,
        EventType::DeviceInSync,
        EventType::DeviceActionCompleted,
        EventType::SensorReadingUpdated,
        EventType::SensorReadingStale,
        EventType::SensorStateUpdated,
        EventType::SensorGroupReadingUpdated,
        EventType::SensorGroupReadingStale,
        EventType::SensorGroupStateUpdated,
        EventType::WorkspaceStatusUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::DeviceOnline => "device.online",
            EventType::DeviceOffline => "device.offline",
            EventType::DeviceLostCommunication => "device.lost_communication",
            EventType::DeviceAppUpdated => "device.app_updated",
            EventType::DeviceRegistered => "device.registered",
            EventType::DeviceUnregistered => "device.unregistered",
            EventType::DeviceOutOfSync => "device.out_of_sync",
            EventType::DeviceInSync => "device.in_sync",
            EventType::DeviceActionCompleted => "device.action_completed",
            EventType::SensorStateUpdated => "sensor.state.updated",
            EventType::SensorGroupReadingUpdated => "sensor.group.reading.updated",
            EventType::SensorGroupReadingStale => "sensor.group.reading.stale",
            EventType::SensorGroupStateUpdated => "sensor.group.state.updated",
            EventType::SensorReadingUpdated => "sensor.reading.updated",
            EventType::SensorReadingStale => "sensor.reading.stale",
            EventType::WorkspaceStatusUpdated => "workspace.status.updated",
        }
    }
}

/// An event before it is wrapped: its type, the delivery lane it belongs to and its `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventType,
    /// Events that share a lane are delivered in order: a device's events, or a workspace's.
    pub lane: String,
    pub data: Value,
}

impl Event {
    pub fn device(kind: EventType, device_id: &str, extra: Map<String, Value>) -> Event {
        let mut data = Map::with_capacity(extra.len() + 1);
        data.insert("device_id".into(), Value::String(device_id.to_string()));
        data.extend(extra);
        Event {
            kind,
            lane: format!("device:{device_id}"),
            data: Value::Object(data),
        }
    }

    /// An event of a group of sensors: in the group's own lane.
    pub fn group(kind: EventType, group_id: &str, extra: Map<String, Value>) -> Event {
        let mut data = Map::with_capacity(extra.len() + 1);
        data.insert("group_id".into(), Value::String(group_id.to_string()));
        data.extend(extra);
        Event {
            kind,
            lane: format!("group:{group_id}"),
            data: Value::Object(data),
        }
    }

    pub fn workspace(workspace_id: &str, data: Map<String, Value>) -> Event {
        Event {
            kind: EventType::WorkspaceStatusUpdated,
            lane: format!("workspace:{workspace_id}"),
            data: Value::Object(data),
        }
    }
}

/// An event with its identity, ready to be stored and sent.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The idempotency key; also in the body.
    pub id: String,
    pub kind: EventType,
    pub lane: String,
    /// The exact bytes that are signed and POSTed.
    pub body: Vec<u8>,
}

#[derive(Serialize)]
struct Wire<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: EventType,
    timestamp: String,
    gateway: &'a str,
    data: &'a Value,
}

/// When an event was created: the time carried in its UUIDv7 id (millisecond precision).
pub fn created_at(id: &str) -> Option<SystemTime> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

impl Envelope {
    /// Give `event` an id and a timestamp and serialise it.
    pub fn seal(event: &Event, gateway: &str, at: SystemTime) -> Envelope {
        let id = uuid::Uuid::now_v7().to_string();
        let wire = Wire {
            id: &id,
            kind: event.kind,
            timestamp: humantime::format_rfc3339_millis(at).to_string(),
            gateway,
            data: &event.data,
        };
        let body = serde_json::to_vec(&wire).expect("a JSON value always serialises");
        Envelope {
            id,
            kind: event.kind,
            lane: event.lane.clone(),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_carry_their_creation_time() {
        let before = SystemTime::now() - Duration::from_millis(1);
        let id = uuid::Uuid::now_v7().to_string();
        let t = created_at(&id).unwrap();
        assert!(t >= before && t <= SystemTime::now() + Duration::from_millis(1));
        assert!(created_at("not-a-uuid").is_none());
    }

    #[test]
    fn envelope_has_the_documented_shape() {
        let mut extra = Map::new();
        extra.insert("fields".into(), serde_json::json!({"t": 21.5}));
        let ev = Event::device(EventType::SensorReadingUpdated, "occ-1", extra);
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let env = Envelope::seal(&ev, "gw-1", at);
        let v: Value = serde_json::from_slice(&env.body).unwrap();
        assert_eq!(v["id"], env.id);
        assert_eq!(v["type"], "sensor.reading.updated");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["gateway"], "gw-1");
        assert_eq!(v["data"]["device_id"], "occ-1");
        assert_eq!(v["data"]["fields"]["t"], 21.5);
        assert_eq!(env.lane, "device:occ-1");
    }

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let ev = Event::device(EventType::DeviceOnline, "d", Map::new());
        let ids: Vec<String> = (0..1000)
            .map(|_| Envelope::seal(&ev, "g", SystemTime::now()).id)
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids, "v7 ids must be unique and increasing");
    }
}
