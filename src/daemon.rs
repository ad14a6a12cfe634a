//! The wiring: the stages started on one cancellation token, the configuration reloaded on
//! SIGHUP, and the stop on SIGTERM/SIGINT (see the crate's docs for the pipeline and its
//! shutdown).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::outbox::Outbox;
use crate::telemetry::Metrics;
use crate::{control, deliver, device, memory, outbox, source, telemetry, tls, upstream};

/// Capacity of each channel between stages.
const STAGE_CHANNEL: usize = 1024;

/// Make the state directory (if it is not there) readable by the daemon's user alone: it holds
/// every event's data, the API's token and endpoints' secrets. Files the daemon makes are
/// 0600 and directories 0700 whatever umask it was started with (the unit sets `UMask=0077`
/// too); a directory an earlier version made is closed to others at the start.
fn private_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask only sets the process's file-mode mask; it takes no pointer.
    unsafe {
        libc::umask(0o077);
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir).map(|m| m.permissions().mode() & 0o777);
    if mode.is_ok_and(|m| m & 0o077 != 0) {
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(state_dir = %dir.display(), error = %e, "cannot make the state directory private (mode 0700): other users may read its events");
        }
    }
    Ok(())
}

/// Run the daemon until `cancel` fires, then drain and flush.
pub async fn run(config: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    run_with_reloads(config, cancel, None).await
}

/// [`run`], also taking reloaded configurations (SIGHUP): device classes, workspaces and
/// endpoints apply at once; other changes are logged as needing a restart.
pub async fn run_with_reloads(
    config: Config,
    cancel: CancellationToken,
    reloads: Option<mpsc::Receiver<Config>>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (outbox, endpoints) = open_store(&config, &metrics)?;
    let clock = device::Clock::start();
    let registry = start_registry(&config, &outbox, &clock)?;
    metrics.device.set_devices(registry.len());
    let mqtt = mqtt_source(&config, &metrics, &outbox)?;
    let tracker = TaskTracker::new();
    // The control API asks the device stage for what it knows now.
    let (requests_tx, requests_rx) = mpsc::channel(4);
    let stage = (&tracker, &cancel, requests_tx);
    let control = Arc::new(start_control(&config, &outbox, &metrics, endpoints, stage).await?);
    tracker.spawn(control.clone().finish_drains(cancel.clone()));
    tracker.spawn(telemetry::notify_systemd(
        metrics.clone(),
        outbox.clone(),
        cancel.clone(),
    ));
    let certs = Certs::load(&config)?;
    let (rules_tx, rules_rx) = mpsc::channel(4);
    if let Some(reloads) = reloads {
        tracker.spawn(apply_reloads(
            config.clone(),
            reloads,
            rules_tx,
            control.clone(),
            certs.reloadable(),
            cancel.clone(),
        ));
    }
    // The pipeline: sources → device stage → outbox writer (→ delivery, in the fleet).
    let (inbound_tx, inbound_rx) = mpsc::channel(STAGE_CHANNEL);
    let (commit_tx, commit_rx) = mpsc::channel(STAGE_CHANNEL);
    let router = spawn_sources(&config, &metrics, mqtt, inbound_tx, &tracker, &cancel);
    tracker.spawn(device::run(
        registry,
        clock,
        Arc::from(config.gateway_id.as_str()),
        inbound_rx,
        rules_rx,
        requests_rx,
        commit_tx,
        metrics.device.clone(),
    ));
    tracker.spawn(memory::give_back(cancel.clone()));
    tracker.spawn(outbox::run_writer(
        outbox.clone(),
        commit_rx,
        config.outbox.clone(),
        metrics.outbox.clone(),
        router,
        cancel.clone(),
    ));
    if !config.telemetry.listen.is_empty() {
        let listen = config
            .telemetry
            .listen
            .parse()
            .expect("validated by config");
        let local = control::server::Local::new(control.clone(), listen, certs.local.is_some());
        tracker.spawn(control::server::serve(
            listen,
            Arc::new(local),
            certs.local,
            cancel.clone(),
        ));
    }
    spawn_upstream(&config, &control, certs.push, &tracker, &cancel)?;
    tracker.close();
    tracker.wait().await;
    outbox.flush().await.context("final outbox flush")?;
    tracing::info!(pending = outbox.len(), "edgehook stopped; outbox flushed");
    Ok(())
}

