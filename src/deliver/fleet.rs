//! The endpoints delivering now: one [`Dispatcher`] task per endpoint, started, stopped and
//! restarted as the set of endpoints changes while the daemon runs (the control API, SIGHUP),
//! with the outbox's routes changed to match. Nothing queued is touched: an edited endpoint
//! keeps its queue, a stopped one keeps it until it is purged.
//!
//! A dispatcher is stopped by its own token (a child of the daemon's): it lets its in-flight
//! attempts finish and records them, so the next dispatcher of the same endpoint starts from
//! what is on disk, and never sends an event the old one is still sending.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::WebhookConfig;
use super::log::DeliveryLog;
use super::metrics::DeliverMetrics;
use super::{route, Dispatcher, Transport};
use crate::outbox::Outbox;

/// How one endpoint should run.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub config: WebhookConfig,
    /// New events are queued for it. False while it drains before being deleted: it still
    /// delivers what it holds.
    pub queue_new: bool,
}

/// Makes the transport of an endpoint (HTTPS; the tests bring their own).
pub type MakeTransport =
    Arc<dyn Fn(&WebhookConfig) -> anyhow::Result<Arc<dyn Transport>> + Send + Sync>;

/// The running dispatchers.
pub struct Fleet {
    outbox: Outbox,
    log: Arc<DeliveryLog>,
    metrics: Arc<DeliverMetrics>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    transport: MakeTransport,
    running: BTreeMap<String, Running>,
    /// Dispatchers are started. False for a command working on a stopped daemon's store
    /// ([`Fleet::offline`]): what would run is recorded, nothing is sent.
    live: bool,
    /// How long a stopping dispatcher waits for its deliveries in flight (`stop_timeout`).
    stop_within: std::time::Duration,
}

struct Running {
    wanted: Wanted,
    stop: CancellationToken,
    /// The dispatcher's task; none when the fleet is offline.
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// No endpoint running yet; dispatchers will stop with `cancel` and be waited for by
    /// `tracker`.
    pub fn new(
        outbox: Outbox,
        log: Arc<DeliveryLog>,
        metrics: Arc<DeliverMetrics>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Fleet {
        let exchanges = log.exchanges().clone();
        Fleet::with_transport(
            outbox,
            log,
            metrics,
            cancel,
            tracker,
            Arc::new(move |c: &WebhookConfig| {
                let http = super::transport::Http::new(c)?.keeping(exchanges.clone());
                Ok(Arc::new(http) as Arc<dyn Transport>)
            }),
        )
    }

    /// The same, with endpoints sending through what `transport` makes.
    pub fn with_transport(
        outbox: Outbox,
        log: Arc<DeliveryLog>,
        metrics: Arc<DeliverMetrics>,
        cancel: CancellationToken,
        tracker: TaskTracker,
        transport: MakeTransport,
    ) -> Fleet {
        Fleet {
            outbox,
            log,
            metrics,
            cancel,
            tracker,
            transport,
            running: BTreeMap::new(),
            live: true,
            stop_within: super::config::DEFAULT_STOP_TIMEOUT,
        }
    }

    /// Dispatchers stopping wait at most `within` for their deliveries in flight.
    pub fn stopping_within(mut self, within: std::time::Duration) -> Fleet {
        self.stop_within = within;
        self
    }

    /// A fleet that starts no dispatcher: for `edgehook` commands that change the endpoints
    /// of a stopped daemon (its routes and files change; nothing is sent until it runs).
    pub fn offline(outbox: Outbox, log: Arc<DeliveryLog>, metrics: Arc<DeliverMetrics>) -> Fleet {
        Fleet {
            live: false,
            ..Fleet::new(
                outbox,
                log,
                metrics,
                CancellationToken::new(),
                TaskTracker::new(),
            )
        }
    }

    /// Make the running endpoints `wanted` (inactive ones are stopped): start the new ones,
    /// restart those whose settings changed, stop the rest. Each endpoint's transport and
    /// route are made before anything changes, so an endpoint that cannot start leaves
    /// everything as it was. Returns the names started or restarted, and those stopped.
    pub async fn apply(&mut self, wanted: &[Wanted]) -> anyhow::Result<Applied> {
        let mut ready = Vec::new();
        for w in wanted.iter().filter(|w| w.config.active) {
            let unchanged = self
                .running
                .get(&w.config.name)
                .is_some_and(|r| same(&r.wanted, w));
            if !unchanged {
                let transport = (self.transport)(&w.config)?;
                ready.push((w.clone(), route(&w.config)?, transport));
            }
        }
        let mut applied = Applied::default();
        let keep: Vec<&str> = wanted
            .iter()
            .filter(|w| w.config.active)
            .map(|w| w.config.name.as_str())
            .collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !keep.contains(&name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.stop(&name).await;
            self.outbox.unroute(&name);
            applied.stopped.push(name);
        }
        // Endpoints that are inactive and were not running still take nothing new.
        for w in wanted.iter().filter(|w| !w.config.active) {
            self.outbox.unroute(&w.config.name);
        }
        for (w, route, transport) in ready {
            self.stop(&w.config.name).await;
            if w.queue_new {
                self.outbox.route(route)?;
            } else {
                self.outbox.unroute(&w.config.name);
            }
            self.start(w.clone(), transport)?;
            applied.started.push(w.config.name.clone());
        }
        Ok(applied)
    }

    /// Stop `name`'s dispatcher and start it again with the same settings, so that it reads
    /// its persisted facts afresh (paused, disabled). False if it is not running.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<bool> {
        let Some(wanted) = self.running.get(name).map(|r| r.wanted.clone()) else {
            return Ok(false);
        };
        let transport = (self.transport)(&wanted.config)?;
        self.stop(name).await;
        self.start(wanted, transport)?;
        Ok(true)
    }

