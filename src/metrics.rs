//! Metrics: plain atomics every stage updates, rendered as Prometheus text at scrape time;
//! there is no registry to configure. This module knows no stage: the label values of the
//! counters by kind come from the stages through [`Kinds`], and what is read off the outbox at
//! scrape time is set by the outbox ([`Metrics::set_outbox_held`], [`EndpointMetrics::set_pending`]).
//! [`FaultLog`] rate-limits per-message fault logs, so a misbehaving device cannot flood the
//! journal.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::EventType;

const EVENT_TYPES: [EventType; EventType::ALL.len()] = EventType::ALL;

/// Counters by a `kind` label whose values the stage that counts names ([`Kinds`]): every
/// kind is rendered from the start, at 0, so dashboards see each series.
#[derive(Default)]
struct ByKind {
    kinds: &'static [&'static str],
    counts: Box<[AtomicU64]>,
}

impl ByKind {
    fn new(kinds: &'static [&'static str]) -> ByKind {
        ByKind {
            kinds,
            counts: kinds.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn add(&self, kind: &str) {
        if let Some(i) = self.kinds.iter().position(|k| *k == kind) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The label values of the counters by kind, each named by the stage that counts them (the
/// wiring passes them in, so this module knows no stage).
#[derive(Debug, Clone, Copy, Default)]
pub struct Kinds {
    /// MQTT payloads that did not decode (`source::DecodeError::KINDS`).
    pub decode_errors: &'static [&'static str],
    /// Serial frames skipped (`source::serial::frame::FrameError::KINDS`).
    pub serial_frame_errors: &'static [&'static str],
    /// Messages the device registry refused (`device::Refused::KINDS`).
    pub device_refusals: &'static [&'static str],
}

/// Delivery-latency histogram bucket bounds, seconds (event creation → 2xx).
const LATENCY_BUCKETS: Bounds = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0,
];
/// Outbox commit (write + fsync of one group) histogram bucket bounds, seconds.
const COMMIT_BUCKETS: Bounds = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
type Bounds = [f64; 12];

/// A Prometheus histogram over one of the bounds above: cumulative buckets, count and sum.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, bounds: &Bounds, value: Duration) {
        let secs = value.as_secs_f64();
        for (bound, bucket) in bounds.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    /// The samples of `edgehook_<name>` with `labels` (`key="value",` pairs, may be empty).
    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &Bounds) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (bound, bucket) in bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "edgehook_{name}_bucket{{{labels}le=\"{bound}\"}} {}",
                get(bucket)
            );
        }
        let count = get(&self.count);
        let _ = writeln!(out, "edgehook_{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let labels = match labels.trim_end_matches(',') {
            "" => String::new(),
            l => format!("{{{l}}}"),
        };
        let sum = get(&self.sum_micros) as f64 / 1e6;
        let _ = writeln!(out, "edgehook_{name}_sum{labels} {sum}");
        let _ = writeln!(out, "edgehook_{name}_count{labels} {count}");
    }
}

/// Every counter the daemon keeps.
#[derive(Default)]
pub struct Metrics {
    /// Whether an MQTT source runs at all (a serial-only gateway needs no broker).
    mqtt_enabled: AtomicBool,
    mqtt_connected: AtomicBool,
    mqtt_connects: AtomicU64,
    serial_ports_open: AtomicU64,
    serial_port_losses: AtomicU64,
    serial_frame_errors: ByKind,
    messages_received: AtomicU64,
    decode_errors: ByKind,
    events_created: [AtomicU64; EVENT_TYPES.len()],
    events_unrouted: AtomicU64,
    outbox_depth: AtomicU64,
    outbox_bytes: AtomicU64,
    outbox_max_bytes: AtomicU64,
    outbox_full: AtomicBool,
    outbox_dropped: AtomicU64,
    dead_letters_kept: AtomicU64,
    outbox_write_failures: AtomicU64,
    outbox_commit: Histogram,
    /// Messages the device registry skipped, by why.
    device_refusals: ByKind,
    /// Devices the registry knows.
    devices: AtomicU64,
    mqtt_redeliveries: AtomicU64,
    /// One per endpoint (and per queue left by a removed endpoint), in registration order.
    endpoints: std::sync::Mutex<Vec<Arc<EndpointMetrics>>>,
}

