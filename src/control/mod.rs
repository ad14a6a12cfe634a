//! The control plane: the local server ([`server`]: `/healthz`, `/metrics`, the versioned
//! JSON API under `/v1` ([`routes`], [`http`]), its OpenAPI document, and the web console), who may call it
//! ([`auth`]), and the endpoints managed while the daemon runs ([`endpoints`], applied to the
//! running dispatchers by `deliver::fleet`).
//!
//! [`Control`] is what the API acts on. Every change to the endpoints goes through one lock,
//! in this order: checked ([`endpoints::Endpoints::plan`]), written to the state directory,
//! applied to the outbox's routes and the dispatchers, logged with what changed (never a
//! secret). A change that cannot be applied is undone on disk, so a restart finds what runs.

pub mod auth;
pub mod commands;
pub mod endpoints;
pub mod http;
pub mod pull;
pub mod push;
pub mod routes;
pub mod server;
pub mod slots;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::deliver::config::WebhookConfig;
use crate::deliver::fleet::Fleet;
use crate::device::config::WorkspaceConfig;
use crate::outbox::{Outbox, Paused};
use crate::secret::Secret;
use crate::telemetry::Metrics;
use endpoints::{ApiError, Change, Endpoints, Pending};

/// How long an operator's change waits while the outbox is being reopened after a storage
/// error before it is refused: the writer tries to reopen at most 5 s apart.
const OUTBOX_WAIT: Duration = Duration::from_secs(10);

/// What the gateway says of itself.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub id: String,
    pub started: Instant,
    /// `host:port` of the broker, if MQTT is used.
    pub broker: Option<String>,
    pub serial_ports: Vec<String>,
    /// The Modbus buses (their paths, or `tcp://host:port`).
    pub modbus_buses: Vec<String>,
}

impl Gateway {
    /// The gateway `config` describes, started now.
    pub fn of(config: &crate::config::Config) -> Gateway {
        Gateway {
            id: config.gateway_id.clone(),
            started: Instant::now(),
            broker: (!config.mqtt.all_subscriptions().is_empty())
                .then(|| format!("{}:{}", config.mqtt.host, config.mqtt.port)),
            serial_ports: config
                .serial_ports
                .iter()
                .map(|p| p.path.display().to_string())
                .collect(),
            modbus_buses: config.modbus.buses.iter().map(|b| b.name()).collect(),
        }
    }
}

/// Why a stopped daemon's store could not be opened for a command.
#[derive(Debug)]
pub enum OfflineError {
    /// Another process holds it: the daemon runs.
    InUse,
    Failed(String),
}

/// The daemon as the API sees it and changes it.
pub struct Control {
    pub gateway: Gateway,
    pub outbox: Outbox,
    pub metrics: Arc<Metrics>,
    pub state_dir: PathBuf,
    pub token: Secret,
    /// The workspaces' configuration (their bound sensors), as last loaded.
    pub workspaces: std::sync::Mutex<Vec<WorkspaceConfig>>,
    /// The endpoints and their dispatchers, changed together.
    endpoints: Mutex<(Endpoints, Fleet)>,
    /// The delivery log, read and followed by the API.
    pub log: Arc<crate::deliver::log::DeliveryLog>,
    /// Device classes (compiled as the device stage compiles them), to name each device's
    /// when the state comes from the store.
    pub classes: std::sync::Mutex<Vec<crate::device::DeviceClass>>,
    /// The running device stage, asked for what it knows now; none for a stopped daemon
    /// (then the store answers).
    device_stage: Option<tokio::sync::mpsc::Sender<crate::device::Request>>,
    /// Turns for building a large answer (a page of devices): see [`LARGE_READS`].
    pub large_reads: tokio::sync::Semaphore,
}

/// How many large answers (pages of devices, up to `device::PAGE_BYTES` each) are built at
/// once; the other requests wait their turn, so that many clients reading at once cost what
/// two do.
pub const LARGE_READS: usize = 2;

