//! Payload formats: the stored event envelope rendered as each kind of receiver expects it.
//! Rendering is a pure function of the stored bytes, so every retry sends the same body.
//!
//! | format           | body                                                                  | carries          |
//! |------------------|-----------------------------------------------------------------------|------------------|
//! | `edgehook`       | the envelope as stored: `{"id","type","timestamp","gateway","data"}`   | every type       |
//! | `spaceos`        | `{"event": type, "timestamp", "data"}`                                 | every type       |
//! | `roomz`          | ROOMZ's first webhook shape: `{"id","type","timestamp","workspaceId"}` | workspace events |
//! | `roomz-presence` | ROOMZ's current API (2024-05-20): `{"id","type":"workspace.presence.changed","timestamp","apiVersion":"1.0","data":{"workspaceId","presenceStatus"}}`; Occupied is `busy`, Free and Booked are `free` (nobody is in a booked room yet), Unknown is not sent | workspace events |
//! | `gospace`        | `{"topic":"SPACE_UPDATED","data":{"_id": workspace, "status", "previous_status"}}` | workspace events |
//! | `generic`        | `{"event_time","event_type","current_context","data"}`; `current_context` is where the event comes from: `event_id`, `gateway`, and `device_id` and/or `workspace_id` | every type |
//! | `cloudevents`    | CloudEvents 1.0 structured mode: `specversion`, `id`, `source` (`urn:edgehook:<gateway>`), `type`, `time`, `subject` (device or workspace id), `datacontenttype`, `data` (`application/cloudevents+json`) | every type |
//!
//! Every other format is `application/json`. An event a format has nothing to say about (a
//! workspace whose status is Unknown, for `roomz-presence`) is not sent: [`render`] returns
//! `None` and delivery removes it for that endpoint, counted as filtered.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::event::EventType;
use crate::sign::{Algorithm, Encoding};

/// How an endpoint wants its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    #[default]
    Edgehook,
    Spaceos,
    Roomz,
    #[serde(rename = "roomz-presence", alias = "roomz_presence")]
    RoomzPresence,
    Gospace,
    Generic,
    Cloudevents,
}

/// The signature a format's receiver checks, unless the endpoint says otherwise.
pub struct SignatureDefaults {
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    pub header: &'static str,
}

impl PayloadFormat {
    /// Every format, for `check-config`'s samples and the tests.
    pub const ALL: [PayloadFormat; 7] = [
        PayloadFormat::Edgehook,
        PayloadFormat::Spaceos,
        PayloadFormat::Roomz,
        PayloadFormat::RoomzPresence,
        PayloadFormat::Gospace,
        PayloadFormat::Generic,
        PayloadFormat::Cloudevents,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Edgehook => "edgehook",
            PayloadFormat::Spaceos => "spaceos",
            PayloadFormat::Roomz => "roomz",
            PayloadFormat::RoomzPresence => "roomz-presence",
            PayloadFormat::Gospace => "gospace",
            PayloadFormat::Generic => "generic",
            PayloadFormat::Cloudevents => "cloudevents",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            PayloadFormat::Cloudevents => "application/cloudevents+json",
            _ => "application/json",
        }
    }

    /// Whether this format can carry events of `kind` at all.
    pub fn carries(self, kind: EventType) -> bool {
        match self {
            PayloadFormat::Roomz | PayloadFormat::RoomzPresence | PayloadFormat::Gospace => {
                kind == EventType::WorkspaceStatusUpdated
            }
            _ => true,
        }
    }

    /// The signature its receiver checks: ROOMZ's current API, base64 HMAC-SHA512 in
    /// `Roomz-Signature`; gospace, hex HMAC-SHA256 in `x-gospace-signature`; the others, hex
    /// HMAC-SHA256 in `X-Webhook-Signature`.
    pub fn signature_defaults(self) -> SignatureDefaults {
        let (algorithm, encoding, header) = match self {
            PayloadFormat::RoomzPresence => {
                (Algorithm::Sha512, Encoding::Base64, "Roomz-Signature")
            }
            PayloadFormat::Gospace => (Algorithm::Sha256, Encoding::Hex, "x-gospace-signature"),
            _ => (Algorithm::Sha256, Encoding::Hex, "X-Webhook-Signature"),
        };
        SignatureDefaults {
            algorithm,
            encoding,
            header,
        }
    }
}