/// The control stage: the gateway's view, the delivery fleet (delivery runs in it, on the
/// tracker and token of `stage`) and the delivery log, with the API's token (made in the state
/// directory at the first start), asking the device stage through `stage`'s sender.
async fn start_control(
    config: &Config,
    outbox: &Outbox,
    metrics: &Arc<Metrics>,
    endpoints: control::endpoints::Endpoints,
    (tracker, cancel, requests): (
        &TaskTracker,
        &CancellationToken,
        mpsc::Sender<device::Request>,
    ),
) -> anyhow::Result<control::Control> {
    let log = Arc::new(deliver::log::DeliveryLog::new(
        &config.state_dir,
        config.outbox.delivery_log,
    ));
    let fleet = deliver::fleet::Fleet::new(
        outbox.clone(),
        log.clone(),
        metrics.deliver.clone(),
        cancel.clone(),
        tracker.clone(),
    )
    .stopping_within(config.stop_timeout);
    let token = control::auth::load_or_create_token(&config.state_dir)
        .with_context(|| format!("making the API token in {}", config.state_dir.display()))?;
    let control = control::Control::new(
        config,
        outbox.clone(),
        metrics.clone(),
        config.state_dir.clone(),
        token,
        endpoints,
        fleet,
        log,
    )
    .with_device_stage(requests);
    control.start().await?;
    Ok(control)
}

/// The listeners' certificates, when they serve HTTPS (read again on SIGHUP).
struct Certs {
    local: Option<Arc<tls::ServerCert>>,
    push: Option<Arc<tls::ServerCert>>,
}

impl Certs {
    fn load(config: &Config) -> anyhow::Result<Certs> {
        let load = |cert: &Option<PathBuf>, key: &Option<PathBuf>| match (cert, key) {
            (Some(cert), Some(key)) => tls::ServerCert::load(cert, key).map(Some),
            _ => Ok(None),
        };
        let telemetry = &config.telemetry;
        let push = match &config.upstream.push {
            Some(p) => load(&p.tls_cert, &p.tls_key)?,
            None => None,
        };
        Ok(Certs {
            local: load(&telemetry.tls_cert, &telemetry.tls_key)?,
            push,
        })
    }

    /// Each certificate in use, named as a reload logs it.
    fn reloadable(&self) -> Vec<(&'static str, Arc<tls::ServerCert>)> {
        [("local", &self.local), ("push", &self.push)]
            .into_iter()
            .filter_map(|(what, cert)| Some((what, cert.clone()?)))
            .collect()
    }
}

/// The MQTT source, when anything is subscribed, told what the outbox had applied before
/// this start.
fn mqtt_source(
    config: &Config,
    metrics: &Metrics,
    outbox: &Outbox,
) -> anyhow::Result<Option<source::mqtt::MqttSource>> {
    let enabled = !config.mqtt.all_subscriptions().is_empty();
    metrics.source.set_mqtt_enabled(enabled);
    if !enabled {
        return Ok(None);
    }
    let client_id = config.mqtt_client_id();
    let mqtt = source::mqtt::MqttSource::new(&config.mqtt, client_id, metrics.source.clone())?;
    Ok(Some(mqtt.after_restart(outbox.applied_before())))
}

