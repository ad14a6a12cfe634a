//! What the sources count: connections, messages, and what they could not decode, by kind
//! (every kind the sources name is exposed from the start, at 0).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::{preset, Counter, EncodeLabelSet, Family, Gauge, Registry};

/// The `kind` of a decode fault.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

pub struct SourceMetrics {
    /// Whether an MQTT source runs at all (a serial-only gateway needs no broker): not exposed,
    /// read by readiness.
    mqtt_enabled: AtomicBool,
    mqtt_connected: Gauge,
    mqtt_connects: Counter,
    mqtt_redeliveries: Counter,
    messages_received: Counter,
    decode_errors: Family<Kind, Counter>,
    serial_ports_open: Gauge,
    serial_port_closures: Counter,
    serial_frame_errors: Family<Kind, Counter>,
    modbus_buses_open: Gauge,
    modbus_bus_closures: Counter,
    modbus_requests: Family<Kind, Counter>,
}

impl SourceMetrics {
    pub fn register(r: &mut Registry) -> SourceMetrics {
        let kinds =
            |all: &[&'static str]| all.iter().map(|&kind| Kind { kind }).collect::<Vec<_>>();
        let m = SourceMetrics {
            mqtt_enabled: AtomicBool::new(false),
            mqtt_connected: r.gauge("mqtt_connected", "1 while connected to the broker."),
            mqtt_connects: r.counter(
                "mqtt_connects_total",
                "Successful broker connections (first one included).",
            ),
            messages_received: r.counter(
                "messages_received_total",
                "Device messages received from all sources.",
            ),
            decode_errors: r.counters(
                "decode_errors_total",
                "Messages skipped because they could not be decoded.",
            ),
            serial_frame_errors: r.counters(
                "serial_frame_errors_total",
                "Serial frames or bytes skipped, by fault.",
            ),
            serial_ports_open: r.gauge("serial_ports_open", "Serial ports open now."),
            serial_port_closures: r.counter(
                "serial_port_closures_total",
                "Serial ports that closed (unplugged, failed) and were reopened or are being retried.",
            ),
            modbus_buses_open: r.gauge("modbus_buses_open", "Modbus buses (RTU lines, TCP connections) open now."),
            modbus_bus_closures: r.counter(
                "modbus_bus_closures_total",
                "Modbus buses that closed (unplugged, connection lost) and were reopened or are being retried.",
            ),
            modbus_requests: r.counters(
                "modbus_requests_total",
                "Modbus requests, by outcome: ok, timeout, crc, exception, mismatch (an answer for another unit, function or length), io.",
            ),
            mqtt_redeliveries: r.counter(
                "mqtt_redeliveries_skipped_total",
                "Messages the broker redelivered after a lost connection that edgehook had already applied: acknowledged, not applied again.",
            ),
        };
        preset(&m.decode_errors, kinds(&super::DecodeError::KINDS));
        preset(
            &m.serial_frame_errors,
            kinds(&super::serial::frame::FrameError::KINDS),
        );
        preset(
            &m.modbus_requests,
            kinds(&["ok", "timeout", "crc", "exception", "mismatch", "io"]),
        );
        m
    }

    pub fn set_mqtt_enabled(&self, enabled: bool) {
        self.mqtt_enabled.store(enabled, Ordering::Relaxed);
    }
    pub fn mqtt_enabled(&self) -> bool {
        self.mqtt_enabled.load(Ordering::Relaxed)
    }
    pub fn set_mqtt_connected(&self, up: bool) {
        if up {
            self.mqtt_connects.inc();
        }
        self.mqtt_connected.set(up as i64);
    }
    pub fn mqtt_connected(&self) -> bool {
        self.mqtt_connected.get() == 1
    }
    /// A broker redelivery of a message already applied, acknowledged without applying it.
    pub fn mqtt_redelivery_recognised(&self) {
        self.mqtt_redeliveries.inc();
    }
    pub fn message_received(&self) {
        self.messages_received.inc();
    }
    pub fn decode_error(&self, kind: &'static str) {
        self.decode_errors.get_or_create(&Kind { kind }).inc();
    }
    pub fn serial_port_opened(&self) {
        self.serial_ports_open.inc();
    }
    /// Serial ports open now.
    pub fn serial_ports_open(&self) -> i64 {
        self.serial_ports_open.get()
    }
    pub fn serial_port_closed(&self) {
        self.serial_ports_open.dec();
        self.serial_port_closures.inc();
    }
    pub fn serial_frame_error(&self, kind: &'static str) {
        self.serial_frame_errors.get_or_create(&Kind { kind }).inc();
    }
    pub fn modbus_bus_opened(&self) {
        self.modbus_buses_open.inc();
    }
    /// Modbus buses open now.
    pub fn modbus_buses_open(&self) -> i64 {
        self.modbus_buses_open.get()
    }
    pub fn modbus_bus_closed(&self) {
        self.modbus_buses_open.dec();
        self.modbus_bus_closures.inc();
    }
    pub fn modbus_request(&self, kind: &'static str) {
        self.modbus_requests.get_or_create(&Kind { kind }).inc();
    }
}