impl Control {
    #[allow(clippy::too_many_arguments)]
    /// The API of the gateway `config` describes (its identity, workspaces and device
    /// classes), its store in `state_dir`.
    pub fn new(
        config: &crate::config::Config,
        outbox: Outbox,
        metrics: Arc<Metrics>,
        state_dir: PathBuf,
        token: Secret,
        endpoints: Endpoints,
        fleet: Fleet,
        log: Arc<crate::deliver::log::DeliveryLog>,
    ) -> Control {
        Control {
            gateway: Gateway::of(config),
            outbox,
            metrics,
            state_dir,
            token,
            workspaces: std::sync::Mutex::new(config.workspaces.clone()),
            large_reads: tokio::sync::Semaphore::new(LARGE_READS),
            endpoints: Mutex::new((endpoints, fleet)),
            log,
            classes: std::sync::Mutex::new(compile(&config.device_classes)),
            device_stage: None,
        }
    }

    /// Ask the running device stage (through `requests`) for devices and workspaces.
    pub fn with_device_stage(
        mut self,
        requests: tokio::sync::mpsc::Sender<crate::device::Request>,
    ) -> Control {
        self.device_stage = Some(requests);
        self
    }

    /// What the device stage knows now, or, when it cannot say within a second (stopped, or
    /// busy behind a slow disk), none: then the store answers.
    pub async fn live_devices(
        &self,
        selection: crate::device::Selection,
    ) -> Option<crate::device::Snapshot> {
        let stage = self.device_stage.as_ref()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        stage
            .try_send(crate::device::Request::Snapshot(selection, reply))
            .ok()?;
        tokio::time::timeout(Duration::from_secs(1), answer)
            .await
            .ok()?
            .ok()
    }

