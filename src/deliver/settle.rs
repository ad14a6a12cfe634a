//! What an attempt's outcome does: delivered (removed), retried on the schedule, given up on
//! (a dead letter), or the endpoint disabled (410).

use super::*;

impl Dispatcher {
    /// What the schedule needs to know of `head` after its `failures`-th failed attempt: its
    /// age in real time and whether the clock is set (see `crate::clock`).
    pub(super) fn facts(&self, head: &OutboxRecord, failures: u32) -> Facts {
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

    /// Nothing to send for `head` (its format has nothing to say about it): removed from the
    /// queue, counted as filtered.
    pub(super) fn skipped(&mut self, name: &str, head: &OutboxRecord) {
        self.lanes.done(name);
        self.pass(name, head.seq);
        self.batching.solo.remove(&head.seq);
        self.metrics.filtered();
        if let Err(e) = self.outbox.remove(self.queue, head.seq) {
            tracing::warn!(error = %e, event_id = %head.id, "skipped event not removed from outbox; it is looked at again");
            self.out_of_step_now();
        }
    }

    /// `head` was delivered: free its lane and remove it.
    pub(super) fn delivered(&mut self, name: &str, head: &OutboxRecord) {
        self.lanes.done(name);
        self.pass(name, head.seq);
        self.batching.solo.remove(&head.seq);
        if let Err(e) = self.outbox.remove(self.queue, head.seq) {
            // Not removing means a duplicate later, never a loss; it is read again.
            tracing::warn!(error = %e, event_id = %head.id, "delivered event not removed from outbox; it may be sent again");
            self.out_of_step_now();
        }
        let latency = crate::event::created_at(&head.id)
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        self.metrics.delivered(&head.kind, latency);
        if let Some(since) = self.status.failing_since.take() {
            tracing::info!(
                endpoint = %self.name,
                outage = %humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                "receiver accepting events again"
            );
        }
        self.note_outcome(true);
    }

    /// Carry out what [`schedule::decide`] says of `head`'s attempt on lane `name`.
    pub(super) fn settle(
        &mut self,
        name: String,
        head: OutboxRecord,
        outcome: Outcome,
        took: Duration,
    ) {
        self.log_attempt(&head, &outcome, took);
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
                self.batching.solo.insert(head.seq);
                self.flight.backoff.insert(name, Duration::ZERO);
            }
            Decision::Bury(limit) => {
                self.batching.solo.remove(&head.seq);
                self.bury(&head, failures, status, reason, limit);
                self.lanes.given_up(&name);
            }
            Decision::RetryAfter(delay) => {
                if self.status.failing_since.is_none() {
                    self.status.failing_since = Some(Instant::now());
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
                self.flight.backoff.insert(name, delay);
            }
        }
    }

    /// Lane `name` is past record `seq` (see `passed`).
    pub(super) fn pass(&mut self, name: &str, seq: u64) {
        if let Some(at) = self.reading.passed.get_mut(name) {
            *at = (*at).max(seq);
            return;
        }
        if self.reading.passed.len() >= PASSED_MAX {
            self.reading.passed.clear();
        }
        self.reading.passed.insert(name.to_string(), seq);
    }

    /// Remember the last success or failure time, at most once a second.
    pub(super) fn note_outcome(&mut self, success: bool) {
        if self
            .status
            .meta_written
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.status.meta_written = Some(Instant::now());
        let which = if success {
            Last::Success
        } else {
            Last::Failure
        };
        let _ = self.outbox.set_last(&self.name, which, now_ms());
    }

    /// A 410 Gone: the receiver says this endpoint no longer exists. Stop sending, loudly, and
    /// remember it across restarts; nothing is dropped.
    pub(super) fn disable(&mut self, reason: &str) {
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
        self.status.disabled = Some(disabled);
    }

    /// Move a given-up record to the dead letters, with why.
    pub(super) fn bury(
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
}
