//! Delivery: sign each outbox record, POST it, and retry until the receiver answers 2xx.
//!
//! - [`sign`]: the signature schemes; [`format`](mod@format) and [`template`]: the bodies; [`endpoint`]:
//!   one receiver's requests (signed, keyed, maybe gzipped; one event or a batch).
//! - [`retry`]: the retry schedule and what counts as done, as plain functions over plain data.
//! - [`lanes`]: which records are held in memory, per lane, and which lane sends next.
//! - [`schedule`]: what becomes of a record after an attempt (remove, retry after, bury,
//!   disable), a pure function tested as a table.
//! - [`transport`]: how a record reaches the receiver (HTTPS; the tests bring their own).
//! - [`Dispatcher`]: one task per endpoint (its loop here; what it reads in `read`, the
//!   attempts it starts in `send`, what an outcome does in `settle`, the delivery log in
//!   `journal`), reading that endpoint's own queue in the outbox (so
//!   a failing endpoint never delays another). Records are loaded into a bounded window
//!   and queued per *lane* (one device, or one workspace). A lane sends one record at a time, so a
//!   device's events arrive in order; up to `max_concurrency` lanes send at once, so one slow or
//!   failing device never holds the others back and bursts are not sent one request at a time.
//!   With `batch_max_events`, the heads ready at once (of different lanes) go in one
//!   request; a batch refused with a 4xx is split, each record sent again on its own.
//!   A failed record waits out its backoff on disk (its lane holds nothing in memory meanwhile,
//!   so a device the receiver keeps rejecting cannot fill the window); nothing is ever dropped.

pub mod config;
pub mod endpoint;
pub mod fleet;
pub mod format;
mod journal;
pub mod lanes;
pub mod log;
pub mod metrics;
mod read;
pub mod retry;
pub mod schedule;
mod send;
mod settle;
pub mod template;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::clock::system_now as now_ms;
pub use crate::outbox::Disabled;
use crate::outbox::Last;
use crate::outbox::{DeadInfo, Outbox, OutboxRecord, QueueId};
pub use crate::sign::Signer;
use config::WebhookConfig;
use endpoint::Endpoint;
use lanes::{Lanes, Limits, Offer};
use log::{Attempt, DeliveryLog};
use metrics::EndpointMetrics;
pub use retry::{classify, Outcome, RetryPolicy};
use schedule::{Decision, Facts, GiveUp};
pub use transport::Transport;

/// Most records one lane holds in memory (a quarter of the window when that is smaller); the
/// rest of its records wait on disk and are read back as it sends.
const PER_LANE: usize = 64;
/// Records the loader reads past the cursor in one go, and lanes read back, before the task
/// turns to its other work.
const SCAN_PER_LOAD: usize = 4096;
const REFILLS_PER_LOAD: usize = 64;
/// Records read from the outbox at a time.
const READ_CHUNK: usize = 64;

/// Delivery-log attempts appended together, at the latest after [`LOG_EVERY`]: one write per
/// chunk rather than per attempt.
const LOG_CHUNK: usize = 64;
const LOG_EVERY: Duration = Duration::from_secs(1);
/// How soon a failed read of the outbox is tried again.
const READ_RETRY: Duration = Duration::from_secs(1);

/// The outbox route of endpoint `config`: which events are queued for it.
pub fn route(config: &WebhookConfig) -> anyhow::Result<crate::outbox::QueueFilter> {
    let endpoint = Endpoint::new(config)?;
    Ok(crate::outbox::QueueFilter {
        endpoint: config.name.clone(),
        wants: Arc::new(move |kind: &str| endpoint.wants(kind)),
    })
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
    /// How a record reaches the receiver (HTTP; the tests' own in tests).
    transport: Arc<dyn Transport>,
    endpoint: Endpoint,
    policy: RetryPolicy,
    give_up: GiveUp,
    /// Why the endpoint is disabled (a 410 Gone), persisted in the outbox's `meta` tree.
    disabled: Option<Disabled>,
    /// Since when an operator has paused it (persisted likewise): nothing is sent.
    paused: Option<crate::outbox::Paused>,
    /// Reading the outbox fails (logged once until it works again).
    read_failing: bool,
    /// When `last_success`/`last_failure` were last written to `meta` (at most once a second).
    meta_written: Option<Instant>,
    max_concurrency: usize,
    metrics: Arc<EndpointMetrics>,
    /// The records held for delivery, per lane, and the loader's cursor.
    lanes: Lanes,
    /// Lanes waiting out a backoff.
    backoff: DelayQueue<String>,
    in_flight: JoinSet<(Vec<Outcome>, Duration)>,
    /// The lanes and records each in-flight task serves (one, or a batch's), so that even a
    /// task that fails to report (a panic) frees its lanes.
    in_flight_lanes: HashMap<tokio::task::Id, Vec<(String, OutboxRecord)>>,
    /// `batch_max_events`, `batch_max_bytes` and `batch_linger`, when batching is on.
    batch: Option<(usize, usize, Duration)>,
    /// The batch being gathered (its records' lanes are in flight), and since when.
    gathering: Vec<(String, OutboxRecord)>,
    gathering_since: Option<tokio::time::Instant>,
    /// Records whose batch was refused (a 4xx): their next attempt is on their own.
    solo: std::collections::HashSet<u64>,
    /// Whether the outbox may hold records past the lanes' cursor that are not loaded yet.
    more_on_disk: bool,
    /// The last load stopped at its scan budget with work left: load again at once.
    load_again: bool,
    /// Consecutive failed attempts across all lanes, for one loud log line per outage.
    failing_since: Option<Instant>,
    /// How long a stop waits for the deliveries in flight (`stop_timeout`).
    stop_within: Duration,
    limits: Limits,
    /// The outbox's reopen count when the queue was last read from the start, and whether a
    /// removal or burial failed since: either way what is held may no longer match the disk,
    /// so once nothing is in flight the queue is read again from the start ([`Self::rescan`]).
    /// After a failure, not before the store is reopened or `out_of_step` (a second later):
    /// the store refuses everything until the writer reopens it, and reading again at once
    /// sent the same records again as fast as the receiver answered (fault harness).
    reopens_seen: u64,
    out_of_step: Option<tokio::time::Instant>,
    /// Per lane, the highest sequence number delivered (or skipped) since start. What a lane
    /// meets at or behind it when it reads again — a delivered record whose removal was lost,
    /// a reading dropped to make room that a reopen or restart of the store brought back — is
    /// removed, never sent: a lane sends in outbox order, so nothing behind it is still owed.
    passed: HashMap<String, u64>,
}

