//! One receiver: where events go, which ones, in what format, signed how, compressed or not.
//! Building a request is a pure function of the stored record and the attempt time
//! ([`Endpoint::request_parts`]).

use std::io::Write as _;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use wildmatch::WildMatch;

use super::config::WebhookConfig;
use super::format::{render, PayloadFormat};
use crate::event::EventType;
use crate::outbox::OutboxRecord;
use crate::sign::{SignatureScheme, Signer};

pub struct Endpoint {
    pub url: reqwest::Url,
    /// `url` without credentials or query, for logs.
    pub url_for_logs: String,
    events: Vec<WildMatch>,
    format: PayloadFormat,
    signer: Signer,
    /// Makes the body instead of `format`, when set.
    template: Option<super::template::Template>,
    idempotency_header: HeaderName,
    /// `compress_above`.
    compress_above: Option<u64>,
    /// Content-Type and the configured extra headers.
    fixed: HeaderMap,
}

/// Headers set by HTTP itself, whatever the endpoint.
const TRANSPORT_HEADERS: [&str; 4] = ["content-type", "content-length", "content-encoding", "host"];

/// Whether edgehook sets the header `name` itself on this endpoint's requests (so it cannot be
/// one of its configured `headers`): Content-Type, Content-Length, Content-Encoding, Host, the signature's
/// headers (of either scheme, so that switching schemes never clashes) and the idempotency key.
pub fn sets_header(config: &WebhookConfig, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    TRANSPORT_HEADERS.contains(&name.as_str())
        || [SignatureScheme::Hmac, SignatureScheme::StandardWebhooks]
            .into_iter()
            .flat_map(|s| Signer::header_names(s, &config.hmac_options()))
            .any(|h| h == name)
        || name == config.idempotency_header.to_ascii_lowercase()
}

impl Endpoint {
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Endpoint> {
        let mut fixed = HeaderMap::new();
        fixed.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(config.format.content_type()),
        );
        for (name, value) in &config.headers {
            let mut value = HeaderValue::from_str(value.expose())?;
            value.set_sensitive(true);
            fixed.insert(HeaderName::from_bytes(name.as_bytes())?, value);
        }
        Ok(Endpoint {
            url: crate::address::parse(&config.url).map_err(anyhow::Error::msg)?,
            url_for_logs: crate::secret::redact_url(&config.url),
            events: config.events.iter().map(|e| WildMatch::new(e)).collect(),
            format: config.format,
            signer: Signer::with(
                config.signature,
                &config.signing_secrets(),
                config.hmac_options(),
            )?,
            idempotency_header: HeaderName::from_bytes(config.idempotency_header.as_bytes())?,
            compress_above: config.compress_above,
            template: match config.template.as_str() {
                "" => None,
                code => Some(
                    super::template::Template::compile(code)
                        .map_err(|e| anyhow::anyhow!("endpoint {}: {e}", config.name))?,
                ),
            },
            fixed,
        })
    }

    /// Whether a template makes the body.
    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    /// Whether events of type `kind` go to this endpoint.
    pub fn wants(&self, kind: &str) -> bool {
        let carried = EventType::ALL
            .iter()
            .find(|t| t.as_str() == kind)
            .is_none_or(|t| self.format.carries(*t));
        carried && self.events.iter().any(|p| p.matches(kind))
    }

    /// The headers and body of one attempt at `timestamp` (Unix seconds); `None` when the
    /// format sends nothing for this event. The signature covers the body before compression.
    pub fn request_parts(
        &self,
        record: &OutboxRecord,
        timestamp: u64,
    ) -> Result<Option<(HeaderMap, Vec<u8>)>, String> {
        match self.body(record)? {
            Some(body) => self.request(&record.id, timestamp, body).map(Some),
            None => Ok(None),
        }
    }

    /// One event's body as this endpoint sends it (its template, or its format); `None` when
    /// there is nothing to send for it.
    pub fn body(&self, record: &OutboxRecord) -> Result<Option<Vec<u8>>, String> {
        match &self.template {
            Some(template) => template.render(&record.body),
            None => render(self.format, &record.body),
        }
    }

    /// A batch of events: the request for every member with a body, as a JSON array in their
    /// order, keyed `batch_id`; per member, whether it is in it (`Ok(false)`: nothing to send
    /// for it; `Err`: it cannot be made into a body).
    pub fn batch_parts(
        &self,
        records: &[OutboxRecord],
        timestamp: u64,
    ) -> (Vec<Result<bool, String>>, Option<BatchRequest>) {
        let mut array = b"[".to_vec();
        let mut ids = Vec::new();
        let members: Vec<Result<bool, String>> = records
            .iter()
            .map(|record| match self.body(record) {
                Ok(Some(body)) => {
                    if !ids.is_empty() {
                        array.push(b',');
                    }
                    array.extend_from_slice(&body);
                    ids.push(record.id.as_str());
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => Err(e),
            })
            .collect();
        if ids.is_empty() {
            return (members, None);
        }
        array.push(b']');
        let id = batch_id(&ids);
        match self.request(&id, timestamp, array) {
            Ok((headers, body)) => (members, Some((id, headers, body))),
            Err(e) => (vec![Err(e); records.len()], None),
        }
    }

    /// The signed, keyed (and maybe compressed) request for `body`.
    fn request(
        &self,
        id: &str,
        timestamp: u64,
        body: Vec<u8>,
    ) -> Result<(HeaderMap, Vec<u8>), String> {
        let mut headers = self.fixed.clone();
        for (name, value) in self.signer.headers(id, timestamp, &body) {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
            headers.insert(name, value);
        }
        let id = HeaderValue::from_str(id).map_err(|e| e.to_string())?;
        headers.insert(self.idempotency_header.clone(), id);
        let body = match self.compress_above {
            Some(above) if body.len() as u64 > above => {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                gzip(&body)
            }
            _ => body,
        };
        Ok((headers, body))
    }
}

