//! Delivery: sign each outbox record, POST it, and retry until the receiver answers 2xx.
//!
//! - [`sign`]: the signature schemes.
//! - [`retry`]: the retry schedule and what counts as done, as plain functions over plain data.
//! - [`Dispatcher`]: one task per endpoint, reading that endpoint's own queue in the outbox (so
//!   a failing endpoint never delays another). Records are loaded into a bounded window
//!   and queued per *lane* (one device, or one workspace). A lane sends one record at a time, so a
//!   device's events arrive in order; up to `max_concurrency` lanes send at once, so one slow or
//!   failing device never holds the others back and bursts are not sent one request at a time.
//!   A failed record waits out its backoff at the head of its lane; nothing is ever dropped.

pub mod endpoint;
pub mod format;
pub mod log;
pub mod retry;
pub mod sign;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::config::WebhookConfig;
use crate::outbox::{DeadInfo, Outbox, OutboxRecord, QueueId};
use crate::telemetry::EndpointMetrics;
use endpoint::Endpoint;
use log::{Attempt, DeliveryLog};
pub use retry::{classify, Outcome, RetryPolicy};
pub use sign::Signer;

/// The outbox route of endpoint `config`: which events are queued for it.
pub fn route(config: &WebhookConfig) -> anyhow::Result<crate::outbox::Route> {
    let endpoint = Endpoint::new(config)?;
    Ok(crate::outbox::Route {
        endpoint: config.name.clone(),
        wants: Arc::new(move |kind: &str| endpoint.wants(kind)),
    })
}

/// The creation time carried in a UUIDv7 event id (milliseconds since the epoch).
pub fn created_at(id: &str) -> Option<SystemTime> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// One lane's queue: records in outbox order; only the head is ever in flight.
#[derive(Default)]
struct Lane {
    queue: VecDeque<OutboxRecord>,
    busy: bool,
    failures: u32,
}

/// The delivery task's state; see the module docs.
pub struct Dispatcher {
    outbox: Outbox,
    /// This endpoint's queue in the outbox.
    queue: QueueId,
    name: String,
    /// The delivery log (`edgehook outbox log`), shared with the other endpoints.
    log: Arc<DeliveryLog>,
    /// Attempts not yet appended to the log, and since when the oldest waits: they are
    /// appended together, every [`LOG_CHUNK`] attempts or [`LOG_EVERY`].
    unlogged: Vec<Attempt>,
    log_since: Option<tokio::time::Instant>,
    client: reqwest::Client,
    endpoint: Endpoint,
    policy: RetryPolicy,
    max_attempts: Option<u32>,
    max_age: Option<Duration>,
    /// Why the endpoint is disabled (a 410 Gone), persisted in the outbox's `meta` tree.
    disabled: Option<Disabled>,
    /// Reading the outbox fails (logged once until it works again).
    read_failing: bool,
    /// When `last_success`/`last_failure` were last written to `meta` (at most once a second).
    meta_written: Option<Instant>,
    max_concurrency: usize,
    window: usize,
    metrics: Arc<EndpointMetrics>,
    lanes: HashMap<String, Lane>,
    /// Lanes whose head may be sent now, oldest first.
    ready: VecDeque<String>,
    /// Lanes waiting out a backoff.
    backoff: DelayQueue<String>,
    in_flight: JoinSet<(Outcome, Duration)>,
    /// The lane each in-flight task serves, so that even a task that fails to report (a panic)
    /// frees its lane.
    in_flight_lanes: HashMap<tokio::task::Id, String>,
    /// Records held in `lanes`.
    loaded: usize,
    /// Highest sequence number loaded so far.
    cursor: Option<u64>,
    /// Whether the outbox may hold records above `cursor` that are not loaded yet.
    more_on_disk: bool,
    /// Consecutive failed attempts across all lanes, for one loud log line per outage.
    failing_since: Option<Instant>,
}

impl Dispatcher {
    /// The dispatcher of endpoint `config`, whose queue the outbox was opened with.
    pub fn new(
        config: &WebhookConfig,
        outbox: Outbox,
        log: Arc<DeliveryLog>,
        metrics: Arc<EndpointMetrics>,
    ) -> anyhow::Result<Dispatcher> {
        let queue = outbox
            .queue(&config.name)
            .ok_or_else(|| anyhow::anyhow!("no outbox queue for endpoint {}", config.name))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(crate::tls::client_config(None)?)
            // A redirect is a failed attempt (see `retry::classify`), never followed.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(config.max_concurrency)
            .user_agent(concat!("edgehook/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Dispatcher {
            disabled: outbox.meta(&meta_key(&config.name, DISABLED)),
            outbox,
            queue,
            name: config.name.clone(),
            log,
            unlogged: Vec::new(),
            log_since: None,
            client,
            endpoint: Endpoint::new(config)?,
            max_attempts: config.max_attempts,
            max_age: config.max_age,
            meta_written: None,
            read_failing: false,
            policy: RetryPolicy::from(&config.retry),
            max_concurrency: config.max_concurrency,
            window: config.window,
            metrics,
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            backoff: DelayQueue::new(),
            in_flight: JoinSet::new(),
            in_flight_lanes: HashMap::new(),
            loaded: 0,
            cursor: None,
            more_on_disk: true,
            failing_since: None,
        })
    }

