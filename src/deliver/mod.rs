//! Delivery: sign each outbox record, POST it, and retry until the receiver answers 2xx.
//!
//! - [`sign`]: the signature schemes; [`format`](mod@format) and [`template`]: the bodies; [`endpoint`]:
//!   one receiver's requests (signed, keyed, maybe gzipped; one event or a batch).
//! - [`retry`]: the retry schedule and what counts as done, as plain functions over plain data.
//! - [`lanes`]: which records are held in memory, per lane, and which lane sends next.
//! - [`schedule`]: what becomes of a record after an attempt (remove, retry after, bury,
//!   disable), a pure function tested as a table.
//! - [`transport`]: how a record reaches the receiver (HTTPS; the tests bring their own).
//! - [`Dispatcher`]: one task per endpoint, reading that endpoint's own queue in the outbox (so
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
pub mod lanes;
pub mod log;
pub mod metrics;
pub mod retry;
pub mod schedule;
pub mod sign;
pub mod template;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::outbox::{DeadInfo, Outbox, OutboxRecord, QueueId};
use config::WebhookConfig;
use endpoint::Endpoint;
use lanes::{Lanes, Limits, Offer};
use log::{Attempt, DeliveryLog};
use metrics::EndpointMetrics;
pub use retry::{classify, Outcome, RetryPolicy};
use schedule::{Decision, Facts, GiveUp};
pub use sign::Signer;
pub use transport::Transport;

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

    /// Wait for one in-flight attempt to come back and record it (or for cancellation).
    async fn finish_one(&mut self, cancel: &CancellationToken) -> Step {
        tokio::select! {
            _ = cancel.cancelled() => Step::Cancelled,
            Some(done) = self.in_flight.join_next_with_id() => {
                self.finish(done);
                Step::Continue
            }
        }
    }

    /// Lane `name` is past record `seq` (see `passed`).
    fn pass(&mut self, name: &str, seq: u64) {
        if let Some(at) = self.passed.get_mut(name) {
            *at = (*at).max(seq);
            return;
        }
        if self.passed.len() >= PASSED_MAX {
            self.passed.clear();
        }
        self.passed.insert(name.to_string(), seq);
    }

    /// A removal or burial failed: read the queue again from the start once the store is
    /// reopened, or a second from now (see `out_of_step`).
    fn out_of_step_now(&mut self) {
        self.out_of_step
            .get_or_insert_with(|| tokio::time::Instant::now() + READ_RETRY);
    }

    /// Forget what is held and read the queue again from the start (after the store was
    /// reopened, or a removal failed): every record on disk is sent, none skipped. Backoffs
    /// start afresh; a record delivered but not removed is sent again (a duplicate, never a
    /// loss).
    fn rescan(&mut self) {
        let reopens = self.outbox.reopens();
        tracing::info!(endpoint = %self.name, reopened = reopens != self.reopens_seen, "reading the endpoint's queue again from the start (the outbox was reopened or a removal failed)");
        self.reopens_seen = reopens;
        self.out_of_step = None;
        self.lanes = Lanes::new(self.limits);
        self.backoff = DelayQueue::new();
        self.solo.clear();
        self.gathering.clear();
        self.gathering_since = None;
        self.more_on_disk = true;
    }

    /// Fill the window from the outbox: first the lanes' records read back from disk (they
    /// are older), then new records past the cursor. Each call reads a bounded amount; when it
    /// stops with more to do, `load_again` says so.
    fn load(&mut self) -> Result<(), crate::outbox::OutboxError> {
        self.load_again = false;
        for _ in 0..REFILLS_PER_LOAD {
            let Some((lane, from, through, limit)) = self.lanes.needs_refill() else {
                break;
            };
            let read = self
                .outbox
                .lane_records(self.queue, &lane, from, through, limit)
                .and_then(|(records, rest)| Ok((self.wanted(records)?, rest)));
            match read {
                Ok((records, rest)) => self.lanes.refilled(&lane, records, rest),
                Err(e) => {
                    // Read it back once the store works again (it is being reopened).
                    self.lanes.refill_later(&lane);
                    return Err(e);
                }
            }
            self.load_again = true;
        }
        let mut budget = SCAN_PER_LOAD;
        while self.more_on_disk && self.lanes.has_room() {
            if budget == 0 {
                self.load_again = true;
                break;
            }
            // In small reads: most of a backlog of one busy device is left on disk, and a
            // large read would bring it all into memory at once on its way past.
            let want = self.lanes.room().min(budget).min(READ_CHUNK);
            if want == 0 {
                break; // a chunk's room is made as deliveries finish
            }
            let records = self
                .outbox
                .pending_after(self.queue, self.lanes.cursor(), want)?;
            budget -= records.len().min(budget);
            self.more_on_disk = records.len() == want;
            for record in self.wanted(records)? {
                if self.lanes.offer(record) == Offer::NoRoom {
                    self.more_on_disk = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// `records` without those queued before the endpoint's `events` changed, which it no
    /// longer wants, and those at or behind what their lane has delivered (see `passed`):
    /// both are removed from its queue.
    fn wanted(
        &self,
        records: Vec<OutboxRecord>,
    ) -> Result<Vec<OutboxRecord>, crate::outbox::OutboxError> {
        let mut keep = Vec::with_capacity(records.len());
        for record in records {
            if self
                .passed
                .get(&record.lane)
                .is_some_and(|&seq| record.seq <= seq)
            {
                tracing::debug!(lane = %record.lane, event_id = %record.id, "a record behind what its lane delivered (its removal lost, or a dropped reading brought back): removed, not sent");
                self.outbox.remove(self.queue, record.seq)?;
            } else if self.endpoint.wants(&record.kind) {
                keep.push(record);
            } else {
                self.metrics.filtered();
                self.outbox.remove(self.queue, record.seq)?;
            }
        }
        Ok(keep)
    }

    /// Start attempts for ready lanes while there is room: one request per lane head, or,
    /// with batching, one request for up to `batch_max_events` heads (of different lanes).
    /// A batch goes when it is full (`batch_max_events`, `batch_max_bytes`) or has waited
    /// `batch_linger` for more (at once with the default `"0s"`: under light load a batch
    /// holds one event, under load it fills).
    fn start_ready(&mut self) {
        let Some((max_events, max_bytes, linger)) = self.batch else {
            while self.in_flight.len() < self.max_concurrency {
                let Some(next) = self.next_ready() else {
                    return;
                };
                self.spawn(vec![next]);
            }
            return;
        };
        loop {
            if self.gathering.is_empty() && self.in_flight.len() >= self.max_concurrency {
                return;
            }
            let Some(next) = self.next_ready() else {
                break;
            };
            if self.solo.remove(&next.1.seq) {
                self.spawn(vec![next]);
                continue;
            }
            let bytes: usize = self.gathering.iter().map(|(_, r)| r.body.len()).sum();
            if !self.gathering.is_empty() && bytes + next.1.body.len() > max_bytes {
                self.send_gathered();
            }
            if self.gathering.is_empty() {
                self.gathering_since = Some(tokio::time::Instant::now());
            }
            self.gathering.push(next);
            if self.gathering.len() >= max_events {
                self.send_gathered();
            }
        }
        let waited = self
            .gathering_since
            .is_some_and(|since| since.elapsed() >= linger);
        if !self.gathering.is_empty() && (linger.is_zero() || waited) {
            self.send_gathered();
        }
    }

    /// The batch gathered so far goes.
    fn send_gathered(&mut self) {
        self.gathering_since = None;
        let members = std::mem::take(&mut self.gathering);
        if !members.is_empty() {
            self.spawn(members);
        }
    }

    /// When the batch being gathered must go, if one is.
    fn gathering_due(&self) -> Option<tokio::time::Instant> {
        let (_, _, linger) = self.batch?;
        Some(self.gathering_since? + linger)
    }

    /// The next lane that may send and its head, marked in flight; heads no longer in the
    /// outbox (old readings dropped to make room) are skipped.
    fn next_ready(&mut self) -> Option<(String, OutboxRecord)> {
        let (outbox, queue) = (&self.outbox, self.queue);
        self.lanes.start_next(|r| outbox.was_dropped(queue, r.seq))
    }

    /// One attempt for `members`: a request of its own (no batching), or a batch.
    fn spawn(&mut self, members: Vec<(String, OutboxRecord)>) {
        let attempt: transport::BatchAttempt = match (&self.batch, &members[..]) {
            (None, [(_, record)]) => {
                let one = self.transport.send(record);
                Box::pin(async move { vec![one.await] })
            }
            _ => self
                .transport
                .send_batch(members.iter().map(|(_, r)| r.clone()).collect()),
        };
        let task = self.in_flight.spawn(async move {
            let started = Instant::now();
            (attempt.await, started.elapsed())
        });
        self.in_flight_lanes.insert(task.id(), members);
    }

    /// Record one attempt's outcomes (one per record it carried), as its task reported them.
    fn finish(
        &mut self,
        done: Result<(tokio::task::Id, (Vec<Outcome>, Duration)), tokio::task::JoinError>,
    ) {
        let (task, outcomes, took) = match done {
            Ok((task, (outcomes, took))) => (task, Some(outcomes), took),
            Err(e) => {
                // A bug, not the receiver's doing: log it loudly and retry like any failure.
                tracing::error!(error = %e, "delivery task failed");
                (e.id(), None, Duration::ZERO)
            }
        };
        let Some(members) = self.in_flight_lanes.remove(&task) else {
            return;
        };
        let n = members.len();
        let outcomes = outcomes.filter(|o| o.len() == n).unwrap_or_else(|| {
            let outcome = Outcome::Retry {
                status: None,
                retry_after: None,
                reason: "delivery task failed".into(),
            };
            vec![outcome; n]
        });
        // One request, one answer: its status is counted once.
        let mut counted = false;
        for ((name, head), outcome) in members.into_iter().zip(outcomes) {
            let status = match &outcome {
                Outcome::Delivered { status } | Outcome::Split { status } => Some(*status),
                Outcome::Retry { status, .. } => *status,
                _ => None,
            };
            if let (Some(status), false) = (status, counted) {
                self.metrics.response(status);
                counted = true;
            }
            self.settle(name, head, outcome, took);
        }
    }

    /// Carry out what [`schedule::decide`] says of `head`'s attempt on lane `name`.
    fn settle(&mut self, name: String, head: OutboxRecord, outcome: Outcome, took: Duration) {
        self.log_attempt(head.id.clone(), &outcome, took);
        let (status, reason) = match &outcome {
            Outcome::Delivered { status } => (Some(*status), String::new()),
            Outcome::Retry { status, reason, .. } => (*status, reason.clone()),
            Outcome::NotSent => (None, String::new()),
            Outcome::Unsendable { reason } => (None, reason.clone()),
            Outcome::Split { status } => (Some(*status), split_reason(*status)),
        };
        let (facts, failures) = match &outcome {
            Outcome::Delivered { .. } | Outcome::NotSent => (Facts::default(), 0),
            Outcome::Retry { .. } | Outcome::Unsendable { .. } | Outcome::Split { .. } => {
                let Some((_, failures)) = self.lanes.failed(&name) else {
                    return;
                };
                if matches!(outcome, Outcome::Retry { .. } | Outcome::Split { .. }) {
                    self.metrics.attempt_failed(status);
                    self.note_outcome(false);
                }
                (self.facts(&head, failures), failures)
            }
        };
        match schedule::decide(&outcome, facts, &self.policy, self.give_up) {
            Decision::Remove => self.delivered(&name, &head),
            Decision::Skip => self.skipped(&name, &head),
            Decision::Disable => self.disable(&reason),
            Decision::RetrySolo => {
                tracing::debug!(lane = %name, event_id = %head.id, "batch refused; sending its events on their own");
                self.solo.insert(head.seq);
                self.backoff.insert(name, Duration::ZERO);
            }
            Decision::Bury(limit) => {
                self.solo.remove(&head.seq);
                self.bury(&head, failures, status, reason, limit);
                self.lanes.given_up(&name);
            }
            Decision::RetryAfter(delay) => {
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

    /// `head` was delivered: free its lane and remove it.
    fn delivered(&mut self, name: &str, head: &OutboxRecord) {
        self.lanes.done(name);
        self.pass(name, head.seq);
        self.solo.remove(&head.seq);
        if let Err(e) = self.outbox.remove(self.queue, head.seq) {
            // Not removing means a duplicate later, never a loss; it is read again.
            tracing::warn!(error = %e, event_id = %head.id, "delivered event not removed from outbox; it may be sent again");
            self.out_of_step_now();
        }
        let latency = crate::event::created_at(&head.id)
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        self.metrics.delivered(&head.kind, latency);
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                endpoint = %self.name,
                outage = %humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                "receiver accepting events again"
            );
        }
        self.note_outcome(true);
    }

    /// Nothing to send for `head` (its format has nothing to say about it): removed from the
    /// queue, counted as filtered.
    fn skipped(&mut self, name: &str, head: &OutboxRecord) {
        self.lanes.done(name);
        self.pass(name, head.seq);
        self.solo.remove(&head.seq);
        self.metrics.filtered();
        if let Err(e) = self.outbox.remove(self.queue, head.seq) {
            tracing::warn!(error = %e, event_id = %head.id, "skipped event not removed from outbox; it is looked at again");
            self.out_of_step_now();
        }
    }

    /// What the schedule needs to know of `head` after its `failures`-th failed attempt: its
    /// age in real time and whether the clock is set (see `crate::clock`).
    fn facts(&self, head: &OutboxRecord, failures: u32) -> Facts {
        let now = crate::clock::STEPS.observe();
        let created = crate::event::created_at(&head.id)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(crate::clock::millis);
        Facts {
            failures,
            age: created.and_then(|c| crate::clock::STEPS.age(c, now)),
            clock_set: crate::clock::synchronised(now),
            jitter: fastrand::f64(),
        }
    }
}

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

pub use crate::outbox::Disabled;
use crate::outbox::Last;

use crate::clock::system_now as now_ms;

impl Dispatcher {
    /// Move a given-up record to the dead letters, with why.
    fn bury(
        &mut self,
        record: &OutboxRecord,
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
                // Not buried: it stays pending, is read again and retried.
                tracing::error!(endpoint = %self.name, error = %e, event_id = %record.id, "cannot move an event to the dead letters; it stays in the outbox");
                self.out_of_step_now();
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
        if let Err(e) = self.outbox.set_disabled(&self.name, Some(&disabled)) {
            tracing::error!(endpoint = %self.name, error = %e, "cannot persist the disabled endpoint; it is disabled until restart");
        }
        tracing::error!(endpoint = %self.name, url = %self.endpoint.url_for_logs, reason = %disabled.reason, pending = self.outbox.queue_len(self.queue), "endpoint DISABLED after 410 Gone: nothing more is sent to it; its events stay in the outbox. Re-enable with `edgehook outbox enable --endpoint {}` once the receiver is fixed", self.name);
        self.metrics.set_disabled(true);
        self.outbox.set_draining(self.queue, false);
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
        let which = if success {
            Last::Success
        } else {
            Last::Failure
        };
        let _ = self.outbox.set_last(&self.name, which, now_ms());
    }

    /// Add one attempt to the delivery log (`edgehook outbox log`): buffered, and appended once
    /// [`LOG_CHUNK`] attempts wait.
    fn log_attempt(&mut self, event_id: String, outcome: &Outcome, took: Duration) {
        let (status, error) = match outcome {
            Outcome::Delivered { status } => (Some(*status), None),
            Outcome::Retry { status, reason, .. } => (*status, Some(reason.clone())),
            Outcome::Unsendable { reason } => (None, Some(reason.clone())),
            Outcome::Split { status } => (Some(*status), Some(split_reason(*status))),
            Outcome::NotSent => return,
        };
        if let Some(error) = &error {
            self.metrics.failed_with(error);
        }
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
