//! Payload formats: the stored event envelope rendered as each kind of receiver expects it.
//! Rendering is a pure function of the stored bytes, so every retry sends the same body.
//!
//! | format        | body                                                                  | Content-Type                  |
//! |---------------|-----------------------------------------------------------------------|-------------------------------|
//! | `edgehook`    | the envelope as stored: `{"id","type","timestamp","gateway","data"}`   | `application/json`            |
//! | `spaceos`     | `{"event": type, "timestamp", "data"}`                                 | `application/json`            |
//! | `roomz`       | `{"id","type","timestamp","workspaceId"}` — workspace events only      | `application/json`            |
//! | `cloudevents` | CloudEvents 1.0 structured mode: `specversion`, `id`, `source` (`urn:edgehook:<gateway>`), `type`, `time`, `subject` (device or workspace id), `datacontenttype`, `data` | `application/cloudevents+json` |

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::event::EventType;

/// How an endpoint wants its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    #[default]
    Edgehook,
    Spaceos,
    Roomz,
    Cloudevents,
}

impl PayloadFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            PayloadFormat::Cloudevents => "application/cloudevents+json",
            _ => "application/json",
        }
    }

    /// Whether this format can carry events of `kind` at all.
    pub fn carries(self, kind: EventType) -> bool {
        self != PayloadFormat::Roomz || kind == EventType::WorkspaceStatusUpdated
    }
}

/// Render the stored envelope `stored` in `format`.
pub fn render(format: PayloadFormat, stored: &[u8]) -> Result<Vec<u8>, String> {
    if format == PayloadFormat::Edgehook {
        return Ok(stored.to_vec());
    }
    let ev: Value =
        serde_json::from_slice(stored).map_err(|e| format!("stored event is not JSON: {e}"))?;
    let body = match format {
        PayloadFormat::Edgehook => unreachable!("returned above"),
        PayloadFormat::Spaceos => json!({
            "event": ev["type"],
            "timestamp": ev["timestamp"],
            "data": ev["data"],
        }),
        PayloadFormat::Roomz => {
            let workspace = &ev["data"]["workspace_id"];
            if !workspace.is_string() {
                return Err(format!(
                    "roomz carries workspace events only, not {}",
                    ev["type"]
                ));
            }
            json!({
                "id": ev["id"],
                "type": ev["type"],
                "timestamp": ev["timestamp"],
                "workspaceId": workspace,
            })
        }
        PayloadFormat::Cloudevents => {
            let data = &ev["data"];
            let subject = data
                .get("workspace_id")
                .or_else(|| data.get("device_id"))
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
    Ok(serde_json::to_vec(&body).expect("a JSON value serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const READING: &str = r#"{"id":"019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a23","type":"sensor.reading.updated","timestamp":"2026-11-23T10:15:02.481Z","gateway":"gw-1","data":{"device_id":"occ-1","fields":{"presence":true},"changed":["presence"]}}"#;
    const WORKSPACE: &str = r#"{"id":"019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a24","type":"workspace.status.updated","timestamp":"2026-11-23T10:15:02.500Z","gateway":"gw-1","data":{"workspace_id":"room-1","status":"Occupied","previous_status":"Free","device_id":"occ-1"}}"#;

    fn rendered(format: PayloadFormat, stored: &str) -> Value {
        serde_json::from_slice(&render(format, stored.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn edgehook_is_the_stored_bytes() {
        assert_eq!(
            render(PayloadFormat::Edgehook, READING.as_bytes()).unwrap(),
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
        for f in [PayloadFormat::Spaceos, PayloadFormat::Cloudevents] {
            assert_eq!(render(f, READING.as_bytes()), render(f, READING.as_bytes()));
        }
    }
}
