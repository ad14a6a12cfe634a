//! The delivery task's state and its loop: one [`Dispatcher`] per endpoint. What it reads is
//! in `read`, the attempts it starts in `send`, what an outcome does in `settle`, and the
//! delivery log in `journal`; the state they share is grouped here by concern.

use super::*;

/// The delivery task's state; see the module docs.
pub struct Dispatcher {
    pub(super) outbox: Outbox,
    /// This endpoint's queue in the outbox.
    pub(super) queue: QueueId,
    pub(super) name: String,
    /// How a record reaches the receiver (HTTP; the tests' own in tests).
    pub(super) transport: Arc<dyn Transport>,
    pub(super) endpoint: Endpoint,
    pub(super) policy: RetryPolicy,
    pub(super) give_up: GiveUp,
    pub(super) max_concurrency: usize,
    pub(super) metrics: Arc<EndpointMetrics>,
    /// The records held for delivery, per lane, and the loader's cursor.
    pub(super) lanes: Lanes,
    pub(super) limits: Limits,
    /// How long a stop waits for the deliveries in flight (`stop_timeout`).
    pub(super) stop_within: Duration,
    /// Disabled, paused, failing: what the endpoint's state is and when it was written.
    pub(super) status: Status,
    /// What is reading the queue and what guards it against reading the same records twice.
    pub(super) reading: Reading,
    /// The attempts under way and the lanes waiting out a backoff.
    pub(super) flight: Flight,
    /// The batch being gathered, when batching is on.
    pub(super) batching: Batching,
    /// The attempts not yet in the delivery log.
    pub(super) journal: Journal,
}

/// The endpoint's state as the operator and the receiver set it.
pub(super) struct Status {
    /// Why the endpoint is disabled (a 410 Gone), persisted in the outbox's `meta` tree.
    pub(super) disabled: Option<Disabled>,
    /// Since when an operator has paused it (persisted likewise): nothing is sent.
    pub(super) paused: Option<crate::outbox::Paused>,
    /// When `last_success`/`last_failure` were last written to `meta` (at most once a second).
    pub(super) meta_written: Option<Instant>,
    /// Consecutive failed attempts across all lanes, for one loud log line per outage.
    pub(super) failing_since: Option<Instant>,
}

/// Reading the endpoint's queue.
pub(super) struct Reading {
    /// Reading the outbox fails (logged once until it works again).
    pub(super) read_failing: bool,
    /// Whether the outbox may hold records past the lanes' cursor that are not loaded yet.
    pub(super) more_on_disk: bool,
    /// The last load stopped at its scan budget with work left: load again at once.
    pub(super) load_again: bool,
    /// The outbox's reopen count when the queue was last read from the start, and whether a
    /// removal or burial failed since: either way what is held may no longer match the disk,
    /// so once nothing is in flight the queue is read again from the start
    /// ([`Dispatcher::rescan`]). After a failure, not before the store is reopened or
    /// `out_of_step` (a second later): the store refuses everything until the writer reopens
    /// it, and reading again at once sent the same records again as fast as the receiver
    /// answered (fault harness).
    pub(super) reopens_seen: u64,
    pub(super) out_of_step: Option<tokio::time::Instant>,
    /// Per lane, the highest sequence number delivered (or skipped) since start. What a lane
    /// meets at or behind it when it reads again — a delivered record whose removal was lost,
    /// a reading dropped to make room that a reopen or restart of the store brought back — is
    /// removed, never sent: a lane sends in outbox order, so nothing behind it is still owed.
    pub(super) passed: HashMap<String, u64>,
}

/// The attempts under way.
pub(super) struct Flight {
    /// Lanes waiting out a backoff.
    pub(super) backoff: DelayQueue<String>,
    pub(super) in_flight: JoinSet<(Vec<Outcome>, Duration)>,
    /// The lanes and records each in-flight task serves (one, or a batch's), so that even a
    /// task that fails to report (a panic) frees its lanes.
    pub(super) in_flight_lanes: HashMap<tokio::task::Id, Vec<(String, OutboxRecord)>>,
}

/// Batching, when `batch_max_events` is set.
pub(super) struct Batching {
    /// `batch_max_events`, `batch_max_bytes` and `batch_linger`, when batching is on.
    pub(super) batch: Option<(usize, usize, Duration)>,
    /// The batch being gathered (its records' lanes are in flight), and since when.
    pub(super) gathering: Vec<(String, OutboxRecord)>,
    pub(super) gathering_since: Option<tokio::time::Instant>,
    /// Records whose batch was refused (a 4xx): their next attempt is on their own.
    pub(super) solo: std::collections::HashSet<u64>,
}

/// The delivery log's side.
pub(super) struct Journal {
    /// The delivery log (`edgehook outbox log`), shared with the other endpoints.
    pub(super) log: Arc<DeliveryLog>,
    /// Attempts not yet appended to the log, and since when the oldest waits: they are
    /// appended together, every [`LOG_CHUNK`] attempts or [`LOG_EVERY`].
    pub(super) unlogged: Vec<Attempt>,
    pub(super) log_since: Option<tokio::time::Instant>,
}

