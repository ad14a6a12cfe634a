//! systemd's notify protocol: READY, STATUS (the health), the watchdog, STOPPING.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::outbox::Outbox;

/// systemd integration (a no-op outside systemd, i.e. without `NOTIFY_SOCKET`): `READY=1` as
/// soon as the daemon runs (the outbox open, every stage started), whatever its health: READY
/// means "running", and a broker that is down at boot or an endpoint disabled by a 410 must not
/// make systemd kill and restart a daemon that is doing all it can. Health is told in `STATUS=`
/// (updated when it changes; the same reason `/healthz` gives), in the log and in the metrics.
/// Then `WATCHDOG=1` at half of `WatchdogSec` for as long as the runtime runs, and `STOPPING=1`
/// when shutdown begins.
pub async fn notify_systemd(metrics: Arc<Metrics>, outbox: Outbox, cancel: CancellationToken) {
    use sd_notify::NotifyState;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let send = |state: &[NotifyState]| {
        if let Err(e) = sd_notify::notify(state) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    };
    let status = || match metrics.readiness(outbox.is_writable()) {
        Ok(()) => "running; healthy".to_string(),
        Err(why) => format!("running; degraded: {why}"),
    };
    let mut told = status();
    send(&[NotifyState::Ready, NotifyState::Status(&told)]);
    let watchdog = sd_notify::watchdog_enabled().map(|w| w / 2);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_ping = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = status();
        if now != told {
            send(&[NotifyState::Status(&now)]);
            told = now;
        }
        if let Some(every) = watchdog {
            if last_ping.elapsed() >= every {
                send(&[NotifyState::Watchdog]);
                last_ping = Instant::now();
            }
        }
    }
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining and flushing the outbox"),
    ]);
}