    /// The endpoints running, by name.
    pub fn running(&self) -> impl Iterator<Item = &Wanted> {
        self.running.values().map(|r| &r.wanted)
    }

    /// Whether `name` runs, draining (taking nothing new) and with an empty queue.
    pub fn drained(&self, name: &str) -> bool {
        self.running.get(name).is_some_and(|r| !r.wanted.queue_new)
            && self
                .outbox
                .queue(name)
                .is_none_or(|q| self.outbox.queue_len(q) == 0)
    }

    fn start(&mut self, wanted: Wanted, transport: Arc<dyn Transport>) -> anyhow::Result<()> {
        let name = wanted.config.name.clone();
        if !self.live {
            let stop = CancellationToken::new();
            self.running.insert(
                name,
                Running {
                    wanted,
                    stop,
                    done: None,
                },
            );
            return Ok(());
        }
        let dispatcher = Dispatcher::with_transport(
            &wanted.config,
            self.outbox.clone(),
            self.log.clone(),
            self.metrics.endpoint(&name),
            transport,
        )?
        .stopping_within(self.stop_within);
        let stop = self.cancel.child_token();
        let done = Some(self.tracker.spawn(dispatcher.run(stop.clone())));
        self.running.insert(name, Running { wanted, stop, done });
        Ok(())
    }

    /// Stop `name`'s dispatcher and wait for its in-flight attempts.
    async fn stop(&mut self, name: &str) {
        if let Some(running) = self.running.remove(name) {
            running.stop.cancel();
            if let Some(done) = running.done {
                let _ = done.await;
            }
            if let Some(q) = self.outbox.queue(name) {
                self.outbox.set_draining(q, false);
            }
            let metrics = self.metrics.endpoint(name);
            metrics.set_disabled(false);
            metrics.set_paused(false);
        }
    }
}

/// What [`Fleet::apply`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
}

/// Whether two wishes for an endpoint are the same (its settings serialised, secrets
/// included, compared).
fn same(a: &Wanted, b: &Wanted) -> bool {
    a.queue_new == b.queue_new
        && serde_json::to_value(&a.config).ok() == serde_json::to_value(&b.config).ok()
}
