//! What the device stage counts: the devices it knows, and the messages its bounds refused, by
//! reason (every [`OverLimit`] kind exposed from the start, at 0).

use crate::metrics::{preset, Counter, EncodeLabelSet, Family, Gauge, Registry};

use super::{IgnoredAnswer, OverLimit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

pub struct DeviceMetrics {
    devices: Gauge,
    refused: Family<Reason, Counter>,
    answers_ignored: Family<Reason, Counter>,
}

impl DeviceMetrics {
    pub fn register(r: &mut Registry) -> DeviceMetrics {
        let m = DeviceMetrics {
            devices: r.gauge(
                "devices",
                "Devices the registry knows (at most devices.max_devices).",
            ),
            refused: r.counters(
                "device_messages_refused_total",
                "Messages skipped for the registry's bounds: from a new device past devices.max_devices, with fields past devices.max_fields, or values past devices.max_state_bytes.",
            ),
            answers_ignored: r.counters(
                "action_answers_ignored_total",
                "Devices' answers to actions that made no event: late (the action was done already: a second answer, or one after its timeout) or unknown (no such action of the device's).",
            ),
        };
        preset(&m.refused, OverLimit::KINDS.map(|reason| Reason { reason }));
        preset(
            &m.answers_ignored,
            IgnoredAnswer::KINDS.map(|reason| Reason { reason }),
        );
        m
    }

    pub fn set_devices(&self, n: usize) {
        self.devices.set(n as i64);
    }

    /// An answer to an action that made no event.
    pub fn answer_ignored(&self, why: IgnoredAnswer) {
        self.answers_ignored
            .get_or_create(&Reason { reason: why.kind() })
            .inc();
    }

    /// A message skipped for the registry's bounds.
    pub fn refused(&self, why: OverLimit) {
        self.refused
            .get_or_create(&Reason { reason: why.kind() })
            .inc();
    }
}