/// Lanes [`Reading::passed`] remembers at most (then it starts afresh: the guard it keeps
/// only matters after a reopen).
pub(super) const PASSED_MAX: usize = 65_536;

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
        let http = Arc::new(transport::Http::new(config)?.keeping(log.exchanges().clone()));
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
            status: Status {
                disabled: outbox.disabled(&config.name),
                paused: outbox.paused(&config.name),
                meta_written: None,
                failing_since: None,
            },
            reading: Reading {
                read_failing: false,
                more_on_disk: true,
                load_again: false,
                reopens_seen,
                out_of_step: None,
                passed: HashMap::new(),
            },
            flight: Flight {
                backoff: DelayQueue::new(),
                in_flight: JoinSet::new(),
                in_flight_lanes: HashMap::new(),
            },
            batching: Batching {
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
            },
            journal: Journal {
                log,
                unlogged: Vec::new(),
                log_since: None,
            },
            outbox,
            queue,
            name: config.name.clone(),
            transport,
            endpoint: Endpoint::new(config)?,
            give_up: GiveUp {
                max_attempts: config.max_attempts,
                max_age: config.max_age,
            },
            policy: RetryPolicy::from(&config.retry),
            max_concurrency: config.max_concurrency,
            metrics,
            lanes: Lanes::new(limits),
            limits,
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
        self.metrics.set_disabled(self.status.disabled.is_some());
        self.metrics.set_paused(self.status.paused.is_some());
        let holding = self.status.disabled.is_some() || self.status.paused.is_some();
        self.outbox.set_draining(self.queue, !holding);
        if let Some(p) = &self.status.paused {
            tracing::warn!(endpoint = %self.name, since = %p.since, pending = self.outbox.queue_len(self.queue), "endpoint PAUSED by an operator: nothing is sent to it; new events are still queued within its share of the outbox (resume: edgehook endpoints resume {})", self.name);
        }
        if let Some(d) = &self.status.disabled {
            tracing::error!(endpoint = %self.name, url = %self.endpoint.url_for_logs, reason = %d.reason, since = %d.since, "endpoint DISABLED: nothing is sent to it; its events stay in the outbox. Re-enable with `edgehook outbox enable --endpoint {}` once the receiver is fixed", self.name);
        }
        while self.step(&cancel).await == Step::Continue {}
        let pending = self.flight.in_flight.len();
        if pending > 0 {
            tracing::info!(endpoint = %self.name, url = %self.endpoint.url_for_logs, pending, stop_timeout = ?self.stop_within, "stopping: waiting for the deliveries in flight to be answered");
        }
        let deadline = tokio::time::Instant::now() + self.stop_within;
        loop {
            tokio::select! {
                done = self.flight.in_flight.join_next_with_id() => match done {
                    Some(done) => self.finish(done),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(endpoint = %self.name, url = %self.endpoint.url_for_logs, unanswered = self.flight.in_flight.len(), stop_timeout = ?self.stop_within, "stop_timeout reached: deliveries still unanswered are let go; their events stay in the outbox and are sent after the next start");
                    self.flight.in_flight.abort_all();
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
        if self.status.disabled.is_some() || self.status.paused.is_some() {
            // Sending nothing; finish what is in flight and wait for shutdown.
            let step = self.finish_one(cancel).await;
            self.write_log();
            return step;
        }
        let reopened = self.outbox.reopens() != self.reading.reopens_seen;
        if self.reading.out_of_step.is_some() || reopened {
            // Start nothing new until what is in flight is done, then read afresh.
            if !self.flight.in_flight.is_empty() {
                return self.finish_one(cancel).await;
            }
            if let Some(at) = self
                .reading
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
            Ok(()) => self.reading.read_failing = false,
            Err(e) => {
                if !self.reading.read_failing {
                    tracing::error!(endpoint = %self.name, error = %e, "cannot read the outbox; retrying every second");
                    self.reading.read_failing = true;
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
            Some(done) = self.flight.in_flight.join_next_with_id() => self.finish(done),
            Some(expired) = std::future::poll_fn(|cx| self.flight.backoff.poll_expired(cx)) => {
                self.lanes.retry_due(&expired.into_inner());
            }
            _ = outbox.appended(self.queue), if !self.reading.more_on_disk => self.reading.more_on_disk = true,
            _ = tokio::task::yield_now(), if self.reading.load_again => {}
            // A failed read is retried on its own: no write may come to wake the loop.
            _ = tokio::time::sleep(READ_RETRY), if self.reading.read_failing => {}
            _ = tokio::time::sleep_until(self.journal.log_since.unwrap_or_else(tokio::time::Instant::now) + LOG_EVERY), if self.journal.log_since.is_some() => self.write_log(),
            // A batch that waited `batch_linger` goes (start_ready sends it).
            _ = tokio::time::sleep_until(gathering_due.unwrap_or_else(tokio::time::Instant::now)), if gathering_due.is_some() => {}
        }
        Step::Continue
    }
}