/// What delivery to one endpoint did; rendered with an `endpoint` label.
#[derive(Default)]
pub struct EndpointMetrics {
    name: String,
    events_delivered: [AtomicU64; EVENT_TYPES.len()],
    attempts_ok: AtomicU64,
    attempts_http_error: AtomicU64,
    attempts_network_error: AtomicU64,
    attempts_client_error: AtomicU64,
    /// Answers by HTTP status code (2xx included).
    responses: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
    events_filtered: AtomicU64,
    /// Events not stored for this endpoint: its share of the outbox was full and it could not
    /// drain.
    events_dropped: AtomicU64,
    dead_letters: AtomicU64,
    disabled: AtomicBool,
    depth: AtomicU64,
    oldest_ms: AtomicU64,
    /// Events and bytes delivery holds in memory (bounded by `window` and `window_bytes`).
    held: AtomicU64,
    held_bytes: AtomicU64,
    latency: Histogram,
}

fn type_index(kind: &str) -> Option<usize> {
    EVENT_TYPES.iter().position(|t| t.as_str() == kind)
}

impl EndpointMetrics {
    /// Events waiting in the endpoint's queue, and the age of the oldest (read from the outbox
    /// at scrape time).
    pub fn set_pending(&self, depth: u64, oldest_ms: u64) {
        self.depth.store(depth, Ordering::Relaxed);
        self.oldest_ms.store(oldest_ms, Ordering::Relaxed);
    }
    /// The receiver answered with `status`.
    pub fn response(&self, status: u16) {
        let mut responses = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        *responses.entry(status).or_default() += 1;
    }
    pub fn delivered(&self, kind: &str, latency: Duration) {
        if let Some(i) = type_index(kind) {
            self.events_delivered[i].fetch_add(1, Ordering::Relaxed);
        }
        self.attempts_ok.fetch_add(1, Ordering::Relaxed);
        self.latency.observe(&LATENCY_BUCKETS, latency);
    }
    pub fn attempt_failed(&self, http_status: Option<u16>) {
        if http_status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429) {
            self.attempts_client_error.fetch_add(1, Ordering::Relaxed);
        }
        match http_status {
            Some(_) => &self.attempts_http_error,
            None => &self.attempts_network_error,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
    /// A queued event this endpoint no longer subscribes to (its `events` changed).
    pub fn filtered(&self) {
        self.events_filtered.fetch_add(1, Ordering::Relaxed);
    }
    /// Count a dead letter; returns how many since start.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_letters.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Relaxed);
    }
    /// `n` events this endpoint will never get (its share was full: it could not drain, or its oldest readings made room).
    pub fn dropped(&self, n: u64) {
        self.events_dropped.fetch_add(n, Ordering::Relaxed);
    }
    /// What delivery holds in memory now: events and their bytes.
    pub fn set_held(&self, events: usize, bytes: usize) {
        self.held.store(events as u64, Ordering::Relaxed);
        self.held_bytes.store(bytes as u64, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counters by kind labelled with `kinds` (the default has none: kinds are not counted).
    pub fn with_kinds(kinds: Kinds) -> Metrics {
        Metrics {
            decode_errors: ByKind::new(kinds.decode_errors),
            serial_frame_errors: ByKind::new(kinds.serial_frame_errors),
            device_refusals: ByKind::new(kinds.device_refusals),
            ..Metrics::default()
        }
    }
    /// A message skipped for the registry's bounds (`kind` of [`Kinds::device_refusals`]).
    pub fn device_message_refused(&self, kind: &str) {
        self.device_refusals.add(kind);
    }
    pub fn set_devices(&self, n: u64) {
        self.devices.store(n, Ordering::Relaxed);
    }
    /// A broker redelivery of a message already applied, acknowledged without applying it.
    pub fn mqtt_redelivery_recognised(&self) {
        self.mqtt_redeliveries.fetch_add(1, Ordering::Relaxed);
    }
    pub fn set_mqtt_enabled(&self, enabled: bool) {
        self.mqtt_enabled.store(enabled, Ordering::Relaxed);
    }
    /// Ready for work: the broker connected (if MQTT is used), the outbox writable (as the
    /// outbox says: `outbox_writable`) and not full, no endpoint disabled.
    pub fn readiness(&self, outbox_writable: bool) -> Result<(), &'static str> {
        if self.mqtt_enabled.load(Ordering::Relaxed) && !self.mqtt_connected() {
            return Err("mqtt broker not connected");
        }
        if !outbox_writable {
            return Err("outbox not writable");
        }
        if self.outbox_full.load(Ordering::Relaxed) {
            return Err("outbox full (outbox.max_size)");
        }
        if self
            .endpoints()
            .iter()
            .any(|e| e.disabled.load(Ordering::Relaxed))
        {
            return Err("an endpoint is disabled after 410 Gone (edgehook outbox status; edgehook outbox enable)");
        }
        Ok(())
    }
    pub fn serial_port_opened(&self) {
        self.serial_ports_open.fetch_add(1, Ordering::Relaxed);
    }
    pub fn serial_port_closed(&self) {
        self.serial_ports_open.fetch_sub(1, Ordering::Relaxed);
        self.serial_port_losses.fetch_add(1, Ordering::Relaxed);
    }
    pub fn serial_frame_error(&self, kind: &str) {
        self.serial_frame_errors.add(kind);
    }
    pub fn set_mqtt_connected(&self, up: bool) {
        if up {
            self.mqtt_connects.fetch_add(1, Ordering::Relaxed);
        }
        self.mqtt_connected.store(up, Ordering::Relaxed);
    }
    pub fn mqtt_connected(&self) -> bool {
        self.mqtt_connected.load(Ordering::Relaxed)
    }
    pub fn message_received(&self) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
    }
    pub fn decode_error(&self, kind: &str) {
        self.decode_errors.add(kind);
    }
    pub fn event_created(&self, kind: EventType) {
        if let Some(i) = type_index(kind.as_str()) {
            self.events_created[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Events no active endpoint subscribes to (not stored).
    pub fn unrouted(&self, n: u64) {
        self.events_unrouted.fetch_add(n, Ordering::Relaxed);
    }
    /// Old readings deleted to make room (`on_full = drop_oldest_readings`).
    pub fn dropped(&self, n: u64) {
        self.outbox_dropped.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set_outbox_full(&self, full: bool) {
        self.outbox_full.store(full, Ordering::Relaxed);
    }
    pub fn set_outbox_max_bytes(&self, bytes: u64) {
        self.outbox_max_bytes.store(bytes, Ordering::Relaxed);
    }
    /// The metrics of endpoint `name`, registered on first use.
    pub fn endpoint(&self, name: &str) -> Arc<EndpointMetrics> {
        let mut all = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = all.iter().find(|e| e.name == name) {
            return e.clone();
        }
        let e = Arc::new(EndpointMetrics {
            name: name.to_string(),
            ..Default::default()
        });
        all.push(e.clone());
        e
    }
    fn endpoints(&self) -> Vec<Arc<EndpointMetrics>> {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// Bytes of events held, and dead letters kept (read from the outbox at scrape time).
    pub fn set_outbox_held(&self, bytes: u64, dead_letters: u64) {
        self.outbox_bytes.store(bytes, Ordering::Relaxed);
        self.dead_letters_kept
            .store(dead_letters, Ordering::Relaxed);
    }
    pub fn set_outbox_depth(&self, depth: u64) {
        self.outbox_depth.store(depth, Ordering::Relaxed);
    }
    pub fn outbox_write_failed(&self) {
        self.outbox_write_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// One group commit (write and fsync) took `took`.
    pub fn outbox_committed(&self, took: Duration) {
        self.outbox_commit.observe(&COMMIT_BUCKETS, took);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(
                out,
                "# HELP edgehook_{name} {help}\n# TYPE edgehook_{name} {kind}"
            );
            for (labels, v) in samples {
                let _ = writeln!(out, "edgehook_{name}{labels} {v}");
            }
        };
        let plain = |v: u64| vec![(String::new(), v)];
        metric(
            "mqtt_connected",
            "gauge",
            "1 while connected to the broker.",
            &plain(self.mqtt_connected() as u64),
        );
        metric(
            "mqtt_connects_total",
            "counter",
            "Successful broker connections (first one included).",
            &plain(get(&self.mqtt_connects)),
        );
        metric(
            "messages_received_total",
            "counter",
            "Device messages received from all sources.",
            &plain(get(&self.messages_received)),
        );
        let by = |label: &str, names: &[&str], values: &[AtomicU64]| -> Vec<(String, u64)> {
            names
                .iter()
                .zip(values)
                .map(|(n, v)| (format!("{{{label}=\"{n}\"}}"), get(v)))
                .collect()
        };
        let types: Vec<&str> = EVENT_TYPES.iter().map(|t| t.as_str()).collect();
        metric(
            "decode_errors_total",
            "counter",
            "Messages skipped because they could not be decoded.",
            &by("kind", self.decode_errors.kinds, &self.decode_errors.counts),
        );
        metric(
            "serial_frame_errors_total",
            "counter",
            "Serial frames or bytes skipped, by fault.",
            &by(
                "kind",
                self.serial_frame_errors.kinds,
                &self.serial_frame_errors.counts,
            ),
        );
        metric(
            "serial_ports_open",
            "gauge",
            "Serial ports open now.",
            &plain(get(&self.serial_ports_open)),
        );
        metric(
            "serial_port_closures_total",
            "counter",
            "Serial ports that closed (unplugged, failed) and were reopened or are being retried.",
            &plain(get(&self.serial_port_losses)),
        );
        metric(
            "mqtt_redeliveries_skipped_total",
            "counter",
            "Messages the broker redelivered after a lost connection that edgehook had already applied: acknowledged, not applied again.",
            &plain(get(&self.mqtt_redeliveries)),
        );
        metric(
            "devices",
            "gauge",
            "Devices the registry knows (at most devices.max_devices).",
            &plain(get(&self.devices)),
        );
        metric(
            "device_messages_refused_total",
            "counter",
            "Messages skipped for the registry's bounds: from a new device past devices.max_devices, or with fields past devices.max_fields.",
            &by("reason", self.device_refusals.kinds, &self.device_refusals.counts),
        );
        metric(
            "events_created_total",
            "counter",
            "Events made from device messages (stored for each endpoint that subscribes to their type).",
            &by("type", &types, &self.events_created),
        );
        metric(
            "events_unrouted_total",
            "counter",
            "Events no active endpoint subscribes to (not stored).",
            &plain(get(&self.events_unrouted)),
        );
        let endpoints = self.endpoints();
        let per = |f: &dyn Fn(&EndpointMetrics) -> u64| -> Vec<(String, u64)> {
            endpoints
                .iter()
                .map(|e| (format!("{{endpoint=\"{}\"}}", e.name), f(e)))
                .collect()
        };
        let delivered: Vec<(String, u64)> = endpoints
            .iter()
            .flat_map(|e| {
                types
                    .iter()
                    .zip(&e.events_delivered)
                    .map(|(t, v)| (format!("{{endpoint=\"{}\",type=\"{t}\"}}", e.name), get(v)))
            })
            .collect();
        metric(
            "events_delivered_total",
            "counter",
            "Events the receiver accepted (2xx).",
            &delivered,
        );
        metric(
            "events_filtered_total",
            "counter",
            "Queued events dropped because the endpoint no longer subscribes to their type.",
            &per(&|e| get(&e.events_filtered)),
        );
        let attempts: Vec<(String, u64)> = endpoints
            .iter()
            .flat_map(|e| {
                [
                    ("success", &e.attempts_ok),
                    ("http_error", &e.attempts_http_error),
                    ("network_error", &e.attempts_network_error),
                ]
                .map(|(result, v)| {
                    (
                        format!("{{endpoint=\"{}\",result=\"{result}\"}}", e.name),
                        get(v),
                    )
                })
            })
            .collect();
        metric(
            "delivery_attempts_total",
            "counter",
            "Delivery attempts by result.",
            &attempts,
        );
        let responses: Vec<(String, u64)> = endpoints
            .iter()
            .flat_map(|e| {
                let by_status = e
                    .responses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                by_status.into_iter().map(|(status, n)| {
                    (
                        format!("{{endpoint=\"{}\",status=\"{status}\"}}", e.name),
                        n,
                    )
                })
            })
            .collect();
        metric(
            "delivery_responses_total",
            "counter",
            "Receiver answers by HTTP status code.",
            &responses,
        );
        metric(
            "delivery_client_errors_total",
            "counter",
            "Attempts refused with a 4xx other than 408/429 (retried all the same: check the endpoint's configuration).",
            &per(&|e| get(&e.attempts_client_error)),
        );
        metric(
            "dead_letters_total",
            "counter",
            "Events given up on (max_attempts / max_age) and kept as dead letters since start.",
            &per(&|e| get(&e.dead_letters)),
        );
        metric(
            "endpoint_disabled",
            "gauge",
            "1 after the receiver answered 410 Gone: nothing is sent until `edgehook outbox enable`.",
            &per(&|e| e.disabled.load(Ordering::Relaxed) as u64),
        );
        metric(
            "endpoint_pending",
            "gauge",
            "Events waiting in the endpoint's queue.",
            &per(&|e| get(&e.depth)),
        );
        metric(
            "endpoint_dropped_total",
            "counter",
            "Events the endpoint will never get because its share of outbox.max_size was full, since the outbox was made (as outbox status): new events while it could not drain (disabled, inactive, removed; other endpoints still got them), or its oldest readings deleted by on_full = drop_oldest_readings.",
            &per(&|e| get(&e.events_dropped)),
        );
        metric(
            "delivery_window_events",
            "gauge",
            "Events delivery holds in memory for the endpoint (at most webhook.window).",
            &per(&|e| get(&e.held)),
        );
        metric(
            "delivery_window_bytes",
            "gauge",
            "Bytes of events delivery holds in memory for the endpoint (at most webhook.window_bytes, or one event).",
            &per(&|e| get(&e.held_bytes)),
        );
        metric(
            "outbox_depth",
            "gauge",
            "Events waiting in the outbox, all endpoints together.",
            &plain(get(&self.outbox_depth)),
        );
        metric(
            "outbox_bytes",
            "gauge",
            "Bytes of events waiting, all endpoints together (limited by outbox.max_size).",
            &plain(get(&self.outbox_bytes)),
        );
        metric(
            "outbox_max_bytes",
            "gauge",
            "outbox.max_size.",
            &plain(get(&self.outbox_max_bytes)),
        );
        metric(
            "outbox_full",
            "gauge",
            "1 while the outbox is at outbox.max_size (back-pressure, or dropping old readings).",
            &plain(self.outbox_full.load(Ordering::Relaxed) as u64),
        );
        metric(
            "outbox_dropped_total",
            "counter",
            "Old sensor readings deleted to make room (on_full = drop_oldest_readings).",
            &plain(get(&self.outbox_dropped)),
        );
        metric(
            "dead_letters",
            "gauge",
            "Dead letters kept in the outbox (edgehook outbox list --dead).",
            &plain(get(&self.dead_letters_kept)),
        );
        metric(
            "outbox_write_failures_total",
            "counter",
            "Failed outbox writes (each retried).",
            &plain(get(&self.outbox_write_failures)),
        );
        let _ = writeln!(
            out,
            "# HELP edgehook_outbox_oldest_pending_seconds Age of the oldest event waiting for delivery (0 when none).\n# TYPE edgehook_outbox_oldest_pending_seconds gauge"
        );
        for e in &endpoints {
            let _ = writeln!(
                out,
                "edgehook_outbox_oldest_pending_seconds{{endpoint=\"{}\"}} {}",
                e.name,
                get(&e.oldest_ms) as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "# HELP edgehook_delivery_latency_seconds Event creation to receiver 2xx.\n# TYPE edgehook_delivery_latency_seconds histogram"
        );
        for e in &endpoints {
            let labels = format!("endpoint=\"{}\",", e.name);
            e.latency.render(
                &mut out,
                "delivery_latency_seconds",
                &labels,
                &LATENCY_BUCKETS,
            );
        }
        let _ = writeln!(
            out,
            "# HELP edgehook_outbox_commit_seconds Time to write and fsync one group of messages to the outbox.\n# TYPE edgehook_outbox_commit_seconds histogram"
        );
        self.outbox_commit
            .render(&mut out, "outbox_commit_seconds", "", &COMMIT_BUCKETS);
        out
    }
}

/// Sources (topics, ports) a [`FaultLog`] tells apart at once.
pub const FAULT_SOURCES: usize = 256;

/// Rate limiter for per-message fault logs: the first fault of a kind from a source is logged,
/// repeats within `window` are only counted and summarised with the next logged one.
pub struct FaultLog {
    window: Duration,
    seen: HashMap<(&'static str, String), (Instant, u64)>,
}

impl FaultLog {
    pub fn new(window: Duration) -> FaultLog {
        FaultLog {
            window,
            seen: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when this fault should be logged now (with how many were suppressed
    /// since the last line), `None` when it should only be counted.
    /// At most [`FAULT_SOURCES`] sources are told apart; past that (a flood of made-up topics),
    /// faults of one kind from any further source share one line a window.
    pub fn admit(&mut self, kind: &'static str, source: &str, now: Instant) -> Option<u64> {
        let mut key = (kind, source.to_string());
        if !self.seen.contains_key(&key) && self.seen.len() >= FAULT_SOURCES {
            let window = self.window;
            self.seen
                .retain(|_, (at, _)| now.duration_since(*at) < window);
            if self.seen.len() >= FAULT_SOURCES {
                key = (kind, "(other sources)".to_string());
            }
        }
        match self.seen.get_mut(&key) {
            Some((at, suppressed)) if now.duration_since(*at) < self.window => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16 #6: a flood of made-up topics used to get a log line each (and an entry each,
    /// for a minute): past [`FAULT_SOURCES`] they share one line a window.
    #[test]
    fn a_flood_of_sources_is_logged_once_a_window_in_bounded_memory() {
        let mut log = FaultLog::new(Duration::from_secs(60));
        let now = Instant::now();
        let logged = (0..10_000)
            .filter(|i| {
                log.admit("not_json", &format!("junk/{i}/reading"), now)
                    .is_some()
            })
            .count();
        assert_eq!(logged, FAULT_SOURCES + 1);
        assert!(log.seen.len() <= FAULT_SOURCES + 1);
        // the next window starts afresh (the counters in /metrics keep the totals)
        let later = now + Duration::from_secs(61);
        assert_eq!(log.admit("not_json", "junk/x/reading", later), Some(0));
        assert_eq!(log.seen.len(), 1);
    }

    #[test]
    fn fault_log_admits_first_then_summarises() {
        let mut log = FaultLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.admit("not_json", "topic/a", t0), Some(0));
        assert_eq!(
            log.admit("not_json", "topic/a", t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            log.admit("not_json", "topic/a", t0 + Duration::from_secs(2)),
            None
        );
        assert_eq!(
            log.admit("oversize", "topic/a", t0),
            Some(0),
            "other kinds are separate"
        );
        assert_eq!(
            log.admit("not_json", "topic/b", t0),
            Some(0),
            "other sources are separate"
        );
        assert_eq!(
            log.admit("not_json", "topic/a", t0 + Duration::from_secs(61)),
            Some(2)
        );
    }

    #[test]
    fn metrics_render_as_prometheus_text() {
        let m = Metrics::with_kinds(Kinds {
            decode_errors: &["oversize", "not_json"],
            ..Kinds::default()
        });
        m.decode_error("not_json");
        m.decode_error("a kind nobody named");
        m.endpoint("crm")
            .delivered("device.online", Duration::from_millis(20));
        let text = m.render();
        assert!(
            text.contains("edgehook_decode_errors_total{kind=\"not_json\"} 1"),
            "{text}"
        );
        assert!(text.contains("edgehook_decode_errors_total{kind=\"oversize\"} 0"));
        assert!(!text.contains("nobody"));
        assert!(text.contains(
            "edgehook_events_delivered_total{endpoint=\"crm\",type=\"device.online\"} 1"
        ));
        assert!(text
            .contains("edgehook_delivery_latency_seconds_bucket{endpoint=\"crm\",le=\"0.01\"} 0"));
        assert!(text
            .contains("edgehook_delivery_latency_seconds_bucket{endpoint=\"crm\",le=\"0.025\"} 1"));
        assert!(text.contains("edgehook_delivery_latency_seconds_count{endpoint=\"crm\"} 1"));
        m.outbox_committed(Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("edgehook_outbox_commit_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("edgehook_outbox_commit_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("edgehook_outbox_commit_seconds_bucket{le=\"+Inf\"} 1"));
        assert!(
            text.contains("edgehook_outbox_commit_seconds_sum 0.003\n"),
            "{text}"
        );
        assert!(text.contains("edgehook_outbox_commit_seconds_count 1\n"));
    }
}

#[cfg(test)]
mod pinned {
    use super::*;

    /// Every metric family and the label names of its series, as dashboards and alerts use them:
    /// a change here breaks someone's dashboard, so it is deliberate (and said in the README).
    const PINNED: &[(&str, &str)] = &[
        ("edgehook_dead_letters", ""),
        ("edgehook_dead_letters_total", "endpoint"),
        ("edgehook_decode_errors_total", "kind"),
        ("edgehook_delivery_attempts_total", "endpoint,result"),
        ("edgehook_delivery_client_errors_total", "endpoint"),
        ("edgehook_delivery_latency_seconds", "endpoint"),
        ("edgehook_delivery_window_bytes", "endpoint"),
        ("edgehook_delivery_window_events", "endpoint"),
        ("edgehook_device_messages_refused_total", "reason"),
        ("edgehook_devices", ""),
        ("edgehook_endpoint_disabled", "endpoint"),
        ("edgehook_endpoint_dropped_total", "endpoint"),
        ("edgehook_endpoint_pending", "endpoint"),
        ("edgehook_events_created_total", "type"),
        ("edgehook_events_delivered_total", "endpoint,type"),
        ("edgehook_events_filtered_total", "endpoint"),
        ("edgehook_events_unrouted_total", ""),
        ("edgehook_messages_received_total", ""),
        ("edgehook_mqtt_connected", ""),
        ("edgehook_mqtt_connects_total", ""),
        ("edgehook_mqtt_redeliveries_skipped_total", ""),
        ("edgehook_outbox_bytes", ""),
        ("edgehook_outbox_commit_seconds", ""),
        ("edgehook_outbox_depth", ""),
        ("edgehook_outbox_dropped_total", ""),
        ("edgehook_outbox_full", ""),
        ("edgehook_outbox_max_bytes", ""),
        ("edgehook_outbox_oldest_pending_seconds", "endpoint"),
        ("edgehook_outbox_write_failures_total", ""),
        ("edgehook_serial_frame_errors_total", "kind"),
        ("edgehook_serial_port_closures_total", ""),
        ("edgehook_serial_ports_open", ""),
    ];

    /// `name{labels}` → (family, label names), with a histogram's series under its family.
    fn families(text: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let series = l.split(' ').next().unwrap_or("");
                let (name, labels) = series.split_once('{').unwrap_or((series, ""));
                let keys: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                    .filter(|k| *k != "le")
                    .collect();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                (family.to_string(), keys.join(","))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn every_metric_name_and_label_set_is_pinned() {
        let m = Metrics::with_kinds(Kinds {
            decode_errors: &["a"],
            serial_frame_errors: &["a"],
            device_refusals: &["a"],
        });
        m.endpoint("default");
        let got = families(&m.render());
        let want: Vec<(String, String)> = PINNED
            .iter()
            .map(|(f, l)| (f.to_string(), l.to_string()))
            .collect();
        let shown: Vec<String> = got
            .iter()
            .map(|(f, l)| format!("    (\"{f}\", \"{l}\"),"))
            .collect();
        assert_eq!(got, want, "the metrics now:\n{}", shown.join("\n"));
    }
}
