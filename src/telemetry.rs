//! Telemetry: logs, systemd's notify protocol, and the localhost `/healthz` + `/metrics`
//! endpoint (the metrics themselves are [`crate::metrics`]).
//!
//! Logs go to stderr, one line per fact with structured fields. Under systemd (`JOURNAL_STREAM`
//! set) lines carry no timestamp or colour, since journald adds its own, and start with their
//! syslog priority (`<4>` for a warning) instead of a level word, which journald records.
//! Per-message faults (malformed payloads) are rate-limited through
//! [`crate::metrics::FaultLog`] so a misbehaving device cannot flood the journal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// Set up the global tracing subscriber. `EDGEHOOK_LOG` (or `RUST_LOG`) selects levels.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("EDGEHOOK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(format!("rumqttd=off,sled=warn,{filter}"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false)
            .with_ansi(false)
            .with_target(false);
        builder.event_format(JournalPriority(format)).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Under journald: each line starts with its syslog priority (`<3>` error, `<4>` warning,
/// `<6>` info, `<7>` debug), which journald strips and records, so `journalctl -p warning` works.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

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

/// Connections the local listener serves at once; more wait in the kernel's backlog, using
/// no file descriptor of the daemon's.
const MAX_CONNECTIONS: usize = 32;
/// A connection must send its request headers this soon (and, kept alive, its next ones).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer than this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serve `GET /healthz` and `GET /metrics` on `listen` (loopback, checked by config) until
/// cancelled. Bounded so that no local client can starve the daemon: at most
/// [`MAX_CONNECTIONS`] at once, each closed if its headers take longer than
/// [`HEADER_TIMEOUT`] or it lives past [`CONNECTION_LIFETIME`]; an accept that fails (out of
/// file descriptors) is retried after a growing pause, not in a spin.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    outbox: Outbox,
    cancel: CancellationToken,
) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot listen for /healthz and /metrics; continuing without them");
            return;
        }
    };
    tracing::info!(%listen, "health and metrics listening");
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut pause = Duration::from_millis(50);
    let mut failures = 0u64;
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    pause = Duration::from_millis(50);
                    stream
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "health and metrics listener cannot accept; pausing");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = answer(req.uri().path(), &metrics, &outbox);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

fn answer(path: &str, metrics: &Metrics, outbox: &Outbox) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => {
            outbox.observe(metrics);
            (StatusCode::OK, metrics.render())
        }
        "/healthz" => match metrics.readiness(outbox.is_writable()) {
            Ok(()) => (StatusCode::OK, "ok\n".to_string()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => (StatusCode::NOT_FOUND, "try /healthz or /metrics\n".into()),
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
