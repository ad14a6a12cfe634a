//! Attempts started (one per ready lane, or a batch gathered), and their outcomes collected.

use super::*;

impl Dispatcher {
    /// Record one attempt's outcomes (one per record it carried), as its task reported them.
    pub(super) fn finish(
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
        let Some(members) = self.flight.in_flight_lanes.remove(&task) else {
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

    /// One attempt for `members`: a request of its own (no batching), or a batch.
    pub(super) fn spawn(&mut self, members: Vec<(String, OutboxRecord)>) {
        let attempt: transport::BatchAttempt = match (&self.batching.batch, &members[..]) {
            (None, [(_, record)]) => {
                let one = self.transport.send(record);
                Box::pin(async move { vec![one.await] })
            }
            _ => self
                .transport
                .send_batch(members.iter().map(|(_, r)| r.clone()).collect()),
        };
        let task = self.flight.in_flight.spawn(async move {
            let started = Instant::now();
            (attempt.await, started.elapsed())
        });
        self.flight.in_flight_lanes.insert(task.id(), members);
    }

    /// When the batch being gathered must go, if one is.
    pub(super) fn gathering_due(&self) -> Option<tokio::time::Instant> {
        let (_, _, linger) = self.batching.batch?;
        Some(self.batching.gathering_since? + linger)
    }

    /// The batch gathered so far goes.
    pub(super) fn send_gathered(&mut self) {
        self.batching.gathering_since = None;
        let members = std::mem::take(&mut self.batching.gathering);
        if !members.is_empty() {
            self.spawn(members);
        }
    }

    /// Start attempts for ready lanes while there is room: one request per lane head, or,
    /// with batching, one request for up to `batch_max_events` heads (of different lanes).
    /// A batch goes when it is full (`batch_max_events`, `batch_max_bytes`) or has waited
    /// `batch_linger` for more (at once with the default `"0s"`: under light load a batch
    /// holds one event, under load it fills).
    pub(super) fn start_ready(&mut self) {
        let Some((max_events, max_bytes, linger)) = self.batching.batch else {
            while self.flight.in_flight.len() < self.max_concurrency {
                let Some(next) = self.next_ready() else {
                    return;
                };
                self.spawn(vec![next]);
            }
            return;
        };
        loop {
            if self.batching.gathering.is_empty()
                && self.flight.in_flight.len() >= self.max_concurrency
            {
                return;
            }
            let Some(next) = self.next_ready() else {
                break;
            };
            if self.batching.solo.remove(&next.1.seq) {
                self.spawn(vec![next]);
                continue;
            }
            let bytes: usize = self
                .batching
                .gathering
                .iter()
                .map(|(_, r)| r.body.len())
                .sum();
            if !self.batching.gathering.is_empty() && bytes + next.1.body.len() > max_bytes {
                self.send_gathered();
            }
            if self.batching.gathering.is_empty() {
                self.batching.gathering_since = Some(tokio::time::Instant::now());
            }
            self.batching.gathering.push(next);
            if self.batching.gathering.len() >= max_events {
                self.send_gathered();
            }
        }
        let waited = self
            .batching
            .gathering_since
            .is_some_and(|since| since.elapsed() >= linger);
        if !self.batching.gathering.is_empty() && (linger.is_zero() || waited) {
            self.send_gathered();
        }
    }

    /// Wait for one in-flight attempt to come back and record it (or for cancellation).
    pub(super) async fn finish_one(&mut self, cancel: &CancellationToken) -> Step {
        tokio::select! {
            _ = cancel.cancelled() => Step::Cancelled,
            Some(done) = self.flight.in_flight.join_next_with_id() => {
                self.finish(done);
                Step::Continue
            }
        }
    }
}