/// The stored envelope `stored` in `format`; `None` when the format sends nothing for it.
pub fn render(format: PayloadFormat, stored: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if format == PayloadFormat::Edgehook {
        return Ok(Some(stored.to_vec()));
    }
    let ev: Value =
        serde_json::from_slice(stored).map_err(|e| format!("stored event is not JSON: {e}"))?;
    let data = &ev["data"];
    let workspace = || match &data["workspace_id"] {
        Value::String(w) => Ok(w.clone()),
        _ => Err(format!(
            "format {} carries workspace events only, not {}",
            format.as_str(),
            ev["type"]
        )),
    };
    let body = match format {
        PayloadFormat::Edgehook => unreachable!("returned above"),
        PayloadFormat::Spaceos => json!({
            "event": ev["type"],
            "timestamp": ev["timestamp"],
            "data": data,
        }),
        PayloadFormat::Roomz => json!({
            "id": ev["id"],
            "type": ev["type"],
            "timestamp": ev["timestamp"],
            "workspaceId": workspace()?,
        }),
        PayloadFormat::RoomzPresence => {
            let workspace = workspace()?;
            let presence = match data["status"].as_str() {
                Some("Occupied") => "busy",
                Some("Free") | Some("Booked") => "free",
                _ => return Ok(None),
            };
            json!({
                "id": ev["id"],
                "type": "workspace.presence.changed",
                "timestamp": ev["timestamp"],
                "apiVersion": "1.0",
                "data": {"workspaceId": workspace, "presenceStatus": presence},
            })
        }
        PayloadFormat::Gospace => json!({
            "topic": "SPACE_UPDATED",
            "data": {
                "_id": workspace()?,
                "status": data["status"],
                "previous_status": data["previous_status"],
            },
        }),
        PayloadFormat::Generic => {
            let mut context = serde_json::Map::new();
            context.insert("event_id".into(), ev["id"].clone());
            context.insert("gateway".into(), ev["gateway"].clone());
            for key in ["device_id", "workspace_id", "group_id"] {
                if let Some(v) = data.get(key) {
                    context.insert(key.into(), v.clone());
                }
            }
            json!({
                "event_time": ev["timestamp"],
                "event_type": ev["type"],
                "current_context": context,
                "data": data,
            })
        }
        PayloadFormat::Cloudevents => {
            let subject = data
                .get("workspace_id")
                .or_else(|| data.get("device_id"))
                .or_else(|| data.get("group_id"))
                .cloned()
                .unwrap_or(Value::Null);
            json!({
                "specversion": "1.0",
                "id": ev["id"],
                "source": format!("urn:edgehook:{}", ev["gateway"].as_str().unwrap_or("unknown")),
                "type": ev["type"],
                "time": ev["timestamp"],
                "subject": subject,
                "datacontenttype": "application/json",
                "data": data,
            })
        }
    };
    Ok(Some(
        serde_json::to_vec(&body).expect("a JSON value serialises"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const READING: &str = r#"{"id":"019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a23","type":"sensor.reading.updated","timestamp":"2026-11-23T10:15:02.481Z","gateway":"gw-1","data":{"device_id":"occ-1","fields":{"presence":true},"changed":["presence"]}}"#;
    const WORKSPACE: &str = r#"{"id":"019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a24","type":"workspace.status.updated","timestamp":"2026-11-23T10:15:02.500Z","gateway":"gw-1","data":{"workspace_id":"room-1","status":"Occupied","previous_status":"Free","device_id":"occ-1"}}"#;

    fn rendered(format: PayloadFormat, stored: &str) -> Value {
        serde_json::from_slice(&render(format, stored.as_bytes()).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn edgehook_is_the_stored_bytes() {
        assert_eq!(
            render(PayloadFormat::Edgehook, READING.as_bytes())
                .unwrap()
                .unwrap(),
            READING.as_bytes()
        );
    }

    #[test]
    fn spaceos_roomz_and_cloudevents_shapes() {
        assert_eq!(
            rendered(PayloadFormat::Spaceos, READING),
            json!({"event": "sensor.reading.updated", "timestamp": "2026-11-23T10:15:02.481Z",
                   "data": {"device_id": "occ-1", "fields": {"presence": true}, "changed": ["presence"]}})
        );
        assert_eq!(
            rendered(PayloadFormat::Roomz, WORKSPACE),
            json!({"id": "019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a24", "type": "workspace.status.updated",
                   "timestamp": "2026-11-23T10:15:02.500Z", "workspaceId": "room-1"})
        );
        assert!(render(PayloadFormat::Roomz, READING.as_bytes()).is_err());
        let ce = rendered(PayloadFormat::Cloudevents, WORKSPACE);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["id"], "019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a24");
        assert_eq!(ce["source"], "urn:edgehook:gw-1");
        assert_eq!(ce["type"], "workspace.status.updated");
        assert_eq!(ce["time"], "2026-11-23T10:15:02.500Z");
        assert_eq!(ce["subject"], "room-1");
        assert_eq!(ce["data"]["status"], "Occupied");
        assert_eq!(
            rendered(PayloadFormat::Cloudevents, READING)["subject"],
            "occ-1"
        );
        assert_eq!(
            PayloadFormat::Cloudevents.content_type(),
            "application/cloudevents+json"
        );
    }

    #[test]
    fn rendering_is_deterministic() {
        for f in PayloadFormat::ALL {
            assert_eq!(
                render(f, WORKSPACE.as_bytes()),
                render(f, WORKSPACE.as_bytes())
            );
        }
    }

    fn workspace(status: &str) -> String {
        WORKSPACE.replace(r#""status":"Occupied""#, &format!(r#""status":"{status}""#))
    }

    /// ROOMZ's current API (roomz-io/openapi `openapi/spec3.yml`, 2024-05-20): the
    /// `WebhookEvent` with a `WorkspacePresenceChangedEvent`, presence `free` or `busy`.
    #[test]
    fn roomz_presence_maps_the_status_to_presence() {
        assert_eq!(
            rendered(PayloadFormat::RoomzPresence, WORKSPACE),
            json!({"id": "019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a24", "type": "workspace.presence.changed",
                   "timestamp": "2026-11-23T10:15:02.500Z", "apiVersion": "1.0",
                   "data": {"workspaceId": "room-1", "presenceStatus": "busy"}})
        );
        for (status, presence) in [
            ("Occupied", Some("busy")),
            ("Free", Some("free")),
            ("Booked", Some("free")),
            ("Unknown", None),
        ] {
            let out = render(PayloadFormat::RoomzPresence, workspace(status).as_bytes()).unwrap();
            let got = out.map(|b| {
                serde_json::from_slice::<Value>(&b).unwrap()["data"]["presenceStatus"]
                    .as_str()
                    .unwrap()
                    .to_string()
            });
            assert_eq!(got.as_deref(), presence, "{status}");
        }
        assert!(render(PayloadFormat::RoomzPresence, READING.as_bytes()).is_err());
    }

    /// gospace's webhook format (`{topic, data: {_id}}`): a space's status changed.
    #[test]
    fn gospace_is_a_space_update() {
        assert_eq!(
            rendered(PayloadFormat::Gospace, WORKSPACE),
            json!({"topic": "SPACE_UPDATED",
                   "data": {"_id": "room-1", "status": "Occupied", "previous_status": "Free"}})
        );
        assert!(render(PayloadFormat::Gospace, READING.as_bytes()).is_err());
    }

    #[test]
    fn generic_names_the_context() {
        assert_eq!(
            rendered(PayloadFormat::Generic, READING),
            json!({"event_time": "2026-11-23T10:15:02.481Z", "event_type": "sensor.reading.updated",
                   "current_context": {"event_id": "019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a23", "gateway": "gw-1", "device_id": "occ-1"},
                   "data": {"device_id": "occ-1", "fields": {"presence": true}, "changed": ["presence"]}})
        );
        let ws = rendered(PayloadFormat::Generic, WORKSPACE);
        assert_eq!(ws["current_context"]["workspace_id"], "room-1");
        assert_eq!(ws["current_context"]["device_id"], "occ-1");
    }

    #[test]
    fn each_format_has_its_receivers_signature() {
        let d = PayloadFormat::RoomzPresence.signature_defaults();
        assert_eq!(
            (d.algorithm, d.encoding, d.header),
            (Algorithm::Sha512, Encoding::Base64, "Roomz-Signature")
        );
        let d = PayloadFormat::Gospace.signature_defaults();
        assert_eq!(
            (d.algorithm, d.encoding, d.header),
            (Algorithm::Sha256, Encoding::Hex, "x-gospace-signature")
        );
        let d = PayloadFormat::Roomz.signature_defaults();
        assert_eq!(
            d.header, "X-Webhook-Signature",
            "the first roomz format keeps its header"
        );
        for f in PayloadFormat::ALL {
            let name: PayloadFormat = serde_json::from_value(json!(f.as_str())).unwrap();
            assert_eq!(name, f);
        }
    }
}
