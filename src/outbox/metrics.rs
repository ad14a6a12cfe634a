//! What the outbox counts and holds: events stored (by type) and left unrouted, its size and
//! fill, what it dropped (in all and per endpoint), dead letters, failed writes, how long a
//! group commit takes and how many checkpoints were made. Pending events and their age are read off the store at scrape time
//! ([`super::Outbox::observe`]).

use crate::event::EventType;
use crate::metrics::{
    preset, Counter, EncodeLabelSet, Endpoint, Family, FloatGauge, Gauge, Histogram, Registry,
};

/// Outbox commit (write + fsync of one group) histogram bucket bounds, seconds.
const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Type {
    pub r#type: &'static str,
}

pub struct OutboxMetrics {
    events_created: Family<Type, Counter>,
    events_unrouted: Counter,
    depth: Gauge,
    bytes: Gauge,
    max_bytes: Gauge,
    full: Gauge,
    dropped: Counter,
    dead_letters: Gauge,
    dead_bytes: Gauge,
    dead_let_go: Counter,
    /// The outbox's own count of letters let go when last read (the counter follows it).
    dead_let_go_seen: std::sync::atomic::AtomicU64,
    write_failures: Counter,
    commit: Histogram,
    checkpoints: Counter,
    endpoint_dropped: Family<Endpoint, Counter>,
    endpoint_pending: Family<Endpoint, Gauge>,
    oldest_pending: Family<Endpoint, FloatGauge>,
}

impl OutboxMetrics {
    pub fn register(r: &mut Registry) -> OutboxMetrics {
        let m = OutboxMetrics {
            events_created: r.counters(
                "events_created_total",
                "Events made from device messages (stored for each endpoint that subscribes to their type).",
            ),
            events_unrouted: r.counter(
                "events_unrouted_total",
                "Events no active endpoint subscribes to (not stored).",
            ),
            endpoint_pending: r.gauge("endpoint_pending", "Events waiting in the endpoint's queue."),
            endpoint_dropped: r.counters(
                "endpoint_dropped_total",
                "Events the endpoint will never get because its share of outbox.max_size was full, since the outbox was made (as outbox status): new events while it could not drain (disabled, inactive, removed; other endpoints still got them), or its oldest readings deleted by on_full = drop_oldest_readings.",
            ),
            depth: r.gauge("outbox_depth", "Events waiting in the outbox, all endpoints together."),
            bytes: r.gauge(
                "outbox_bytes",
                "Bytes of events waiting, all endpoints together (limited by outbox.max_size).",
            ),
            max_bytes: r.gauge("outbox_max_bytes", "outbox.max_size."),
            full: r.gauge(
                "outbox_full",
                "1 while the outbox is at outbox.max_size (back-pressure, or dropping old readings).",
            ),
            dropped: r.counter(
                "outbox_dropped_total",
                "Old sensor readings deleted to make room (on_full = drop_oldest_readings).",
            ),
            dead_letters: r.gauge(
                "dead_letters",
                "Dead letters kept in the outbox (edgehook outbox list --dead).",
            ),
            dead_bytes: r.gauge(
                "dead_letters_bytes",
                "Bytes of dead letters kept (limited by outbox.max_dead_size).",
            ),
            dead_let_go: r.counter(
                "dead_letters_let_go_total",
                "The oldest dead letters deleted to keep within outbox.max_dead_size.",
            ),
            dead_let_go_seen: std::sync::atomic::AtomicU64::new(0),
            write_failures: r.counter(
                "outbox_write_failures_total",
                "Failed outbox writes (each retried).",
            ),
            oldest_pending: r.gauge(
                "outbox_oldest_pending_seconds",
                "Age of the oldest event waiting for delivery (0 when none).",
            ),
            checkpoints: r.counter(
                "outbox_checkpoints_total",
                "Checkpoints made: what the write-ahead log held and is still needed put into the store and synced (once per outbox.checkpoint_interval while anything changes, never while nothing does).",
            ),
            commit: r.histogram(
                "outbox_commit_seconds",
                "Time to write and fsync one group of messages to the outbox.",
                &COMMIT_BUCKETS,
            ),
        };
        preset(
            &m.events_created,
            EventType::ALL.map(|t| Type { r#type: t.as_str() }),
        );
        m
    }

    fn endpoint(name: &str) -> Endpoint {
        Endpoint {
            endpoint: name.to_string(),
        }
    }

    /// An event made durable (for every endpoint it is routed to).
    pub fn event_created(&self, kind: EventType) {
        self.events_created
            .get_or_create(&Type {
                r#type: kind.as_str(),
            })
            .inc();
    }
    /// Events no active endpoint subscribes to (not stored).
    pub fn unrouted(&self, n: u64) {
        self.events_unrouted.inc_by(n);
    }
    /// Old readings deleted to make room (`on_full = drop_oldest_readings`), in all.
    pub fn dropped(&self, n: u64) {
        self.dropped.inc_by(n);
    }
    /// `n` events endpoint `name` will never get (its share was full: it could not drain, or
    /// its oldest readings made room).
    pub fn dropped_for(&self, name: &str, n: u64) {
        self.endpoint_dropped
            .get_or_create(&Self::endpoint(name))
            .inc_by(n);
    }
    pub fn set_full(&self, full: bool) {
        self.full.set(full as i64);
    }
    pub fn is_full(&self) -> bool {
        self.full.get() == 1
    }
    pub fn set_max_bytes(&self, bytes: u64) {
        self.max_bytes.set(bytes as i64);
    }
    /// `outbox.max_size`, as set at start.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.get().max(0) as u64
    }
    pub fn set_depth(&self, depth: usize) {
        self.depth.set(depth as i64);
    }
    /// Bytes of events held, and dead letters kept (read from the outbox at scrape time).
    pub fn set_held(&self, bytes: u64, dead_letters: usize) {
        self.bytes.set(bytes as i64);
        self.dead_letters.set(dead_letters as i64);
    }
    /// The dead letters' bytes, and how many were let go since the outbox opened.
    pub fn set_dead(&self, bytes: u64, let_go: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.dead_bytes.set(bytes as i64);
        let before = self.dead_let_go_seen.swap(let_go, Relaxed);
        self.dead_let_go.inc_by(let_go.saturating_sub(before));
    }
    /// Events waiting for endpoint `name`, and the age of the oldest.
    pub fn set_pending(&self, name: &str, depth: usize, oldest: std::time::Duration) {
        let endpoint = Self::endpoint(name);
        self.endpoint_pending
            .get_or_create(&endpoint)
            .set(depth as i64);
        self.oldest_pending
            .get_or_create(&endpoint)
            .set(oldest.as_secs_f64());
        drop(self.endpoint_dropped.get_or_create(&endpoint));
    }
    pub fn write_failed(&self) {
        self.write_failures.inc();
    }
    /// A checkpoint was made (see `Outbox::flush`).
    pub fn checkpointed(&self) {
        self.checkpoints.inc();
    }
    /// One group commit (write and fsync) took `took`.
    pub fn committed(&self, took: std::time::Duration) {
        self.commit.observe(took.as_secs_f64());
    }
}