/// A batch's request: its id, headers and body.
pub type BatchRequest = (String, HeaderMap, Vec<u8>);

/// A batch's id: a function of its members' ids (in order), so the same batch sent again has
/// the same id; shaped like a UUID (version 8, SHA-256 based) for receivers that expect one.
pub fn batch_id(ids: &[&str]) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for id in ids {
        hash.update(id.as_bytes());
        hash.update(b"\n");
    }
    let mut b: [u8; 16] = hash.finalize()[..16].try_into().expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `body` gzipped (deterministic: no name, no time in the header, so every retry sends the
/// same bytes).
fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 2),
        flate2::Compression::default(),
    );
    encoder
        .write_all(body)
        .and_then(|()| encoder.finish())
        .expect("writing to memory cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(extra: &str) -> Endpoint {
        Endpoint::new(&crate::deliver::test_config(extra).webhook).unwrap()
    }

    fn record() -> OutboxRecord {
        OutboxRecord {
            seq: 1,
            id: "019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a24".into(),
            kind: "workspace.status.updated".into(),
            lane: "workspace:room-1".into(),
            body: br#"{"id":"019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a24","type":"workspace.status.updated","timestamp":"2026-11-23T10:15:02.500Z","gateway":"gw","data":{"workspace_id":"room-1","status":"Free"}}"#.to_vec(),
        }
    }

    #[test]
    fn filters_by_type_patterns_and_format() {
        let e = endpoint(r#"events = ["device.*", "workspace.status.updated"]"#);
        assert!(e.wants("device.online") && e.wants("device.lost_communication"));
        assert!(e.wants("workspace.status.updated"));
        assert!(!e.wants("sensor.reading.updated"));
        let roomz = endpoint(
            r#"format = "roomz"
            events = ["workspace.*"]"#,
        );
        assert!(roomz.wants("workspace.status.updated") && !roomz.wants("device.online"));
    }

    #[test]
    fn standard_webhooks_request_with_custom_headers() {
        let e = endpoint(
            r#"signature = "standard-webhooks"
            format = "cloudevents"
            headers = { "X-Api-Key" = "k-123" }"#,
        );
        let (headers, body) = e.request_parts(&record(), 1_700_000_000).unwrap().unwrap();
        assert_eq!(headers["content-type"], "application/cloudevents+json");
        assert_eq!(headers["x-api-key"], "k-123");
        assert!(headers["x-api-key"].is_sensitive());
        assert_eq!(headers["webhook-id"], record().id.as_str());
        assert_eq!(headers["webhook-timestamp"], "1700000000");
        assert_eq!(headers["idempotency-key"], record().id.as_str());
        let signer = Signer::with(
            crate::sign::SignatureScheme::StandardWebhooks,
            &[crate::secret::Secret::new(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            )],
            Default::default(),
        )
        .unwrap();
        assert_eq!(
            headers["webhook-signature"],
            signer
                .sign_standard(&record().id, 1_700_000_000, &body)
                .as_str(),
            "signed over the body as sent (the rendered format)"
        );
        assert!(headers.get("x-webhook-signature").is_none());
    }

    #[test]
    fn hex_scheme_uses_the_configured_header_over_the_sent_body() {
        let e = endpoint(
            r#"signature_header = "X-Roomz-Signature"
            format = "roomz"
            events = ["workspace.*"]"#,
        );
        let (headers, body) = e.request_parts(&record(), 0).unwrap().unwrap();
        let signer = Signer::new(&crate::secret::Secret::new(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ));
        assert_eq!(headers["x-roomz-signature"], signer.sign(0, &body).as_str());
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("\"workspaceId\":\"room-1\""));
    }

    fn gunzip(body: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// `compress_above`: a body above it goes gzipped, signed before compression; one at or
    /// below it goes as it is. Either way every retry sends the same bytes.
    #[test]
    fn large_bodies_are_gzipped_and_signed_uncompressed() {
        let small = endpoint(r#"compress_above = 100000"#);
        let (headers, plain) = small.request_parts(&record(), 0).unwrap().unwrap();
        assert!(headers.get("content-encoding").is_none());
        assert_eq!(plain, record().body);

        let e = endpoint(r#"compress_above = 16"#);
        let (headers, body) = e.request_parts(&record(), 0).unwrap().unwrap();
        assert_eq!(headers["content-encoding"], "gzip");
        assert_eq!(gunzip(&body), record().body);
        let signer = Signer::new(&crate::secret::Secret::new(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ));
        assert_eq!(
            headers["x-webhook-signature"],
            signer.sign(0, &record().body).as_str()
        );
        let (_, again) = e.request_parts(&record(), 0).unwrap().unwrap();
        assert_eq!(again, body, "the same bytes on every retry");
    }

    /// `roomz-presence` for a workspace whose status is Unknown: nothing to send.
    #[test]
    fn a_format_with_nothing_to_say_sends_nothing() {
        let e = endpoint(
            r#"format = "roomz-presence"
            events = ["workspace.*"]"#,
        );
        let mut unknown = record();
        unknown.body = String::from_utf8(unknown.body)
            .unwrap()
            .replace(r#""status":"Free""#, r#""status":"Unknown""#)
            .into_bytes();
        assert_eq!(e.request_parts(&unknown, 0).unwrap(), None);
        let (headers, _) = e.request_parts(&record(), 0).unwrap().unwrap();
        assert!(
            headers.contains_key("roomz-signature"),
            "ROOMZ's header by default"
        );
    }
}
