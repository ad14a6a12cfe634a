//! The seam between delivery's rules and the network: a [`Transport`] takes one record and
//! comes back with the attempt's [`Outcome`]. HTTP ([`Http`]) in the daemon; tests drive the
//! dispatcher with their own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::config::WebhookConfig;
use super::endpoint::Endpoint;
use super::retry::{classify, Answer, Outcome};
use crate::outbox::OutboxRecord;

/// One attempt under way: its outcome once the receiver answered, failed or timed out.
pub type Attempt = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Sends one record to the receiver. The returned future owns all it needs (it runs on its
/// own task) and never panics on what the receiver does.
pub trait Transport: Send + Sync {
    fn send(&self, record: &OutboxRecord) -> Attempt;
}

/// HTTPS POST of the record as the endpoint renders and signs it; redirects never followed.
pub struct Http {
    client: reqwest::Client,
    endpoint: Arc<Endpoint>,
}

/// How long a template may take on one event. It runs on a blocking thread: one that does not
/// finish (a loop on the event's data) makes that event a dead letter instead of holding
/// delivery; its thread is abandoned.
const TEMPLATE_BUDGET: Duration = Duration::from_secs(5);

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
        })
    }
}

impl Transport for Http {
    fn send(&self, record: &OutboxRecord) -> Attempt {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (endpoint, client) = (self.endpoint.clone(), self.client.clone());
        // Without a template, the request is made here and now (a pure function, quick).
        let ready = (!endpoint.has_template()).then(|| endpoint.request_parts(record, now));
        let record = record.clone();
        Box::pin(async move {
            let parts = match ready {
                Some(parts) => parts,
                None => {
                    let render = endpoint.clone();
                    let run =
                        tokio::task::spawn_blocking(move || render.request_parts(&record, now));
                    match tokio::time::timeout(TEMPLATE_BUDGET, run).await {
                        Ok(Ok(parts)) => parts,
                        Ok(Err(e)) => Err(format!("the template failed: {e}")),
                        Err(_) => Err(format!(
                            "the template did not finish within {} s on this event",
                            TEMPLATE_BUDGET.as_secs()
                        )),
                    }
                }
            };
            let request = parts.map(|parts| {
                parts.map(|(headers, body)| {
                    client
                        .post(endpoint.url.clone())
                        .headers(headers)
                        .body(body)
                })
            });
            let request = match request {
                Ok(Some(request)) => request,
                Ok(None) => return Outcome::NotSent,
                Err(why) => {
                    return Outcome::Unsendable {
                        reason: format!("cannot make the request: {why}"),
                    }
                }
            };
            match request.send().await {
                Ok(resp) => {
                    let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok());
                    let answer = Answer {
                        status: resp.status().as_u16(),
                        retry_after: header(reqwest::header::RETRY_AFTER),
                        location: header(reqwest::header::LOCATION),
                    };
                    classify(answer, SystemTime::now())
                }
                Err(e) => Outcome::Retry {
                    status: None,
                    retry_after: None,
                    reason: describe_reqwest_error(&e),
                },
            }
        })
    }
}

/// A one-line reason without the URL's query (which could carry a token).
fn describe_reqwest_error(e: &reqwest::Error) -> String {
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
