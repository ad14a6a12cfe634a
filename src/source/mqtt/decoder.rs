//! The decoder: which subscription a topic belongs to, and what its payload says (a reading's
//! fields, a status, an action's result), through the subscription's pointer, flattening and
//! jq mapping.

use super::*;

/// A subscription, compiled.
struct Compiled {
    pattern: TopicPattern,
    exclude: Vec<TopicPattern>,
    kind: PayloadKind,
    metadata: Arc<[String]>,
    /// JSON pointer to the fields (empty: the payload), and whether to flatten them.
    fields: String,
    flatten: bool,
    /// The subscription's jq mapping, applied to the payload first.
    jq: Option<crate::jq::Filter>,
    /// A JSON pointer to the device id in the payload (as received).
    device: Option<String>,
}

/// Topic patterns and payload rules: turns (topic, payload) into a device message.
pub struct Decoder {
    routes: Vec<Compiled>,
    max_payload: usize,
}

impl Decoder {
    pub fn new(config: &MqttConfig) -> Result<Decoder, String> {
        let routes = config
            .all_subscriptions()
            .into_iter()
            .map(|s| {
                Ok(Compiled {
                    pattern: if s.device.is_empty() {
                        TopicPattern::parse(&s.topic)?
                    } else {
                        TopicPattern::parse_filter(&s.topic)?
                    },
                    device: Some(s.device.clone()).filter(|d| !d.is_empty()),
                    exclude: s
                        .exclude
                        .iter()
                        .map(|e| TopicPattern::parse_filter(e))
                        .collect::<Result<_, String>>()?,
                    kind: s.kind,
                    metadata: s.metadata_fields.into(),
                    fields: s.fields,
                    flatten: s.flatten,
                    jq: match s.jq.as_str() {
                        "" => None,
                        code => Some(
                            crate::jq::Filter::compile(code, crate::jq::Budget::MAPPING)
                                .map_err(|e| format!("the jq filter {e}"))?,
                        ),
                    },
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Decoder {
            routes,
            max_payload: config.max_payload_bytes,
        })
    }

    /// The MQTT filters to subscribe to, each once.
    pub fn filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = Vec::new();
        for f in self.routes.iter().map(|r| r.pattern.filter()) {
            if !filters.contains(&f) {
                filters.push(f);
            }
        }
        filters
    }

    /// Decode one message. `Ok(None)` means no subscription takes the topic (none matches, or
    /// the one that matches excludes it).
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<Option<(String, InboundBody)>, DecodeError> {
        let Some((route, device)) = self
            .routes
            .iter()
            .find_map(|r| r.pattern.capture(topic).map(|d| (r, d)))
        else {
            return Ok(None);
        };
        if route.exclude.iter().any(|e| e.capture(topic).is_some()) {
            return Ok(None);
        }
        let named;
        let device = match &route.device {
            None => device,
            Some(pointer) => {
                named = device_in(payload, self.max_payload, pointer)?;
                named.as_str()
            }
        };
        check_device_id(device)?;
        let mapped;
        let payload = match &route.jq {
            None => payload,
            Some(filter) => {
                if payload.len() > self.max_payload {
                    return Err(DecodeError::Oversize {
                        size: payload.len(),
                        limit: self.max_payload,
                    });
                }
                match filter.run(payload) {
                    Ok(Some(out)) => {
                        mapped = out;
                        mapped.as_slice()
                    }
                    // The mapping says this is no device message.
                    Ok(None) => return Ok(None),
                    Err(crate::jq::RunError::Input(e)) => return Err(DecodeError::NotJson(e)),
                    Err(e) => return Err(DecodeError::Mapping(e.to_string())),
                }
            }
        };
        let body = match route.kind {
            PayloadKind::Reading => {
                match decode_fields(payload, self.max_payload, &route.fields, route.flatten) {
                    Ok(fields) if !fields.is_empty() => InboundBody::Reading {
                        fields,
                        metadata: route.metadata.clone(),
                    },
                    // The device's message without fields (a LoRaWAN uplink without a decoded
                    // payload, a notification with nothing to read): still a sign of life.
                    Ok(_) | Err(DecodeError::NoFields(_)) => InboundBody::Status { online: true },
                    Err(e) => return Err(e),
                }
            }
            PayloadKind::Status => InboundBody::Status {
                online: decode_status(payload, self.max_payload)?,
            },
            PayloadKind::Online => InboundBody::Status { online: true },
            PayloadKind::ActionResult => decode_action_result(payload, self.max_payload)?,
        };
        Ok(Some((device.to_string(), body)))
    }
}

/// The device id at JSON pointer `pointer` in `payload` (a string, or a number as written).
fn device_in(payload: &[u8], limit: usize, pointer: &str) -> Result<String, DecodeError> {
    let value = crate::source::parse_json(payload, limit)?;
    match value.pointer(pointer) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        _ => Err(DecodeError::NoDevice(pointer.to_string())),
    }
}
