//! Telemetry: [`logging`], systemd's notify protocol ([`systemd`]), health (readiness, below)
//! and the scrape ([`Metrics::encode`]); `crate::control::server` serves them.
//!
//! The metrics are the stages' own (each registers its series in one [`Registry`] at start);
//! [`Metrics`] holds them together for readiness and the scrape. Per-message faults
//! (malformed payloads) are rate-limited through [`crate::fault_log::FaultLog`] so a
//! misbehaving device cannot flood the journal.

pub mod logging;
pub mod systemd;

pub use logging::init_logging;
pub use systemd::notify_systemd;

use std::sync::Arc;

use crate::deliver::metrics::DeliverMetrics;
use crate::device::metrics::DeviceMetrics;
use crate::metrics::{Format, Registry};
use crate::outbox::metrics::OutboxMetrics;
use crate::outbox::Outbox;
use crate::source::metrics::SourceMetrics;

/// Every stage's metrics, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub source: Arc<SourceMetrics>,
    pub device: Arc<DeviceMetrics>,
    pub outbox: Arc<OutboxMetrics>,
    pub deliver: Arc<DeliverMetrics>,
    pub upstream: Arc<crate::upstream::metrics::UpstreamMetrics>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        Metrics {
            source: Arc::new(SourceMetrics::register(&mut registry)),
            device: Arc::new(DeviceMetrics::register(&mut registry)),
            outbox: Arc::new(OutboxMetrics::register(&mut registry)),
            deliver: Arc::new(DeliverMetrics::register(&mut registry)),
            upstream: Arc::new(crate::upstream::metrics::UpstreamMetrics::register(
                &mut registry,
            )),
            registry,
        }
    }
}

impl Metrics {
    /// Ready for work: the broker connected (if MQTT is used), the outbox writable (as the
    /// outbox says: `outbox_writable`) and not full, no endpoint disabled.
    pub fn readiness(&self, outbox_writable: bool) -> Result<(), &'static str> {
        if self.source.mqtt_enabled() && !self.source.mqtt_connected() {
            return Err("mqtt broker not connected");
        }
        if !outbox_writable {
            return Err("outbox not writable");
        }
        if self.outbox.is_full() {
            return Err("outbox full (outbox.max_size)");
        }
        if self.deliver.any_disabled() {
            return Err("an endpoint is disabled after 410 Gone (edgehook outbox status; edgehook outbox enable)");
        }
        Ok(())
    }

    /// The scrape: what is read off the outbox now, then every series in `format`.
    pub fn encode(&self, outbox: &Outbox, format: Format) -> String {
        outbox.observe(&self.outbox);
        self.registry.encode(format)
    }

    #[cfg(test)]
    fn render(&self) -> String {
        self.registry.encode(Format::Prometheus)
    }
}

#[cfg(test)]
mod tests;