    /// Ask the running device stage to act on one device, and wait until what it did is
    /// durable (`make` builds the request around the reply). 404 for a device it does not
    /// know; 409 when the daemon is stopped (only the running device stage changes devices).
    async fn device_change(
        &self,
        device_id: &str,
        make: impl FnOnce(tokio::sync::oneshot::Sender<bool>) -> crate::device::Request,
    ) -> Result<(), ApiError> {
        let Some(stage) = self.device_stage.as_ref() else {
            return Err(ApiError {
                status: 409,
                field: None,
                message: "the daemon is not running: devices are changed by the running daemon (start it first)".into(),
            });
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        stage
            .send(make(done))
            .await
            .map_err(|_| ApiError::new_internal("the device stage has stopped".into()))?;
        match answer.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError {
                status: 404,
                field: None,
                message: format!("no device `{device_id}`"),
            }),
            Err(_) => Err(ApiError::new_internal(
                "the change was not made durable (the daemon is stopping, or the disk refuses writes)".into(),
            )),
        }
    }

    /// The running device stage, or 409 for a stopped daemon.
    fn stage(&self) -> Result<&tokio::sync::mpsc::Sender<crate::device::Request>, ApiError> {
        self.device_stage.as_ref().ok_or_else(|| ApiError {
            status: 409,
            field: None,
            message: "the daemon is not running: actions are taken by the running daemon (start it first)".into(),
        })
    }

    /// Ask the device stage `make(reply)` and wait for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> crate::device::Request,
    ) -> Result<T, ApiError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.stage()?
            .send(make(done))
            .await
            .map_err(|_| ApiError::new_internal("the device stage has stopped".into()))?;
        answer.await.map_err(|_| {
            ApiError::new_internal(
                "not made durable (the daemon is stopping, or the disk refuses writes)".into(),
            )
        })
    }

    /// Submit an action (answered once what became of it is durable).
    pub async fn act(
        &self,
        request: crate::device::ActionRequest,
    ) -> Result<crate::device::ActionAnswer, ApiError> {
        self.ask(|done| crate::device::Request::Act { request, done })
            .await
    }

    /// The action `id` as it is now.
    pub async fn action(&self, id: &str) -> Result<crate::device::action::Action, ApiError> {
        let id_owned = id.to_string();
        self.ask(|done| crate::device::Request::Action { id: id_owned, done })
            .await?
            .ok_or_else(|| ApiError {
                status: 404,
                field: None,
                message: format!("no action `{id}` (unknown, or done and past its deadline)"),
            })
    }

    /// Cancel action `id` while it has not been sent.
    pub async fn cancel_action(&self, id: &str) -> Result<crate::device::action::Action, ApiError> {
        let id_owned = id.to_string();
        match self
            .ask(|done| crate::device::Request::Cancel { id: id_owned, done })
            .await?
        {
            None => Err(ApiError {
                status: 404,
                field: None,
                message: format!("no action `{id}`"),
            }),
            Some(Err(why)) => Err(ApiError {
                status: 409,
                field: None,
                message: format!("action `{id}` cannot be cancelled: {why}"),
            }),
            Some(Ok(a)) => Ok(a),
        }
    }

    /// Forget a device: `device.unregistered`, its state deleted (it is registered anew if it
    /// is heard from again).
    pub async fn forget_device(&self, device_id: &str) -> Result<(), ApiError> {
        self.device_change(device_id, |done| crate::device::Request::Forget {
            device_id: device_id.to_string(),
            done,
        })
        .await
    }

    /// Set (or clear, `None`) the sync value desired for one device.
    pub async fn desire(
        &self,
        device_id: &str,
        value: Option<serde_json::Value>,
    ) -> Result<(), ApiError> {
        self.device_change(device_id, |done| crate::device::Request::Desire {
            device_id: device_id.to_string(),
            value,
            done,
        })
        .await
    }

    /// The control of a stopped daemon whose configuration is `config` and whose store is in
    /// `state_dir`, for the `edgehook` commands: the same views and the same changes as the
    /// running daemon's API, over its store. No dispatcher runs, so nothing is sent: a change
    /// is written (flushed to the store, or to `endpoints.json`) for the daemon to find at its
    /// next start. Fails with [`OfflineError::InUse`] while the daemon holds the store.
    pub fn offline(
        config: &crate::config::Config,
        state_dir: &Path,
    ) -> Result<Control, OfflineError> {
        let failed = |e: &dyn std::fmt::Display| OfflineError::Failed(e.to_string());
        let file = config.all_endpoints().into_iter().cloned().collect();
        let (endpoints, conflict) = Endpoints::load(state_dir, file).map_err(|e| failed(&e))?;
        if let Some(conflict) = conflict {
            eprintln!("warning: {conflict}");
        }
        // Queues in the order the daemon makes them; nothing is written, so they want nothing.
        let routes = endpoints
            .wanted()
            .iter()
            .filter(|w| w.config.active && w.queue_new)
            .map(|w| crate::outbox::QueueFilter {
                endpoint: w.config.name.clone(),
                wants: Arc::new(|_: &str| false),
            })
            .collect();
        let outbox = Outbox::open(state_dir, 1 << 20, routes).map_err(|e| {
            let text = e.to_string();
            if text.contains("lock")
                || text.contains("WouldBlock")
                || text.contains("temporarily unavailable")
            {
                OfflineError::InUse
            } else {
                failed(&text)
            }
        })?;
        let metrics = Arc::new(Metrics::default());
        metrics.outbox.set_max_bytes(config.outbox.max_size);
        let log = Arc::new(crate::deliver::log::DeliveryLog::new(
            state_dir,
            config.outbox.delivery_log,
        ));
        let fleet = Fleet::offline(outbox.clone(), log.clone(), metrics.deliver.clone());
        let token = auth::read_token(state_dir)
            .ok()
            .flatten()
            .unwrap_or_default();
        Ok(Control::new(
            config,
            outbox,
            metrics,
            state_dir.to_path_buf(),
            token,
            endpoints,
            fleet,
            log,
        ))
    }

    /// Start every endpoint as the file and the API's store say.
    pub async fn start(&self) -> anyhow::Result<()> {
        let mut guard = self.endpoints.lock().await;
        let (endpoints, fleet) = &mut *guard;
        fleet.apply(&endpoints.wanted()).await?;
        Ok(())
    }

    /// Every endpoint with where it is from and whether it drains before its deletion.
    pub async fn endpoints(&self) -> Vec<(WebhookConfig, endpoints::Source, bool)> {
        let guard = self.endpoints.lock().await;
        guard
            .0
            .list()
            .into_iter()
            .map(|(c, s, d)| (c.clone(), s, d))
            .collect()
    }

    /// Apply `change` to the API's endpoints (see the module docs). Returns the endpoint's
    /// name.
    pub async fn change(&self, change: Change) -> Result<String, ApiError> {
        let mut guard = self.endpoints.lock().await;
        self.outbox_open().await?;
        let (endpoints, fleet) = &mut *guard;
        let pending = |name: &str| {
            self.outbox
                .queue(name)
                .map_or(0, |q| self.outbox.queue_len(q))
        };
        let next = endpoints.plan(&change, pending)?;
        let before = endpoints.stored().clone();
        let name = match &change {
            Change::Create(_) => next
                .endpoints
                .last()
                .map(|e| e.name.clone())
                .unwrap_or_default(),
            Change::Replace(n, _) | Change::Patch(n, _) | Change::Delete(n, _) => n.clone(),
        };
        endpoints.commit(next).map_err(|e| {
            ApiError::new_internal(format!("cannot write {}: {e}", endpoints::FILE))
        })?;
        if let Err(e) = fleet.apply(&endpoints.wanted()).await {
            tracing::error!(endpoint = %name, error = %e, "control API: change not applied; undone");
            let _ = endpoints.commit(before);
            let _ = fleet.apply(&endpoints.wanted()).await;
            return Err(ApiError::new_internal(format!("not applied: {e:#}")));
        }
        match &change {
            Change::Create(_) => {
                tracing::info!(endpoint = %name, "control API: endpoint created")
            }
            Change::Replace(..) | Change::Patch(..) => {
                let old = before.endpoints.iter().find(|e| e.name == name);
                let new = endpoints.stored().endpoints.iter().find(|e| e.name == name);
                let changed = match (old, new) {
                    (Some(o), Some(n)) => endpoints::changed(o, n).join(", "),
                    _ => String::new(),
                };
                tracing::info!(endpoint = %name, changed = %changed, "control API: endpoint edited (its queue is kept)");
            }
            Change::Delete(_, how) => {
                let draining = endpoints.stored().draining.contains(&name);
                if *how == Pending::Purge {
                    let purged = self.outbox.purge(false, Some(&name)).await.unwrap_or(0);
                    let dead = self.outbox.purge(true, Some(&name)).await.unwrap_or(0);
                    tracing::info!(endpoint = %name, purged, dead_letters_purged = dead, "control API: endpoint deleted with its pending events");
                } else if draining {
                    tracing::info!(endpoint = %name, "control API: endpoint deleted; it delivers what it holds, takes nothing new, and goes once its queue is empty");
                } else {
                    tracing::info!(endpoint = %name, "control API: endpoint deleted");
                }
                if !draining {
                    // Gone: what the outbox remembered of it goes too, so that an endpoint made
                    // again with its name starts as new (not paused as this one was).
                    let forgot = match self.outbox.forget_facts(&name) {
                        Ok(()) => self.outbox.flush().await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = forgot {
                        tracing::warn!(endpoint = %name, error = %e, "a deleted endpoint's pause, disabling and last attempts are still remembered");
                    }
                }
            }
        }
        Ok(name)
    }

    /// Pause (`true`) or resume `name`: persisted, then its dispatcher restarted to read it.
    pub async fn pause(&self, name: &str, pause: bool) -> Result<(), ApiError> {
        let mut guard = self.endpoints.lock().await;
        let (endpoints, fleet) = &mut *guard;
        if endpoints.get(name).is_none() {
            return Err(ApiError::not_found(name));
        }
        self.outbox_open().await?;
        let fact = Paused {
            since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        persist_and_restart(&self.outbox, fleet, name, |o| {
            o.set_paused(name, pause.then_some(&fact))
        })
        .await?;
        if pause {
            tracing::warn!(endpoint = %name, "control API: endpoint paused (nothing is sent; new events are still queued)");
        } else {
            tracing::info!(endpoint = %name, "control API: endpoint resumed");
        }
        Ok(())
    }

    /// Send again to `name` after a 410 Gone disabled it. False if it was not disabled.
    pub async fn enable(&self, name: &str) -> Result<bool, ApiError> {
        let mut guard = self.endpoints.lock().await;
        let (endpoints, fleet) = &mut *guard;
        // A queue whose endpoint is no longer configured sends nothing either way.
        if endpoints.get(name).is_none() {
            return Err(ApiError::not_found(name));
        }
        if self.outbox.disabled(name).is_none() {
            return Ok(false);
        }
        self.outbox_open().await?;
        persist_and_restart(&self.outbox, fleet, name, |o| o.set_disabled(name, None)).await?;
        tracing::info!(endpoint = %name, "control API: endpoint enabled again");
        Ok(true)
    }

    /// The outbox open, after waiting for it (at most [`OUTBOX_WAIT`]) if it is being reopened
    /// after a storage error (found by the fault harness: an endpoint created a moment after a
    /// full disk was freed was refused at once); else a refusal that says so (503).
    pub(crate) async fn outbox_open(&self) -> Result<(), ApiError> {
        if self.outbox.open_within(OUTBOX_WAIT).await {
            Ok(())
        } else {
            Err(ApiError {
                status: 503,
                field: None,
                message: format!(
                    "{} (is the disk full?); nothing was changed: try again",
                    crate::outbox::OutboxError::Unavailable
                ),
            })
        }
    }

    /// The file's endpoints anew (SIGHUP): applied, or refused with why (the running ones stay).
    pub async fn reload(&self, file: Vec<WebhookConfig>) -> Result<(), String> {
        let mut guard = self.endpoints.lock().await;
        let (endpoints, fleet) = &mut *guard;
        endpoints.set_file(file)?;
        let applied = fleet
            .apply(&endpoints.wanted())
            .await
            .map_err(|e| format!("{e:#}"))?;
        if !applied.started.is_empty() || !applied.stopped.is_empty() {
            tracing::info!(started = %applied.started.join(" "), stopped = %applied.stopped.join(" "), "configuration reloaded: endpoints applied");
        }
        Ok(())
    }

    /// The device classes and workspaces of a reloaded configuration, for what the API shows.
    pub fn reloaded(
        &self,
        classes: &[crate::device::config::DeviceClassConfig],
        workspaces: &[WorkspaceConfig],
    ) {
        *self.classes.lock().unwrap_or_else(|e| e.into_inner()) = compile(classes);
        *self.workspaces.lock().unwrap_or_else(|e| e.into_inner()) = workspaces.to_vec();
    }

    /// Remove the endpoints deleted with `pending=drain` whose queues are empty, every second,
    /// until cancelled.
    pub async fn finish_drains(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let drained: Vec<String> = {
                let guard = self.endpoints.lock().await;
                let (endpoints, fleet) = &*guard;
                endpoints
                    .stored()
                    .draining
                    .iter()
                    .filter(|n| fleet.drained(n))
                    .cloned()
                    .collect()
            };
            for name in drained {
                match self
                    .change(Change::Delete(name.clone(), Pending::Drain))
                    .await
                {
                    Ok(_) => tracing::info!(endpoint = %name, "endpoint drained: deleted"),
                    Err(e) => {
                        tracing::warn!(endpoint = %name, error = %e.message, "a drained endpoint is not deleted yet")
                    }
                }
            }
        }
    }
}