/// The sources, each sending what it reads to `inbound` (the device stage ends when every
/// source has): MQTT, each serial port and each Modbus bus. The router they share takes actions, once durable,
/// from the outbox writer down to each device's source.
fn spawn_sources(
    config: &Config,
    metrics: &Metrics,
    mqtt: Option<source::mqtt::MqttSource>,
    inbound: mpsc::Sender<source::Inbound>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> source::Router {
    let modbus_devices = config.modbus.buses.iter().flat_map(|b| &b.devices);
    let router = source::Router::new(mqtt.map(|mqtt| {
        let (outgoing_tx, outgoing_rx) = mpsc::channel(STAGE_CHANNEL);
        tracker.spawn(mqtt.run(inbound.clone(), outgoing_rx, cancel.clone()));
        outgoing_tx
    }))
    .with_modbus(modbus_devices.map(|d| d.id.clone()));
    for port in &config.serial_ports {
        let serial =
            source::serial::SerialSource::new(port.clone(), metrics.source.clone(), router.clone());
        tracker.spawn(serial.run(inbound.clone(), cancel.clone()));
    }
    for bus in 0..config.modbus.buses.len() {
        let modbus = source::modbus::ModbusSource::new(&config.modbus, bus, metrics.source.clone());
        tracker.spawn(modbus.run(inbound.clone(), cancel.clone()));
    }
    router
}

/// The ways in for upstream's commands, as configured: the push listener and pull mode.
fn spawn_upstream(
    config: &Config,
    control: &Arc<control::Control>,
    cert: Option<Arc<tls::ServerCert>>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let upstream = &config.upstream;
    let gate = || -> anyhow::Result<upstream::gate::Gate> {
        Ok(upstream::gate::Gate::new(
            upstream.signer()?,
            upstream.tolerance.as_secs(),
        ))
    };
    if let Some(push) = &upstream.push {
        let listen = push.listen.parse().expect("validated by config");
        let service = control::push::Push::new(control.clone(), gate()?);
        tracker.spawn(control::server::serve(
            listen,
            Arc::new(service),
            cert,
            cancel.clone(),
        ));
    }
    if let Some(pull) = &upstream.pull {
        let puller = control::pull::Puller {
            control: control.clone(),
            config: pull.clone(),
            gateway_id: config.gateway_id.clone(),
            signer: upstream.signer()?,
            gate: gate()?,
        };
        tracker.spawn(puller.run(cancel.clone()));
    }
    Ok(())
}

/// Hand each reloaded configuration's device rules to the device stage and its endpoints to
/// the control plane, and say what else changed and needs a restart.
async fn apply_reloads(
    mut running: Config,
    mut reloads: mpsc::Receiver<Config>,
    rules: mpsc::Sender<device::Rules>,
    control: Arc<control::Control>,
    certs: Vec<(&'static str, Arc<tls::ServerCert>)>,
    cancel: CancellationToken,
) {
    loop {
        let new = tokio::select! {
            _ = cancel.cancelled() => return,
            new = reloads.recv() => match new {
                Some(new) => new,
                None => return,
            },
        };
        let restart = running.needs_restart(&new);
        let file_endpoints = new.all_endpoints().into_iter().cloned().collect();
        let endpoints_applied = match control.reload(file_endpoints).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "configuration reloaded, but its endpoints are not applied (the running ones stay)");
                false
            }
        };
        control.reloaded(&new.device_classes, &new.workspaces);
        for (listener, cert) in &certs {
            match cert.reload() {
                Ok(()) => tracing::info!(listener, "the listener's TLS certificate is read again"),
                Err(e) => {
                    tracing::error!(listener, error = %format!("{e:#}"), "the listener's TLS certificate does not load; the one in use stays")
                }
            }
        }
        let update = device::Rules {
            classes: new.device_classes.clone(),
            workspaces: new.workspaces.clone(),
            groups: new.groups.clone(),
        };
        if rules.send(update).await.is_err() {
            return;
        }
        let applied = if endpoints_applied {
            "device classes, workspaces and endpoints applied"
        } else {
            "device classes and workspaces applied, endpoints NOT applied (see the error above)"
        };
        if restart.is_empty() && endpoints_applied {
            tracing::info!("configuration reloaded: {applied}");
        } else if restart.is_empty() {
            tracing::warn!("configuration reloaded: {applied}");
        } else {
            tracing::warn!(
                needs_restart = %restart.join(", "),
                "configuration reloaded: {applied}; other changes take effect after a restart"
            );
        }
        running.device_classes = new.device_classes;
        running.workspaces = new.workspaces;
    }
}