    /// Run until cancelled; then let in-flight attempts finish (each is bounded by the request
    /// timeout) so their outcomes are recorded, and return.
    pub async fn run(mut self, cancel: CancellationToken) {
        let outbox = self.outbox.clone();
        if let Some(d) = &self.disabled {
            self.metrics.set_disabled(true);
            tracing::error!(endpoint = %self.name, url = %self.endpoint.url_for_logs, reason = %d.reason, since = %d.since, "endpoint DISABLED: nothing is sent to it; its events stay in the outbox. Re-enable with `edgehook outbox enable --endpoint {}` once the receiver is fixed", self.name);
        }
        loop {
            if self.disabled.is_some() {
                // Sending nothing; finish what is in flight and wait for shutdown.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    Some(done) = self.in_flight.join_next_with_id() => self.finish(done),
                }
                self.write_log();
                continue;
            }
            match self.load() {
                Ok(()) => self.read_failing = false,
                Err(e) => {
                    if !self.read_failing {
                        tracing::error!(endpoint = %self.name, error = %e, "cannot read the outbox; retrying every second");
                        self.read_failing = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            self.start_ready();
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = self.in_flight.join_next_with_id() => self.finish(done),
                Some(expired) = std::future::poll_fn(|cx| self.backoff.poll_expired(cx)) => {
                    self.ready.push_back(expired.into_inner());
                }
                _ = outbox.appended(self.queue), if !self.more_on_disk => self.more_on_disk = true,
                _ = tokio::time::sleep_until(self.log_since.unwrap_or_else(tokio::time::Instant::now) + LOG_EVERY), if self.log_since.is_some() => self.write_log(),
            }
        }
        let pending = self.in_flight.len();
        if pending > 0 {
            tracing::info!(endpoint = %self.name, pending, "shutting down: waiting for in-flight deliveries");
        }
        while let Some(done) = self.in_flight.join_next_with_id().await {
            self.finish(done);
        }
        self.write_log();
    }

    /// Fill the window from the outbox.
    fn load(&mut self) -> Result<(), crate::outbox::OutboxError> {
        if !self.more_on_disk || self.loaded >= self.window {
            return Ok(());
        }
        let want = self.window - self.loaded;
        let records = self.outbox.pending_after(self.queue, self.cursor, want)?;
        self.more_on_disk = records.len() == want;
        for record in records {
            self.cursor = Some(record.seq);
            if !self.endpoint.wants(&record.kind) {
                // Queued before the endpoint's `events` changed; it no longer wants these.
                self.metrics.filtered();
                self.outbox.remove(self.queue, record.seq)?;
                continue;
            }
            self.loaded += 1;
            let lane = self.lanes.entry(record.lane.clone()).or_default();
            if lane.queue.is_empty() && !lane.busy && lane.failures == 0 {
                self.ready.push_back(record.lane.clone());
            }
            lane.queue.push_back(record);
        }
        Ok(())
    }

    /// Start attempts for ready lanes while there is room.
    fn start_ready(&mut self) {
        while self.in_flight.len() < self.max_concurrency {
            let Some(name) = self.ready.pop_front() else {
                return;
            };
            let Some(lane) = self.lanes.get_mut(&name) else {
                continue;
            };
            if lane.busy {
                continue;
            }
            // Skip records no longer in the outbox (old readings dropped to make room).
            while lane
                .queue
                .front()
                .is_some_and(|r| self.outbox.was_dropped(self.queue, r.seq))
            {
                lane.queue.pop_front();
                lane.failures = 0;
                self.loaded -= 1;
            }
            let Some(record) = lane.queue.front() else {
                self.lanes.remove(&name);
                continue;
            };
            lane.busy = true;
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let request = self
                .endpoint
                .request_parts(record, now)
                .map(|(headers, body)| {
                    self.client
                        .post(self.endpoint.url.clone())
                        .headers(headers)
                        .body(body)
                });
            let task = self.in_flight.spawn(async move {
                let started = Instant::now();
                let request = match request {
                    Ok(request) => request,
                    Err(why) => {
                        let outcome = Outcome::Retry {
                            status: None,
                            retry_after: None,
                            reason: format!("cannot build the request: {why}"),
                        };
                        return (outcome, started.elapsed());
                    }
                };
                let outcome = match request.send().await {
                    Ok(resp) => {
                        let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok());
                        let answer = retry::Answer {
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
                };
                (outcome, started.elapsed())
            });
            self.in_flight_lanes.insert(task.id(), name);
        }
    }

    /// Record one attempt's outcome.
    fn finish(
        &mut self,
        done: Result<(tokio::task::Id, (Outcome, Duration)), tokio::task::JoinError>,
    ) {
        let (task, (outcome, took)) = match done {
            Ok(done) => done,
            Err(e) => {
                // A bug, not the receiver's doing: log it loudly and retry like any failure.
                tracing::error!(error = %e, "delivery task failed");
                let reason = format!("delivery task failed: {e}");
                (
                    e.id(),
                    (
                        Outcome::Retry {
                            status: None,
                            retry_after: None,
                            reason,
                        },
                        Duration::ZERO,
                    ),
                )
            }
        };
        let Some(name) = self.in_flight_lanes.remove(&task) else {
            return;
        };
        let Some(lane) = self.lanes.get_mut(&name) else {
            return;
        };
        lane.busy = false;
        if let Some(id) = lane.queue.front().map(|r| r.id.clone()) {
            self.log_attempt(id, &outcome, took);
        }
        match &outcome {
            Outcome::Delivered { status }
            | Outcome::Retry {
                status: Some(status),
                ..
            } => self.metrics.response(*status),
            Outcome::Retry { status: None, .. } => {}
        }
        let Some(lane) = self.lanes.get_mut(&name) else {
            return;
        };
        match outcome {
            Outcome::Delivered { .. } => {
                let record = lane.queue.pop_front().expect("in-flight lane has a head");
                lane.failures = 0;
                self.loaded -= 1;
                if let Err(e) = self.outbox.remove(self.queue, record.seq) {
                    // Not removing means a duplicate later, never a loss.
                    tracing::warn!(error = %e, event_id = %record.id, "delivered event not removed from outbox; it may be sent again");
                }
                let latency = created_at(&record.id)
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .unwrap_or_default();
                self.metrics.delivered(&record.kind, latency);
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        endpoint = %self.name,
                        outage = %humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                        "receiver accepting events again"
                    );
                }
                if lane.queue.is_empty() {
                    self.lanes.remove(&name);
                } else {
                    self.ready.push_back(name);
                }
                self.note_outcome(true);
            }
            Outcome::Retry {
                status,
                retry_after,
                reason,
            } => {
                lane.failures += 1;
                let failures = lane.failures;
                let head = lane
                    .queue
                    .front()
                    .expect("in-flight lane has a head")
                    .clone();
                self.metrics.attempt_failed(status);
                self.note_outcome(false);
                if status == Some(410) {
                    self.disable(&reason);
                    return;
                }
                if let Some(limit) = self.gives_up(&head, failures) {
                    let lane = self.lanes.get_mut(&name).expect("still there");
                    lane.queue.pop_front();
                    lane.failures = 0;
                    if lane.queue.is_empty() {
                        self.lanes.remove(&name);
                    } else {
                        self.ready.push_back(name);
                    }
                    self.loaded -= 1;
                    self.bury(head, failures, status, reason, limit);
                    return;
                }
                let delay = self.policy.delay(failures, retry_after, fastrand::f64());
                if self.failing_since.is_none() {
                    self.failing_since = Some(Instant::now());
                    tracing::warn!(
                        endpoint = %self.name,
                        url = %self.endpoint.url_for_logs,
                        reason = %reason,
                        event_id = %head.id,
                        "delivery failing; events stay in the outbox and are retried"
                    );
                } else {
                    tracing::debug!(lane = %name, reason = %reason, failures, retry_in = ?delay, "delivery attempt failed");
                }
                self.backoff.insert(name, delay);
            }
        }
    }
}

