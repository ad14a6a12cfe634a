//! The seam between delivery's rules and the network: a [`Transport`] takes one record and
//! comes back with the attempt's [`Outcome`]. HTTP ([`Http`]) in the daemon; tests drive the
//! dispatcher with their own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::config::WebhookConfig;
use super::endpoint::Endpoint;
use super::exchanges::{Exchange, Exchanges, Text, ANSWER_BYTES, BODY_BYTES};
use super::retry::{classify, Answer, Outcome};
use crate::outbox::OutboxRecord;

/// One attempt under way: its outcome once the receiver answered, failed or timed out.
pub type Attempt = Pin<Box<dyn Future<Output = Outcome> + Send>>;
/// A batch under way: one outcome per record, in order.
pub type BatchAttempt = Pin<Box<dyn Future<Output = Vec<Outcome>> + Send>>;

/// Sends records to the receiver. The returned futures own all they need (they run on their
/// own tasks) and never panic on what the receiver does.
pub trait Transport: Send + Sync {
    fn send(&self, record: &OutboxRecord) -> Attempt;

    /// Several records in one request (`batch_max_events`); by default, one after the other.
    fn send_batch(&self, records: Vec<OutboxRecord>) -> BatchAttempt {
        let attempts: Vec<Attempt> = records.iter().map(|r| self.send(r)).collect();
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(attempts.len());
            for attempt in attempts {
                outcomes.push(attempt.await);
            }
            outcomes
        })
    }
}

/// HTTPS POST of the record as the endpoint renders and signs it; redirects never followed.
pub struct Http {
    client: reqwest::Client,
    endpoint: Arc<Endpoint>,
    name: String,
    /// Where each request and its answer are kept for the operator, if anywhere.
    exchanges: Option<Arc<Exchanges>>,
}

/// What one request keeps for the operator: where, and the events it carried.
struct Keep {
    exchanges: Arc<Exchanges>,
    endpoint: String,
    event_ids: Vec<String>,
}

/// A request under way, as it is kept: its content type and its body as the receiver reads it.
struct Sent {
    keep: Keep,
    content_type: Option<String>,
    request: Text,
}

impl Keep {
    /// What is kept of the request about to go with `headers` and `body`: its body's start (a
    /// gzipped one undone, as far as is kept) and its content type. Nothing else is copied.
    fn sent(self, headers: &reqwest::header::HeaderMap, body: &[u8]) -> Sent {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request = if header(reqwest::header::CONTENT_ENCODING).as_deref() == Some("gzip") {
            use std::io::Read;
            let mut plain = Vec::new();
            let mut unzip = flate2::read::GzDecoder::new(body).take(BODY_BYTES as u64 + 1);
            match unzip.read_to_end(&mut plain) {
                Err(_) if plain.is_empty() => {
                    Text::cut(b"(gzipped; could not be undone)", BODY_BYTES)
                }
                _ => Text::cut(&plain, BODY_BYTES),
            }
        } else {
            Text::cut(body, BODY_BYTES)
        };
        Sent {
            keep: self,
            content_type: header(reqwest::header::CONTENT_TYPE),
            request,
        }
    }
}

impl Sent {
    /// The receiver's status and the start of its answer (`None`: it never answered): kept.
    fn answered(self, answer: Option<(u16, &[u8])>) {
        self.keep.exchanges.keep(Exchange {
            at: crate::clock::system_now(),
            endpoint: self.keep.endpoint,
            event_ids: self.keep.event_ids,
            content_type: self.content_type,
            request: self.request,
            response: answer.map(|(status, body)| (status, Text::cut(body, ANSWER_BYTES))),
        });
    }
}