/// Re-read `file` on every SIGHUP and send the result to [`run_with_reloads`]; a configuration
/// that does not load is logged and ignored (the running one stays).
pub fn reload_on_sighup(
    file: std::path::PathBuf,
    state_dir: Option<std::path::PathBuf>,
) -> mpsc::Receiver<Config> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot install a SIGHUP handler; reload by restarting");
            return;
        };
        while hup.recv().await.is_some() {
            match Config::load(&file) {
                Ok(mut config) => {
                    if let Some(dir) = &state_dir {
                        config.state_dir = dir.clone();
                    }
                    if tx.send(config).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the running one stays")
                }
            }
        }
    });
    rx
}

/// A token that fires on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested; draining");
        token.cancel();
    });
    cancel
}

/// The state directory made private, the endpoints (the file's and the API's) and the outbox
/// opened with a queue for each; the outbox's metrics set from what it holds.
fn open_store(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<(Outbox, control::endpoints::Endpoints)> {
    private_state_dir(&config.state_dir)?;
    // The file's endpoints and those made through the control API (kept in the state
    // directory), one source of truth per name.
    let file_endpoints = config.all_endpoints().into_iter().cloned().collect();
    let (endpoints, conflict) =
        control::endpoints::Endpoints::load(&config.state_dir, file_endpoints)
            .map_err(anyhow::Error::msg)?;
    if let Some(conflict) = conflict {
        // Not a reason to stop every device and endpoint: the API's endpoint runs.
        tracing::error!("{conflict}; the API's endpoint runs, the file's is set aside");
    }
    let routes = endpoints
        .wanted()
        .iter()
        .filter(|w| w.config.active && w.queue_new)
        .map(|w| deliver::route(&w.config))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outbox = Outbox::open(&config.state_dir, config.outbox.cache_bytes, routes).with_context(|| {
        format!(
            "opening the outbox in {} (if it is corrupt, see docs/operating.md: Recovering the state directory)",
            config.state_dir.display()
        )
    })?;
    outbox.set_dead_budget(config.outbox.dead_budget());
    for (queue, endpoint, routed) in outbox.queues() {
        let endpoint = endpoint.as_str();
        // What the endpoint will never get counts from the store's start, as `outbox status`.
        metrics
            .outbox
            .dropped_for(endpoint, outbox.dropped_for(queue));
        if !routed {
            tracing::warn!(
                endpoint,
                pending = outbox.queue_len(queue),
                "endpoint is inactive or no longer configured: nothing is queued for it or sent to it; its queue is kept (edgehook outbox purge --endpoint {endpoint} --yes deletes it)"
            );
        }
    }
    metrics.outbox.set_max_bytes(config.outbox.max_size);
    metrics.outbox.set_depth(outbox.len());
    Ok((outbox, endpoints))
}

/// The device stage's registry as the store left it: devices, workspaces, groups, actions and
/// bookings, under the configuration's rules and limits (the start logged with what it found).
fn start_registry(
    config: &Config,
    outbox: &Outbox,
    clock: &device::Clock,
) -> anyhow::Result<device::Registry> {
    let known = outbox.devices().context("reading device state")?;
    let known_workspaces = outbox.workspaces().context("reading workspace state")?;
    let known_groups = outbox.groups().context("reading group state")?;
    let pending = outbox.len();
    tracing::info!(
        gateway = %config.gateway_id,
        state_dir = %config.state_dir.display(),
        devices = known.len(),
        pending,
        endpoints = %config.endpoints_for_logs(),
        "edgehook starting"
    );
    Ok(device::Registry::new(
        &config.device_classes,
        &config.workspaces,
        known,
        known_workspaces,
        clock.now(),
    )
    .with_limits(config.devices.clone())
    .with_groups(&config.groups, known_groups)
    .with_actions(outbox.actions().context("reading actions")?)
    .with_bookings(outbox.bookings().context("reading bookings")?))
}