/// Delivery-log attempts appended together, at the latest after [`LOG_EVERY`]: one write per
/// chunk rather than per attempt.
const LOG_CHUNK: usize = 64;
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Per-endpoint facts in the outbox's `meta` tree: [`meta_key`]`(endpoint, DISABLED)` holds a
/// [`Disabled`]; `LAST_SUCCESS` / `LAST_FAILURE` the time (Unix ms).
pub const DISABLED: &str = "disabled";
pub const LAST_SUCCESS: &str = "last_success";
pub const LAST_FAILURE: &str = "last_failure";

/// The `meta` key of `fact` about `endpoint`: `endpoint.<fact>` for `default` (as before there
/// were several endpoints), `endpoint.<name>.<fact>` for the others.
pub fn meta_key(endpoint: &str, fact: &str) -> String {
    if endpoint == crate::config::DEFAULT_ENDPOINT {
        format!("endpoint.{fact}")
    } else {
        format!("endpoint.{endpoint}.{fact}")
    }
}

/// Why and since when an endpoint is disabled.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Disabled {
    pub reason: String,
    /// RFC 3339.
    pub since: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Dispatcher {
    /// Which limit, if any, says to stop retrying `head` after `failures` failed attempts.
    fn gives_up(&self, head: &OutboxRecord, failures: u32) -> Option<&'static str> {
        if self.max_attempts.is_some_and(|max| failures >= max) {
            return Some("max_attempts");
        }
        let age = created_at(&head.id).and_then(|t| t.elapsed().ok());
        match (self.max_age, age) {
            (Some(max), Some(age)) if age >= max => Some("max_age"),
            _ => None,
        }
    }

    /// Move a given-up record to the dead letters, with why.
    fn bury(
        &mut self,
        record: OutboxRecord,
        attempts: u32,
        last_status: Option<u16>,
        last_error: String,
        limit: &'static str,
    ) {
        let info = DeadInfo {
            attempts,
            last_status,
            last_error,
            dead_at: now_ms(),
            reason: limit.to_string(),
        };
        match self.outbox.bury(self.queue, record.seq, &info) {
            Ok(_) => {
                let n = self.metrics.dead_lettered();
                if n == 1 || n.is_power_of_two() {
                    tracing::warn!(endpoint = %self.name, event_id = %record.id, limit, attempts, last_error = %info.last_error, dead_letters = n, "gave up on an event; kept as a dead letter (edgehook outbox list --dead, replay)");
                }
            }
            Err(e) => {
                // Not buried: it stays pending and is retried after the next restart.
                tracing::error!(endpoint = %self.name, error = %e, event_id = %record.id, "cannot move an event to the dead letters; it stays in the outbox");
            }
        }
    }

    /// A 410 Gone: the receiver says this endpoint no longer exists. Stop sending, loudly, and
    /// remember it across restarts; nothing is dropped.
    fn disable(&mut self, reason: &str) {
        let disabled = Disabled {
            reason: format!("{reason} (the receiver says this endpoint is gone)"),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        if let Err(e) = self
            .outbox
            .set_meta(&meta_key(&self.name, DISABLED), Some(&disabled))
        {
            tracing::error!(endpoint = %self.name, error = %e, "cannot persist the disabled endpoint; it is disabled until restart");
        }
        tracing::error!(endpoint = %self.name, url = %self.endpoint.url_for_logs, reason = %disabled.reason, pending = self.outbox.queue_len(self.queue), "endpoint DISABLED after 410 Gone: nothing more is sent to it; its events stay in the outbox. Re-enable with `edgehook outbox enable --endpoint {}` once the receiver is fixed", self.name);
        self.metrics.set_disabled(true);
        self.disabled = Some(disabled);
    }

    /// Remember the last success or failure time, at most once a second.
    fn note_outcome(&mut self, success: bool) {
        if self
            .meta_written
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.meta_written = Some(Instant::now());
        let fact = if success { LAST_SUCCESS } else { LAST_FAILURE };
        let _ = self
            .outbox
            .set_meta(&meta_key(&self.name, fact), Some(&now_ms()));
    }

    /// Add one attempt to the delivery log (`edgehook outbox log`): buffered, and appended once
    /// [`LOG_CHUNK`] attempts wait.
    fn log_attempt(&mut self, event_id: String, outcome: &Outcome, took: Duration) {
        let (status, error) = match outcome {
            Outcome::Delivered { status } => (Some(*status), None),
            Outcome::Retry { status, reason, .. } => (*status, Some(reason.clone())),
        };
        let attempt = Attempt {
            at: now_ms(),
            endpoint: self.name.clone(),
            event_id,
            ok: error.is_none(),
            status,
            ms: took.as_millis() as u64,
            error,
        };
        self.unlogged.push(attempt);
        self.log_since.get_or_insert_with(tokio::time::Instant::now);
        if self.unlogged.len() >= LOG_CHUNK {
            self.write_log();
        }
    }

    /// Append the buffered attempts to the delivery log with one write.
    fn write_log(&mut self) {
        self.log_since = None;
        if self.unlogged.is_empty() {
            return;
        }
        if let Err(e) = self.log.append(&self.unlogged) {
            tracing::debug!(error = %e, "delivery log not written");
        }
        self.unlogged.clear();
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
}