impl Http {
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Http> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(crate::tls::client_config(None)?)
            // A redirect is a failed attempt (see `retry::classify`), never followed.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(config.max_concurrency)
            .user_agent(concat!("edgehook/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Http {
            client,
            endpoint: Arc::new(Endpoint::new(config)?),
            name: config.name.clone(),
            exchanges: None,
        })
    }

    /// Keep each request and its answer in `exchanges` (the operator's view of deliveries).
    pub fn keeping(mut self, exchanges: Arc<Exchanges>) -> Http {
        self.exchanges = Some(exchanges);
        self
    }

    fn keep(&self, event_ids: Vec<String>) -> Option<Keep> {
        Some(Keep {
            exchanges: self.exchanges.clone()?,
            endpoint: self.name.clone(),
            event_ids,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Http {
    /// `make(endpoint)` for an endpoint with a template: on a blocking thread, since it waits
    /// for the template's worker, which answers within its budget (`crate::jq::Budget::TEMPLATE`)
    /// or is stopped: no thread is left behind. Without a template, requests are made at once
    /// where the attempt starts (a pure function, quick, with no copy of the record).
    async fn templated<T: Send + 'static>(
        endpoint: Arc<Endpoint>,
        make: impl FnOnce(&Endpoint) -> T + Send + 'static,
    ) -> Result<T, String> {
        tokio::task::spawn_blocking(move || make(&endpoint))
            .await
            .map_err(|e| format!("the template failed: {e}"))
    }

    /// One event's attempt, from its request (`None`: nothing to send for it).
    async fn attempt(
        client: reqwest::Client,
        endpoint: &Endpoint,
        parts: Result<Option<(reqwest::header::HeaderMap, Vec<u8>)>, String>,
        keep: Option<Keep>,
    ) -> Outcome {
        match parts {
            Ok(Some((headers, body))) => Self::post(client, endpoint, headers, body, keep).await,
            Ok(None) => Outcome::NotSent,
            Err(why) => Outcome::Unsendable {
                reason: format!("cannot make the request: {why}"),
            },
        }
    }

    /// POST `body` with `headers`: what the receiver's answer means. With `keep`, the request
    /// and the start of the answer are kept for the operator.
    async fn post(
        client: reqwest::Client,
        endpoint: &Endpoint,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
        keep: Option<Keep>,
    ) -> Outcome {
        let sent = keep.map(|k| k.sent(&headers, &body));
        let request = client
            .post(endpoint.url.clone())
            .headers(headers)
            .body(body);
        let response = request.send().await;
        let Some(sent) = sent else {
            return Self::answer(response, None).await.0;
        };
        let (outcome, answer) = Self::answer(response, Some(ANSWER_BYTES)).await;
        sent.answered(answer.as_ref().map(|(s, b)| (*s, &b[..])));
        outcome
    }

    /// What a response means, and (reading up to `read` bytes of a 2xx's body too) its status
    /// and the start of its body.
    async fn answer(
        response: reqwest::Result<reqwest::Response>,
        read: Option<usize>,
    ) -> (Outcome, Option<(u16, Vec<u8>)>) {
        match response {
            Ok(mut resp) => {
                let header = |resp: &reqwest::Response, name| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let retry_after = header(&resp, reqwest::header::RETRY_AFTER);
                let location = header(&resp, reqwest::header::LOCATION);
                let status = resp.status().as_u16();
                // A failure keeps the start of what the receiver said (read no further); a
                // success is read only to be kept, and for a moment at most.
                let most = read.unwrap_or(0).max(super::retry::SAID_BYTES + 4);
                let success = resp.status().is_success();
                let mut body = Vec::new();
                let reading = async {
                    while body.len() < most {
                        match resp.chunk().await {
                            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                            _ => break,
                        }
                    }
                };
                match (success, read) {
                    (false, _) => reading.await,
                    (true, Some(_)) => {
                        let _ = tokio::time::timeout(SUCCESS_READ, reading).await;
                    }
                    (true, None) => drop(reading),
                }
                body.truncate(most);
                let said = super::retry::said(&body);
                let answer = Answer {
                    status,
                    retry_after: retry_after.as_deref(),
                    location: location.as_deref(),
                    said: &said,
                };
                (classify(answer, SystemTime::now()), Some((status, body)))
            }
            Err(e) => {
                let outcome = Outcome::Retry {
                    status: None,
                    retry_after: None,
                    reason: describe_reqwest_error(&e),
                };
                (outcome, None)
            }
        }
    }
}

/// How long the body of a 2xx is read for, to be kept: the event is delivered whatever it says.
const SUCCESS_READ: Duration = Duration::from_secs(1);

impl Transport for Http {
    fn send(&self, record: &OutboxRecord) -> Attempt {
        let (endpoint, client, now) = (self.endpoint.clone(), self.client.clone(), unix_now());
        let keep = self.keep(vec![record.id.clone()]);
        if !endpoint.has_template() {
            let parts = endpoint.request_parts(record, now);
            return Box::pin(async move { Self::attempt(client, &endpoint, parts, keep).await });
        }
        let record = record.clone();
        Box::pin(async move {
            let parts = Self::templated(endpoint.clone(), move |e| e.request_parts(&record, now))
                .await
                .and_then(|parts| parts);
            Self::attempt(client, &endpoint, parts, keep).await
        })
    }

    /// One request whose body is the JSON array of the records' bodies. Its 2xx delivers every
    /// record in it; a 4xx other than 408, 410 and 429 splits it (each record is sent again
    /// on its own, so one the receiver refuses holds up no other); any other failure is each
    /// record's failure. Records with nothing to send, or that cannot be made into a body, are
    /// left out of it and have their own outcome.
    fn send_batch(&self, records: Vec<OutboxRecord>) -> BatchAttempt {
        let (endpoint, client) = (self.endpoint.clone(), self.client.clone());
        let (n, now) = (records.len(), unix_now());
        let mut keep = self.keep(Vec::new());
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let ready = (!endpoint.has_template()).then(|| endpoint.batch_parts(&records, now));
        Box::pin(async move {
            let made = match ready {
                Some(made) => Ok(made),
                None => {
                    Self::templated(endpoint.clone(), move |e| e.batch_parts(&records, now)).await
                }
            };
            let (members, request) = match made {
                Ok(made) => made,
                Err(why) => (vec![Err(why); n], None),
            };
            // The events that went in the request.
            if let Some(keep) = &mut keep {
                keep.event_ids = (members.iter().zip(ids))
                    .filter(|(m, _)| matches!(m, Ok(true)))
                    .map(|(_, id)| id)
                    .collect();
            }
            let outcome = match request {
                Some((_, headers, body)) => {
                    Some(Self::post(client, &endpoint, headers, body, keep).await)
                }
                None => None,
            };
            batch_outcomes(members, outcome)
        })
    }
}

/// Each member's outcome, from whether it went in the batch (`Ok(true)`; `Ok(false)`: nothing
/// to send for it; `Err`: it cannot be made into a body) and the batch request's `outcome`
/// (`None`: no request, nothing was in it). A refused batch of several is split.
pub fn batch_outcomes(
    members: Vec<Result<bool, String>>,
    outcome: Option<Outcome>,
) -> Vec<Outcome> {
    let sent = members.iter().filter(|m| matches!(m, Ok(true))).count();
    members
        .into_iter()
        .map(|member| match (member, &outcome) {
            (Err(why), _) => Outcome::Unsendable {
                reason: format!("cannot make the request: {why}"),
            },
            (Ok(false), _) | (Ok(true), None) => Outcome::NotSent,
            (
                Ok(true),
                Some(Outcome::Retry {
                    status: Some(status),
                    ..
                }),
            ) if sent > 1 && is_refusal(*status) => Outcome::Split { status: *status },
            (Ok(true), Some(outcome)) => outcome.clone(),
        })
        .collect()
}

/// A 4xx that says the request itself is refused (not 408 Request Timeout, 410 Gone or 429
/// Too Many Requests): for a batch, maybe one of its events.
fn is_refusal(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 410 | 429)
}

/// A one-line reason without the URL's query (which could carry a token).
pub fn describe_reqwest_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_request() {
        "request failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "error"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(
        headers: &[(&'static str, &str)],
        body: &[u8],
        answer: Option<(u16, &[u8])>,
    ) -> Exchange {
        let exchanges = Arc::new(Exchanges::default());
        let keep = Keep {
            exchanges: exchanges.clone(),
            endpoint: "crm".into(),
            event_ids: vec!["e1".into()],
        };
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        keep.sent(&map, body).answered(answer);
        (*exchanges.find("e1", Some("crm")).unwrap()).clone()
    }

    /// What is kept is what the receiver reads: a gzipped body undone, the content type, the
    /// answer's status and start; no header but the content type (an API key stays out).
    #[test]
    fn a_request_is_kept_as_the_receiver_reads_it() {
        use std::io::Write;
        let body = br#"{"id":"e1","type":"sensor.reading.updated"}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(body).unwrap();
        let zipped = gz.finish().unwrap();
        let x = kept(
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
                ("x-api-key", "k-123"),
            ],
            &zipped,
            Some((422, b"no such room")),
        );
        assert_eq!(x.request.text.as_bytes(), body);
        assert_eq!(x.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            x.response,
            Some((422, Text::cut(b"no such room", ANSWER_BYTES)))
        );
        assert!(!format!("{x:?}").contains("k-123"));
        // Plain, and never answered.
        let x = kept(&[], body, None);
        assert_eq!((x.request.text.as_bytes(), x.response), (&body[..], None));
        // A gzip bomb is undone only as far as is kept.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b'a'; 10 << 20]).unwrap();
        let x = kept(&[("content-encoding", "gzip")], &gz.finish().unwrap(), None);
        assert!(x.request.truncated && x.request.text.len() == BODY_BYTES);
    }
}
