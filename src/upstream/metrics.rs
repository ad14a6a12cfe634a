//! What the ways in count: commands taken by how they came and what became of them, requests
//! (and pull answers) refused by the gate by reason, and polls that failed.

use crate::metrics::{preset, Counter, EncodeLabelSet, Family, Registry};

use super::gate::Unauthorized;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Taken {
    pub via: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub via: &'static str,
    pub reason: &'static str,
}

pub struct UpstreamMetrics {
    commands: Family<Taken, Counter>,
    refused: Family<RefusalLabels, Counter>,
    poll_failures: Counter,
}

impl UpstreamMetrics {
    pub fn register(r: &mut Registry) -> UpstreamMetrics {
        let m = UpstreamMetrics {
            commands: r.counters(
                "upstream_commands_total",
                "Commands from upstream (via push or pull) by the status they were answered with.",
            ),
            refused: r.counters(
                "upstream_refused_total",
                "Pushed requests and pull answers refused before reading: unsigned, stale, bad_signature, replayed, busy.",
            ),
            poll_failures: r.counter(
                "upstream_poll_failures_total",
                "Pull-mode polls that got no usable answer (retried after a backoff).",
            ),
        };
        for via in ["push", "pull"] {
            preset(
                &m.refused,
                Unauthorized::ALL.map(|u| RefusalLabels {
                    via,
                    reason: u.as_str(),
                }),
            );
        }
        m
    }

    pub fn taken(&self, via: &'static str, status: u16) {
        self.commands.get_or_create(&Taken { via, status }).inc();
    }

    pub fn refused(&self, via: &'static str, why: Unauthorized) {
        self.refused
            .get_or_create(&RefusalLabels {
                via,
                reason: why.as_str(),
            })
            .inc();
    }

    pub fn poll_failed(&self) {
        self.poll_failures.inc();
    }
}
