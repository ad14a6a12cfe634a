//! The localhost `/healthz` and `/metrics` listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::metrics::Format;
use crate::outbox::Outbox;

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
                let accept = req
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|a| a.to_str().ok());
                let response = answer(req.uri().path(), accept, &metrics, &outbox);
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

/// The answer to `GET path`; `/metrics` in the format `accept` asks for.
fn answer(
    path: &str,
    accept: Option<&str>,
    metrics: &Metrics,
    outbox: &Outbox,
) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match path {
        "/metrics" => {
            let format = Format::negotiate(accept);
            (
                StatusCode::OK,
                format.content_type(),
                metrics.encode(outbox, format),
            )
        }
        "/healthz" => match metrics.readiness(outbox.is_writable()) {
            Ok(()) => (StatusCode::OK, text, "ok\n".to_string()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, text, format!("{why}\n")),
        },
        _ => (
            StatusCode::NOT_FOUND,
            text,
            "try /healthz or /metrics\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
