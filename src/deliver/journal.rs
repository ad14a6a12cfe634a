//! The delivery log: each attempt recorded (in chunks), and followed by the API's stream.

use super::*;

impl Dispatcher {
    /// Append the buffered attempts to the delivery log with one write.
    pub(super) fn write_log(&mut self) {
        self.journal.log_since = None;
        if self.journal.unlogged.is_empty() {
            return;
        }
        if let Err(e) = self.journal.log.append(&self.journal.unlogged) {
            tracing::debug!(error = %e, "delivery log not written");
        }
        self.journal.unlogged.clear();
    }

    /// Add one attempt to the delivery log (`edgehook outbox log`): buffered, and appended once
    /// [`LOG_CHUNK`] attempts wait.
    pub(super) fn log_attempt(&mut self, record: &OutboxRecord, outcome: &Outcome, took: Duration) {
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
            event_id: record.id.clone(),
            kind: record.kind.clone(),
            lane: record.lane.clone(),
            ok: error.is_none(),
            status,
            ms: took.as_millis() as u64,
            error,
        };
        self.journal.unlogged.push(attempt);
        self.journal
            .log_since
            .get_or_insert_with(tokio::time::Instant::now);
        if self.journal.unlogged.len() >= LOG_CHUNK {
            self.write_log();
        }
    }
}
