//! The device stage's task: messages and timers in, commits out, rules reloaded in place.

use super::*;

/// The device stage task: apply each inbound message and each due deadline, seal the events
/// produced and pass them, with the states to persist and the message's ack, to the outbox
/// writer. Ends when the sources have all gone (their senders dropped), after passing on
/// everything received; timers still pending are persisted and resume on the next start.
/// The control API's [`super::Request`]s are answered between messages.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut registry: Registry,
    mut clock: Clock,
    gateway_id: Arc<str>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut rules: mpsc::Receiver<Rules>,
    mut requests: mpsc::Receiver<super::Request>,
    commits: mpsc::Sender<Commit>,
    metrics: Arc<super::metrics::DeviceMetrics>,
) {
    let mut reloadable = true;
    let mut faults = crate::fault_log::FaultLog::new(Duration::from_secs(60));
    let mut told_unset = false;
    // A clock step is noticed within a second even when nothing else happens.
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        crate::clock::STEPS.observe(); // for the ages delivery computes
        if let Some(step) = clock.follow_wall() {
            tracing::warn!(
                step_ms = step,
                now = %rfc3339_text(clock.now()),
                "system clock stepped; device timers keep their real durations and remembered times move with the clock"
            );
            let shifted = registry.shift(step);
            let commit = Commit {
                changes: Changes {
                    devices: shifted.changes.devices,
                    workspaces: shifted.changes.workspaces,
                    groups: shifted.changes.groups,
                    ..Default::default()
                },
                ..Default::default()
            };
            if commits.send(commit).await.is_err() {
                return;
            }
        }
        let set = crate::clock::synchronised(clock.now());
        if !set && !told_unset {
            tracing::error!(now = %rfc3339_text(clock.now()), "the system clock is not set (no real-time clock, NTP not synchronised yet): events are stamped with it, HTTPS certificates look not yet valid until it is, and nothing is given up on (max_age, max_attempts) meanwhile");
        } else if set && told_unset {
            tracing::info!(now = %rfc3339_text(clock.now()), "the system clock is set");
        }
        told_unset = !set;
        let wake = registry.next_deadline().map(|at| clock.instant_at(at));
        let (applied, ack) = tokio::select! {
            msg = inbound.recv() => match msg {
                Some(msg) => {
                    let applied = if msg.retained {
                        registry.apply_retained(&msg.device_id, &msg.body, clock.now())
                    } else {
                        registry.apply(&msg.device_id, &msg.body, clock.now())
                    };
                    if let Some(refused) = applied.refused {
                        metrics.refused(refused);
                        if let Some(suppressed) = faults.admit(refused.kind(), "registry", std::time::Instant::now()) {
                            let limits = &registry.limits;
                            match refused {
                                OverLimit::MaxDevices => tracing::warn!(device_id = %msg.device_id, max_devices = limits.max_devices, suppressed, "device limit reached: messages from new devices are skipped (known devices keep flowing); raise devices.max_devices if these are real devices"),
                                OverLimit::MaxFields => tracing::warn!(device_id = %msg.device_id, max_fields = limits.max_fields, suppressed, "reading skipped: it would give the device more than devices.max_fields field names"),
                                OverLimit::MaxStateBytes => tracing::warn!(device_id = %msg.device_id, max_state_bytes = limits.max_state_bytes, suppressed, "reading skipped: its values would take what is kept of the device past devices.max_state_bytes"),
                            }
                        }
                    } else {
                        metrics.set_devices(registry.len());
                    }
                    if let Some(ignored) = applied.ignored_answer {
                        metrics.answer_ignored(ignored);
                        if let Some(suppressed) = faults.admit(ignored.kind(), &msg.device_id, std::time::Instant::now()) {
                            match ignored {
                                super::IgnoredAnswer::Late => tracing::info!(device_id = %msg.device_id, suppressed, "a second or late answer to an action already done: no second event (counted in edgehook_action_answers_ignored_total)"),
                                super::IgnoredAnswer::Unknown => tracing::warn!(device_id = %msg.device_id, suppressed, "an answer to an action this gateway does not know (forgotten, or not this device's): ignored"),
                            }
                        }
                    }
                    (applied, msg.ack)
                }
                None => break,
            },
            new = rules.recv(), if reloadable => match new {
                Some(new) => (registry.reconfigure(&new, clock.now()), None),
                None => {
                    reloadable = false;
                    continue;
                }
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                (registry.tick(clock.now()), None)
            }
            Some(request) = requests.recv() => {
                match super::requests::handle(request, &mut registry, clock.now(), &metrics) {
                    Some(change) => change,
                    None => continue, // answered at once: nothing to write
                }
            }
            _ = watch.tick() => continue,
        };
        if applied.is_empty() && ack.is_none() {
            continue;
        }
        if !applied.changes.forgotten.is_empty() {
            metrics.set_devices(registry.len());
        }
        // The device stage's time, so that `timestamp` agrees with the times in `data`.
        let commit = applied.seal(
            &gateway_id,
            UNIX_EPOCH + Duration::from_millis(clock.now()),
            ack,
        );
        if commits.send(commit).await.is_err() {
            tracing::error!("outbox writer has stopped; device stage stopping");
            return;
        }
    }
    tracing::debug!(devices = registry.len(), "device stage drained");
}