/// Lanes [`Dispatcher::passed`] remembers at most (then it starts afresh: the guard it keeps
/// only matters after a reopen).
const PASSED_MAX: usize = 65_536;

/// Whether the dispatcher goes on after one [`Dispatcher::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    Cancelled,
}

impl Dispatcher {
    /// The dispatcher of endpoint `config`, whose queue the outbox was opened with, sending
    /// over HTTPS.
    pub fn new(
        config: &WebhookConfig,
        outbox: Outbox,
        log: Arc<DeliveryLog>,
        metrics: Arc<EndpointMetrics>,
    ) -> anyhow::Result<Dispatcher> {
        let http = Arc::new(transport::Http::new(config)?);
        Dispatcher::with_transport(config, outbox, log, metrics, http)
    }

    /// The same, sending through `transport`.
    pub fn with_transport(
        config: &WebhookConfig,
        outbox: Outbox,
        log: Arc<DeliveryLog>,
        metrics: Arc<EndpointMetrics>,
        transport: Arc<dyn Transport>,
    ) -> anyhow::Result<Dispatcher> {
        let queue = outbox
            .queue(&config.name)
            .ok_or_else(|| anyhow::anyhow!("no outbox queue for endpoint {}", config.name))?;
        let limits = Limits {
            window: config.window,
            window_bytes: usize::try_from(config.window_bytes).unwrap_or(usize::MAX),
            per_lane: (config.window / 4).clamp(1, PER_LANE),
        };
        let reopens_seen = outbox.reopens();
        Ok(Dispatcher {
            disabled: outbox.disabled(&config.name),
            paused: outbox.paused(&config.name),
            outbox,
            queue,
            name: config.name.clone(),
            log,
            unlogged: Vec::new(),
            log_since: None,
            transport,
            endpoint: Endpoint::new(config)?,
            give_up: GiveUp {
                max_attempts: config.max_attempts,
                max_age: config.max_age,
            },
            meta_written: None,
            read_failing: false,
            policy: RetryPolicy::from(&config.retry),
            max_concurrency: config.max_concurrency,
            metrics,
            lanes: Lanes::new(limits),
            limits,
            reopens_seen,
            out_of_step: None,
            passed: HashMap::new(),
            backoff: DelayQueue::new(),
            in_flight: JoinSet::new(),
            in_flight_lanes: HashMap::new(),
            batch: config.batch_max_events.map(|n| {
                (
                    n,
                    usize::try_from(config.batch_max_bytes).unwrap_or(usize::MAX),
                    config.batch_linger,
                )
            }),
            gathering: Vec::new(),
            gathering_since: None,
            solo: Default::default(),
            more_on_disk: true,
            load_again: false,
            failing_since: None,
            stop_within: config::DEFAULT_STOP_TIMEOUT,
        })
    }

    /// When stopping, wait at most `within` for the deliveries in flight (`stop_timeout`).
    pub fn stopping_within(mut self, within: Duration) -> Dispatcher {
        self.stop_within = within;
        self
    }

