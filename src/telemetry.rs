//! Telemetry: logs, counters, and the localhost `/healthz` + `/metrics` endpoint.
//!
//! Logs go to stderr, one line per fact with structured fields. Under systemd (`JOURNAL_STREAM`
//! set) lines carry no timestamp or colour, since journald adds its own, and start with their
//! syslog priority (`<4>` for a warning) instead of a level word, which journald records. Per-message faults
//! (malformed payloads) are rate-limited through [`FaultLog`] so a misbehaving device cannot
//! flood the journal.
//!
//! Metrics are plain atomics rendered as Prometheus text; there is no registry to configure.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::event::EventType;
use crate::outbox::Outbox;
use crate::source::serial::frame::FrameError;

/// Set up the global tracing subscriber. `EDGEHOOK_LOG` (or `RUST_LOG`) selects levels.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("EDGEHOOK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(format!("rumqttd=off,sled=warn,{filter}"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false)
            .with_ansi(false)
            .with_target(false);
        builder.event_format(JournalPriority(format)).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Under journald: each line starts with its syslog priority (`<3>` error, `<4>` warning,
/// `<6>` info, `<7>` debug), which journald strips and records, so `journalctl -p warning` works.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

const EVENT_TYPES: [EventType; EventType::ALL.len()] = EventType::ALL;

/// Decode-error kinds, see [`crate::source::DecodeError::kind`].
const DECODE_ERRORS: [&str; 5] = [
    "oversize",
    "not_json",
    "not_object",
    "bad_status",
    "bad_device_id",
];

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
    serial_frame_errors: [AtomicU64; FrameError::KINDS.len()],
    messages_received: AtomicU64,
    decode_errors: [AtomicU64; 5],
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
    /// Messages the device registry skipped, by why (`device::Refused::KINDS`).
    device_refusals: [AtomicU64; 2],
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
    /// A message skipped for the registry's bounds (`kind` from `device::Refused::KINDS`).
    pub fn device_message_refused(&self, kind: &str) {
        if let Some(i) = crate::device::Refused::KINDS
            .iter()
            .position(|k| *k == kind)
        {
            self.device_refusals[i].fetch_add(1, Ordering::Relaxed);
        }
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
    /// Ready for work: the broker connected (if MQTT is used) and the outbox writable.
    pub fn readiness(&self, outbox: &Outbox) -> Result<(), &'static str> {
        if self.mqtt_enabled.load(Ordering::Relaxed) && !self.mqtt_connected() {
            return Err("mqtt broker not connected");
        }
        if !outbox.is_writable() {
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
        if let Some(i) = FrameError::KINDS.iter().position(|k| *k == kind) {
            self.serial_frame_errors[i].fetch_add(1, Ordering::Relaxed);
        }
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
        if let Some(i) = DECODE_ERRORS.iter().position(|k| *k == kind) {
            self.decode_errors[i].fetch_add(1, Ordering::Relaxed);
        }
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
    /// Refresh the gauges read from the outbox itself (at scrape time).
    pub fn observe_outbox(&self, outbox: &Outbox) {
        self.set_outbox_depth(outbox.len() as u64);
        self.outbox_bytes.store(outbox.bytes(), Ordering::Relaxed);
        self.dead_letters_kept
            .store(outbox.dead_len() as u64, Ordering::Relaxed);
        for (queue, endpoint, _) in outbox.queues() {
            let m = self.endpoint(endpoint);
            m.depth
                .store(outbox.queue_len(queue) as u64, Ordering::Relaxed);
            let age = outbox
                .oldest(queue)
                .ok()
                .flatten()
                .and_then(|r| crate::deliver::created_at(&r.id))
                .and_then(|t| t.elapsed().ok())
                .map_or(0, |d| d.as_millis() as u64);
            m.oldest_ms.store(age, Ordering::Relaxed);
        }
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
            &by("kind", &DECODE_ERRORS, &self.decode_errors),
        );
        metric(
            "serial_frame_errors_total",
            "counter",
            "Serial frames or bytes skipped, by fault.",
            &by("kind", &FrameError::KINDS, &self.serial_frame_errors),
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
            &by("reason", &crate::device::Refused::KINDS, &self.device_refusals),
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

/// systemd integration (a no-op outside systemd, i.e. without `NOTIFY_SOCKET`): `READY=1` as
/// soon as the daemon runs (the outbox open, every stage started), whatever its health: READY
/// means "running", and a broker that is down at boot or an endpoint disabled by a 410 must not
/// make systemd kill and restart a daemon that is doing all it can. Health is told in `STATUS=`
/// (updated when it changes; the same reason `/healthz` gives), in the log and in the metrics.
/// Then `WATCHDOG=1` at half of `WatchdogSec` for as long as the runtime runs, and `STOPPING=1`
/// when shutdown begins.
pub async fn notify_systemd(metrics: Arc<Metrics>, outbox: Outbox, cancel: CancellationToken) {
    use sd_notify::NotifyState;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let send = |state: &[NotifyState]| {
        if let Err(e) = sd_notify::notify(state) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    };
    let status = || match metrics.readiness(&outbox) {
        Ok(()) => "running; healthy".to_string(),
        Err(why) => format!("running; degraded: {why}"),
    };
    let mut told = status();
    send(&[NotifyState::Ready, NotifyState::Status(&told)]);
    let watchdog = sd_notify::watchdog_enabled().map(|w| w / 2);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_ping = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = status();
        if now != told {
            send(&[NotifyState::Status(&now)]);
            told = now;
        }
        if let Some(every) = watchdog {
            if last_ping.elapsed() >= every {
                send(&[NotifyState::Watchdog]);
                last_ping = Instant::now();
            }
        }
    }
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining and flushing the outbox"),
    ]);
}

/// Connections the local listener serves at once; more wait in the kernel's backlog, using
/// no file descriptor of the daemon's.
const MAX_CONNECTIONS: usize = 32;
/// A connection must send its request headers this soon (and, kept alive, its next ones).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer than this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serve `GET /healthz` and `GET /metrics` on `listen` (loopback, checked by config) until
/// cancelled. Bounded so that no local client can starve the daemon: at most
/// [`MAX_CONNECTIONS`] at once, each closed if its headers take longer than
/// [`HEADER_TIMEOUT`] or it lives past [`CONNECTION_LIFETIME`]; an accept that fails (out of
/// file descriptors) is retried after a growing pause, not in a spin.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    outbox: Outbox,
    cancel: CancellationToken,
) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot listen for /healthz and /metrics; continuing without them");
            return;
        }
    };
    tracing::info!(%listen, "health and metrics listening");
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut pause = Duration::from_millis(50);
    let mut failures = 0u64;
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    pause = Duration::from_millis(50);
                    stream
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "health and metrics listener cannot accept; pausing");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = answer(req.uri().path(), &metrics, &outbox);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

fn answer(path: &str, metrics: &Metrics, outbox: &Outbox) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => {
            metrics.observe_outbox(outbox);
            (StatusCode::OK, metrics.render())
        }
        "/healthz" => match metrics.readiness(outbox) {
            Ok(()) => (StatusCode::OK, "ok\n".to_string()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => (StatusCode::NOT_FOUND, "try /healthz or /metrics\n".into()),
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
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
        let m = Metrics::default();
        m.decode_error("not_json");
        m.endpoint("crm")
            .delivered("device.online", Duration::from_millis(20));
        let text = m.render();
        assert!(
            text.contains("edgehook_decode_errors_total{kind=\"not_json\"} 1"),
            "{text}"
        );
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
