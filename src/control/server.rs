//! The local server: `/healthz`, `/metrics`, the API under `/v1` and the console at `/`.
//! Loopback, or anywhere with TLS (checked by config; see [`super::auth`] for who may call). Bounded so that no local client can starve the daemon:
//! at most [`MAX_CONNECTIONS`] at once, each closed if its headers take longer than
//! [`HEADER_TIMEOUT`] or it lives past [`CONNECTION_LIFETIME`] (a live event stream ends
//! there too, and the console reconnects), request bodies of at most [`MAX_BODY`] read within
//! [`BODY_TIMEOUT`]; an accept that fails (out of file descriptors) is retried after a growing
//! pause, not in a spin.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use super::auth::{self, Listener};
use super::Control;
use crate::metrics::Format;

/// Connections served at once; more wait in the kernel's backlog, using no file descriptor of
/// the daemon's.
const MAX_CONNECTIONS: usize = 32;
/// A connection must send its request headers this soon (and, kept alive, its next ones).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer than this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// The largest request body read (an endpoint's settings, with a template, fit well).
pub const MAX_BODY: usize = 64 * 1024;
/// A request body must arrive whole this soon.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A response body: all at once, or a stream (server-sent events) fed by a channel.
pub enum Body {
    Full(Option<Bytes>),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    /// Exact for a whole body, so it goes with a Content-Length (not chunked).
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Full(bytes) => {
                http_body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Body::Stream(_) => http_body::SizeHint::default(),
        }
    }
}

impl Body {
    pub fn text(text: impl Into<Bytes>) -> Body {
        Body::Full(Some(text.into()))
    }
}

/// What a listener answers: the local API ([`Local`]) or the push listener
/// (`super::push::Push`). The bounds of this module apply to both.
pub trait Service: Send + Sync + 'static {
    /// What it is, for the log.
    const WHAT: &'static str;
    fn answer(
        &self,
        req: Request<hyper::body::Incoming>,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = Response<Body>> + Send;
}

/// The local listener: health, metrics, the API and the console.
pub struct Local {
    control: Arc<Control>,
    rules: Listener,
}

impl Local {
    pub fn new(control: Arc<Control>, listen: SocketAddr, tls: bool) -> Local {
        Local {
            control,
            rules: Listener::new(listen, tls),
        }
    }
}

impl Service for Local {
    const WHAT: &'static str = "health, metrics, API (/v1) and console (/)";
    async fn answer(
        &self,
        req: Request<hyper::body::Incoming>,
        cancel: CancellationToken,
    ) -> Response<Body> {
        answer(req, &self.control, &self.rules, cancel).await
    }
}

/// Serve `service` until cancelled; HTTPS with `tls` (its certificate as last loaded), HTTP
/// without.
pub async fn serve<S: Service>(
    listen: SocketAddr,
    service: Arc<S>,
    tls: Option<Arc<crate::tls::ServerCert>>,
    cancel: CancellationToken,
) {
    let acceptor = match tls.as_ref().map(|cert| cert.server_config()) {
        None => None,
        Some(Ok(config)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        Some(Err(e)) => {
            tracing::error!(%listen, error = %e, what = S::WHAT, "cannot serve TLS; the listener is off");
            return;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, what = S::WHAT, "cannot listen; continuing without it");
            return;
        }
    };
    tracing::info!(%listen, tls = acceptor.is_some(), "{} listening", S::WHAT);
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
                        tracing::warn!(error = %e, failures, what = S::WHAT, "cannot accept; pausing");
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
        let service = service.clone();
        let cancel = cancel.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let served = async {
                match acceptor {
                    None => connection(stream, service, cancel).await,
                    Some(acceptor) => {
                        // The handshake counts against the time the headers may take.
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => connection(tls, service, cancel).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
        });
    }
}

/// Serve HTTP/1.1 on one connection (plain or TLS) until it closes.
async fn connection<IO, S: Service>(io: IO, service: Arc<S>, cancel: CancellationToken)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let service = service.clone();
        let cancel = cancel.clone();
        async move { Ok::<_, Infallible>(service.answer(req, cancel).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
}

/// One request's answer: the rules of [`auth::check`], then the route.
async fn answer(
    req: Request<hyper::body::Incoming>,
    control: &Control,
    rules: &Listener,
    cancel: CancellationToken,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let header =
        |name: hyper::header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let path = parts.uri.path();
    let changes = !matches!(
        parts.method,
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
    );
    let request = auth::Request {
        changes,
        host: header(hyper::header::HOST),
        origin: header(hyper::header::ORIGIN),
        authorization: header(hyper::header::AUTHORIZATION),
        open: path == "/",
    };
    if let Err(refusal) = auth::check(&request, rules, &control.token) {
        return super::api::error(refusal.status, None, refusal.why);
    }
    match path {
        "/metrics" => {
            let format = Format::negotiate(header(hyper::header::ACCEPT));
            let text = control.metrics.encode(&control.outbox, format);
            return plain(StatusCode::OK, format.content_type(), text);
        }
        "/healthz" => {
            return match control.metrics.readiness(control.outbox.is_writable()) {
                Ok(()) => plain(StatusCode::OK, TEXT, "ok\n".into()),
                Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
            }
        }
        _ => {}
    }
    let bytes = match read_body(&parts, body).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused,
    };
    let query = parts.uri.query().unwrap_or("");
    super::api::route(control, &parts.method, path, query, bytes, cancel).await
}

/// A request's body: at most [`MAX_BODY`] bytes, within [`BODY_TIMEOUT`] (413 or 408 else).
pub async fn read_body(
    parts: &hyper::http::request::Parts,
    body: hyper::body::Incoming,
) -> Result<Bytes, Response<Body>> {
    let too_big = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY);
    if too_big {
        return Err(super::api::error(413, None, "request body over 64 KiB"));
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) => Err(super::api::error(413, None, "request body over 64 KiB")),
        Err(_) => Err(super::api::error(
            408,
            None,
            "request body not received in time",
        )),
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

fn plain(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::text(body))
        .expect("static response parts are valid")
}
