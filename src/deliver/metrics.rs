//! What delivery counts, per endpoint: events delivered (by type), attempts by result, answers
//! by status, dead letters, whether the endpoint is disabled or paused, what it holds in memory,
//! the latency from an event's creation to its 2xx, and the last error (for the control API).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::event::EventType;
use crate::metrics::{
    Counter, EncodeLabelSet, Endpoint, Family, Gauge, Histogram, HistogramFamily, Registry,
};

/// Delivery-latency histogram bucket bounds, seconds (event creation → 2xx).
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointType {
    pub endpoint: String,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointResult {
    pub endpoint: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub status: u16,
}

/// Delivery's metric families; [`DeliverMetrics::endpoint`] gives one endpoint's series.
pub struct DeliverMetrics {
    delivered: Family<EndpointType, Counter>,
    filtered: Family<Endpoint, Counter>,
    attempts: Family<EndpointResult, Counter>,
    responses: Family<EndpointStatus, Counter>,
    client_errors: Family<Endpoint, Counter>,
    dead_letters: Family<Endpoint, Counter>,
    disabled: Family<Endpoint, Gauge>,
    paused: Family<Endpoint, Gauge>,
    window_events: Family<Endpoint, Gauge>,
    window_bytes: Family<Endpoint, Gauge>,
    latency: HistogramFamily<Endpoint>,
    /// Every endpoint's series, in the order they were first asked for.
    endpoints: Mutex<Vec<Arc<EndpointMetrics>>>,
}

/// One endpoint's series, resolved once.
pub struct EndpointMetrics {
    name: String,
    /// By [`EventType::ALL`] order.
    delivered: Vec<Counter>,
    success: Counter,
    http_error: Counter,
    network_error: Counter,
    client_errors: Counter,
    responses: Family<EndpointStatus, Counter>,
    filtered: Counter,
    dead_letters: Counter,
    disabled: Gauge,
    paused: Gauge,
    window_events: Gauge,
    window_bytes: Gauge,
    latency: Histogram,
    /// The last failed attempt's error, and the last delivery's latency, for the API.
    last: Mutex<LastSeen>,
}

/// What the control API shows of an endpoint's latest attempts.
#[derive(Debug, Clone, Default)]
pub struct LastSeen {
    /// The last failed attempt's error (an HTTP status with the answer's start, or the
    /// network error).
    pub error: Option<String>,
    /// Creation to 2xx of the last event delivered.
    pub latency: Option<Duration>,
}

impl DeliverMetrics {
    pub fn register(r: &mut Registry) -> DeliverMetrics {
        DeliverMetrics {
            delivered: r.counters("events_delivered_total", "Events the receiver accepted (2xx)."),
            filtered: r.counters(
                "events_filtered_total",
                "Queued events dropped because the endpoint no longer subscribes to their type.",
            ),
            attempts: r.counters("delivery_attempts_total", "Delivery attempts by result."),
            responses: r.counters(
                "delivery_responses_total",
                "Receiver answers by HTTP status code.",
            ),
            client_errors: r.counters(
                "delivery_client_errors_total",
                "Attempts refused with a 4xx other than 408/429 (retried all the same: check the endpoint's configuration).",
            ),
            dead_letters: r.counters(
                "dead_letters_total",
                "Events given up on (max_attempts / max_age) and kept as dead letters since start.",
            ),
            disabled: r.gauge(
                "endpoint_disabled",
                "1 after the receiver answered 410 Gone: nothing is sent until `edgehook outbox enable`.",
            ),
            paused: r.gauge(
                "endpoint_paused",
                "1 while an operator has paused the endpoint: nothing is sent; new events are still queued.",
            ),
            window_events: r.gauge(
                "delivery_window_events",
                "Events delivery holds in memory for the endpoint (at most webhook.window).",
            ),
            window_bytes: r.gauge(
                "delivery_window_bytes",
                "Bytes of events delivery holds in memory for the endpoint (at most webhook.window_bytes, or one event).",
            ),
            latency: r.histograms(
                "delivery_latency_seconds",
                "Event creation to receiver 2xx.",
                || Histogram::new(LATENCY_BUCKETS),
            ),
            endpoints: Mutex::new(Vec::new()),
        }
    }

    /// Endpoint `name`'s series, made (at 0) on first use.
    pub fn endpoint(&self, name: &str) -> Arc<EndpointMetrics> {
        let mut all = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = all.iter().find(|e| e.name == name) {
            return e.clone();
        }
        let endpoint = Endpoint {
            endpoint: name.to_string(),
        };
        let result = |result| {
            self.attempts.get_or_create_owned(&EndpointResult {
                endpoint: name.to_string(),
                result,
            })
        };
        let e = Arc::new(EndpointMetrics {
            name: name.to_string(),
            delivered: EventType::ALL
                .iter()
                .map(|t| {
                    self.delivered.get_or_create_owned(&EndpointType {
                        endpoint: name.to_string(),
                        r#type: t.as_str(),
                    })
                })
                .collect(),
            success: result("success"),
            http_error: result("http_error"),
            network_error: result("network_error"),
            client_errors: self.client_errors.get_or_create_owned(&endpoint),
            responses: self.responses.clone(),
            filtered: self.filtered.get_or_create_owned(&endpoint),
            dead_letters: self.dead_letters.get_or_create_owned(&endpoint),
            disabled: self.disabled.get_or_create_owned(&endpoint),
            paused: self.paused.get_or_create_owned(&endpoint),
            window_events: self.window_events.get_or_create_owned(&endpoint),
            window_bytes: self.window_bytes.get_or_create_owned(&endpoint),
            latency: self.latency.get_or_create_owned(&endpoint),
            last: Mutex::new(LastSeen::default()),
        });
        all.push(e.clone());
        e
    }

    /// Whether some endpoint is disabled (after a 410).
    pub fn any_disabled(&self) -> bool {
        let all = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().any(|e| e.disabled.get() == 1)
    }
}

impl EndpointMetrics {
    /// The receiver answered with `status`.
    pub fn response(&self, status: u16) {
        self.responses
            .get_or_create(&EndpointStatus {
                endpoint: self.name.clone(),
                status,
            })
            .inc();
    }
    pub fn delivered(&self, kind: &str, latency: Duration) {
        if let Some(i) = EventType::ALL.iter().position(|t| t.as_str() == kind) {
            self.delivered[i].inc();
        }
        self.success.inc();
        self.latency.observe(latency.as_secs_f64());
        self.last_seen_mut().latency = Some(latency);
    }
    /// An attempt failed with `error` (what the delivery log says).
    pub fn failed_with(&self, error: &str) {
        self.last_seen_mut().error = Some(error.to_string());
    }
    /// The last error and latency seen.
    pub fn last_seen(&self) -> LastSeen {
        self.last_seen_mut().clone()
    }
    fn last_seen_mut(&self) -> std::sync::MutexGuard<'_, LastSeen> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn attempt_failed(&self, http_status: Option<u16>) {
        if http_status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429) {
            self.client_errors.inc();
        }
        match http_status {
            Some(_) => &self.http_error,
            None => &self.network_error,
        }
        .inc();
    }
    /// A queued event this endpoint no longer subscribes to (its `events` changed).
    pub fn filtered(&self) {
        self.filtered.inc();
    }
    /// Count a dead letter; returns how many since start.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_letters.inc() + 1
    }
    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.set(disabled as i64);
    }
    pub fn set_paused(&self, paused: bool) {
        self.paused.set(paused as i64);
    }
    /// What delivery holds in memory now: events and their bytes.
    pub fn set_held(&self, events: usize, bytes: usize) {
        self.window_events.set(events as i64);
        self.window_bytes.set(bytes as i64);
    }
}