/// The classes as the device stage has them: the configured ones, then the default class
/// (which matches everything).
fn compile(
    classes: &[crate::device::config::DeviceClassConfig],
) -> Vec<crate::device::DeviceClass> {
    let default = crate::device::config::DeviceClassConfig::default();
    classes
        .iter()
        .chain([&default])
        .map(crate::device::DeviceClass::new)
        .collect()
}

/// Change a fact of `name`'s in the outbox (`set`), make it durable, and restart `name`'s
/// dispatcher so that it reads it.
async fn persist_and_restart(
    outbox: &Outbox,
    fleet: &mut Fleet,
    name: &str,
    set: impl FnOnce(&Outbox) -> Result<(), crate::outbox::OutboxError>,
) -> Result<(), ApiError> {
    let internal = |e: &dyn std::fmt::Display| ApiError::new_internal(e.to_string());
    set(outbox).map_err(|e| internal(&e))?;
    outbox.flush().await.map_err(|e| internal(&e))?;
    fleet.restart(name).await.map_err(|e| internal(&e))?;
    Ok(())
}

impl ApiError {
    fn new_internal(message: String) -> ApiError {
        ApiError {
            status: 500,
            field: None,
            message,
        }
    }

    fn not_found(name: &str) -> ApiError {
        ApiError {
            status: 404,
            field: None,
            message: format!("no endpoint `{name}`"),
        }
    }
}