    /// Run until cancelled; then let in-flight attempts finish (each is bounded by the request
    /// timeout) so their outcomes are recorded, and return.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.metrics.set_disabled(self.disabled.is_some());
        self.metrics.set_paused(self.paused.is_some());
        let holding = self.disabled.is_some() || self.paused.is_some();
        self.outbox.set_draining(self.queue, !holding);
        if let Some(p) = &self.paused {
            tracing::warn!(endpoint = %self.name, since = %p.since, pending = self.outbox.queue_len(self.queue), "endpoint PAUSED by an operator: nothing is sent to it; new events are still queued within its share of the outbox (resume: edgehook endpoints resume {})", self.name);
        }
        if let Some(d) = &self.disabled {
            tracing::error!(endpoint = %self.name, url = %self.endpoint.url_for_logs, reason = %d.reason, since = %d.since, "endpoint DISABLED: nothing is sent to it; its events stay in the outbox. Re-enable with `edgehook outbox enable --endpoint {}` once the receiver is fixed", self.name);
        }
        while self.step(&cancel).await == Step::Continue {}
        let pending = self.in_flight.len();
        if pending > 0 {
            tracing::info!(endpoint = %self.name, url = %self.endpoint.url_for_logs, pending, stop_timeout = ?self.stop_within, "stopping: waiting for the deliveries in flight to be answered");
        }
        let deadline = tokio::time::Instant::now() + self.stop_within;
        loop {
            tokio::select! {
                done = self.in_flight.join_next_with_id() => match done {
                    Some(done) => self.finish(done),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(endpoint = %self.name, url = %self.endpoint.url_for_logs, unanswered = self.in_flight.len(), stop_timeout = ?self.stop_within, "stop_timeout reached: deliveries still unanswered are let go; their events stay in the outbox and are sent after the next start");
                    self.in_flight.abort_all();
                    break;
                }
            }
        }
        self.write_log();
    }

    /// One turn of the loop: read what the lanes can take from the outbox, start the attempts
    /// that are ready, then wait for one thing — an attempt coming back, a backoff ending, new
    /// records becoming durable, a failed read falling due again, the log falling due — and
    /// handle it. Tests drive it on paused time.
    pub async fn step(&mut self, cancel: &CancellationToken) -> Step {
        if self.disabled.is_some() || self.paused.is_some() {
            // Sending nothing; finish what is in flight and wait for shutdown.
            let step = self.finish_one(cancel).await;
            self.write_log();
            return step;
        }
        let reopened = self.outbox.reopens() != self.reopens_seen;
        if self.out_of_step.is_some() || reopened {
            // Start nothing new until what is in flight is done, then read afresh.
            if !self.in_flight.is_empty() {
                return self.finish_one(cancel).await;
            }
            if let Some(at) = self
                .out_of_step
                .filter(|at| !reopened && *at > tokio::time::Instant::now())
            {
                // A removal failed: wait for the reopen (which wakes `appended`) or a second.
                let outbox = self.outbox.clone();
                tokio::select! {
                    _ = cancel.cancelled() => return Step::Cancelled,
                    _ = tokio::time::sleep_until(at) => {}
                    _ = outbox.appended(self.queue) => {}
                }
                return Step::Continue;
            }
            self.rescan();
        }
        match self.load() {
            Ok(()) => self.read_failing = false,
            Err(e) => {
                if !self.read_failing {
                    tracing::error!(endpoint = %self.name, error = %e, "cannot read the outbox; retrying every second");
                    self.read_failing = true;
                }
            }
        }
        self.start_ready();
        let (held, held_bytes) = self.lanes.held();
        self.metrics.set_held(held, held_bytes);
        let outbox = self.outbox.clone();
        let gathering_due = self.gathering_due();
        tokio::select! {
            _ = cancel.cancelled() => return Step::Cancelled,
            Some(done) = self.in_flight.join_next_with_id() => self.finish(done),
            Some(expired) = std::future::poll_fn(|cx| self.backoff.poll_expired(cx)) => {
                self.lanes.retry_due(&expired.into_inner());
            }
            _ = outbox.appended(self.queue), if !self.more_on_disk => self.more_on_disk = true,
            _ = tokio::task::yield_now(), if self.load_again => {}
            // A failed read is retried on its own: no write may come to wake the loop.
            _ = tokio::time::sleep(READ_RETRY), if self.read_failing => {}
            _ = tokio::time::sleep_until(self.log_since.unwrap_or_else(tokio::time::Instant::now) + LOG_EVERY), if self.log_since.is_some() => self.write_log(),
            // A batch that waited `batch_linger` goes (start_ready sends it).
            _ = tokio::time::sleep_until(gathering_due.unwrap_or_else(tokio::time::Instant::now)), if gathering_due.is_some() => {}
        }
        Step::Continue
    }
}

/// Tests: a configuration with one endpoint, `[webhook]`, and the keys in `extra`.
#[cfg(test)]
pub(crate) fn test_config(extra: &str) -> crate::config::Config {
    crate::config::Config::from_toml_str(&format!(
        r#"
        gateway_id = "gw"
        [mqtt]
        subscriptions = [{{ topic = "s/{{device}}", kind = "reading" }}]
        [webhook]
        url = "https://hooks.example.com/in"
        secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        {extra}
        "#
    ))
    .unwrap()
}

#[cfg(test)]
mod tests;

/// Why a record is sent again on its own.
fn split_reason(status: u16) -> String {
    format!("its batch was refused with HTTP {status}; sent again on its own")
}
