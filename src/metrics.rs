//! The metrics registry. Each stage owns its metrics (`source::metrics`, `device::metrics`,
//! `outbox::metrics`, `deliver::metrics`): it registers them here once at start, with the label
//! values it knows (its own kinds, every event type), and updates them as it works. The
//! exposition is `prometheus-client`'s: the Prometheus text format (0.0.4), or OpenMetrics for
//! a scraper that asks for it ([`Format::negotiate`]). This module knows no stage.

use std::sync::atomic::AtomicU64;

pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

/// A gauge with a fractional value (seconds).
pub type FloatGauge = Gauge<f64, AtomicU64>;
/// Histograms by label set, every one over the same bounds.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The label of a series per endpoint (delivery's, and the outbox's per queue).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Endpoint {
    pub endpoint: String,
}

/// Every name is exposed as `edgehook_<name>`.
const PREFIX: &str = "edgehook";

/// Where the stages register their metrics; encoded at scrape time.
pub struct Registry(prometheus_client::registry::Registry);

impl Default for Registry {
    fn default() -> Registry {
        Registry(prometheus_client::registry::Registry::with_prefix(PREFIX))
    }
}

/// The registry adds the full stop itself.
fn help(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

impl Registry {
    /// A counter exposed as `edgehook_<name>` (`name` ends in `_total`, as it is exposed).
    pub fn counter(&mut self, name: &str, help_text: &str) -> Counter {
        self.counters(name, help_text)
    }

    /// Counters by label set `L`, exposed as `edgehook_<name>` (ending in `_total`).
    pub fn counters<M>(&mut self, name: &str, help_text: &str) -> M
    where
        M: prometheus_client::registry::Metric + Clone + Default,
    {
        let metric = M::default();
        let family = name.strip_suffix("_total").unwrap_or(name);
        self.0.register(family, help(help_text), metric.clone());
        metric
    }

    /// A gauge (or gauges by label set), exposed as `edgehook_<name>`.
    pub fn gauge<M>(&mut self, name: &str, help_text: &str) -> M
    where
        M: prometheus_client::registry::Metric + Clone + Default,
    {
        let metric = M::default();
        self.0.register(name, help(help_text), metric.clone());
        metric
    }

    /// A histogram over `bounds` (seconds), exposed as `edgehook_<name>`.
    pub fn histogram(&mut self, name: &str, help_text: &str, bounds: &[f64]) -> Histogram {
        let metric = Histogram::new(bounds.iter().copied());
        self.0.register(name, help(help_text), metric.clone());
        metric
    }

    /// Histograms by label set, each over the bounds `new` gives.
    pub fn histograms<L>(
        &mut self,
        name: &str,
        help_text: &str,
        new: fn() -> Histogram,
    ) -> HistogramFamily<L>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        let metric = Family::new_with_constructor(new);
        self.0.register(name, help(help_text), metric.clone());
        metric
    }

    /// Everything registered, in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail, and nothing registered fails to encode.
        let _ = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.0)
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &self.0),
        };
        out
    }
}

/// The exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4 (what `curl` and most scrapers get).
    Prometheus,
    /// OpenMetrics 1.0 text (counters' `# TYPE` without `_total`, a final `# EOF`).
    OpenMetrics,
}

impl Format {
    /// The format a request's `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (as Prometheus does by default), else Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a)
                if a.to_ascii_lowercase()
                    .contains("application/openmetrics-text") =>
            {
                Format::OpenMetrics
            }
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Registers `counters` with one series per value of `values` from the start (at 0), so that
/// dashboards see each; a value not listed still gets its series when first counted.
pub fn preset<L, F>(counters: &Family<L, Counter, F>, values: impl IntoIterator<Item = L>)
where
    L: Clone + std::hash::Hash + Eq,
    F: prometheus_client::metrics::family::MetricConstructor<Counter>,
{
    for labels in values {
        drop(counters.get_or_create(&labels));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Kind {
        kind: &'static str,
    }

    #[test]
    fn both_formats_carry_the_same_series() {
        let mut registry = Registry::default();
        let connects = registry.counter("connects_total", "Connections.");
        let faults: Family<Kind, Counter> = registry.counters("faults_total", "Faults, by kind.");
        preset(&faults, [Kind { kind: "a" }, Kind { kind: "b" }]);
        let took = registry.histogram("took_seconds", "Time taken.", &[0.5, 1.0]);
        connects.inc();
        faults.get_or_create(&Kind { kind: "c" }).inc();
        took.observe(0.75);

        let text = registry.encode(Format::Prometheus);
        for line in [
            "# HELP edgehook_connects_total Connections.\n",
            "# TYPE edgehook_connects_total counter\n",
            "edgehook_connects_total 1\n",
            "edgehook_faults_total{kind=\"a\"} 0\n",
            "edgehook_faults_total{kind=\"c\"} 1\n",
            "edgehook_took_seconds_bucket{le=\"0.5\"} 0\n",
            "edgehook_took_seconds_bucket{le=\"1\"} 1\n",
            "edgehook_took_seconds_sum 0.75\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert!(!text.contains("# EOF"));

        let open = registry.encode(Format::OpenMetrics);
        assert!(
            open.contains("# TYPE edgehook_connects counter\n"),
            "{open}"
        );
        assert!(open.contains("edgehook_connects_total 1\n"));
        assert!(open.ends_with("# EOF\n"));
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert!(Format::Prometheus
            .content_type()
            .starts_with("text/plain; version=0.0.4"));
    }
}
