//! The local server: `/healthz`, `/metrics`, the API under `/v1` and the console at `/`.
//! Loopback, or anywhere with TLS (checked by config; see [`super::auth`] for who may call).
//! Bounded so that no client can starve the daemon or lock the others out: at most
//! [`MAX_CONNECTIONS`] at once and [`MAX_PER_PEER`] of one address, a new connection making
//! room by closing an idle one ([`super::slots`]: the peer's own first, unproven before those
//! that showed the token); each closed if its headers take longer than [`HEADER_TIMEOUT`] or
//! it lives past [`CONNECTION_LIFETIME`] (a live event stream ends there too, and the console
//! reconnects), request bodies of at most [`MAX_BODY`] read within [`BODY_TIMEOUT`]; an accept
//! that fails (out of file descriptors) is retried after a growing pause, not in a spin.

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
use super::slots::{self, Admit, Slot};
use super::Control;
use crate::metrics::Format;

/// Connections served at once. A new one past it closes an idle one; when all are busy it
/// waits (at most [`HEADER_TIMEOUT`]), and past as many waiting, more wait in the kernel's
/// backlog, using no file descriptor of the daemon's.
const MAX_CONNECTIONS: usize = 32;
/// Connections of one peer address at once.
const MAX_PER_PEER: usize = 16;
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
    let table = Arc::new(Table::default());
    let mut pause = Duration::from_millis(50);
    let mut failures = 0u64;
    loop {
        // Past as many waiting as served, accept nothing until a slot frees.
        while table.waiting() >= MAX_CONNECTIONS {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    pause = Duration::from_millis(50);
                    (stream, peer)
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
        let table = table.clone();
        tokio::spawn(async move {
            let Some(tracker) = table.admit(peer.ip()).await else {
                return; // no slot freed in time: closed
            };
            let evicted = tracker.evicted.clone();
            let served = async {
                match acceptor {
                    None => connection(stream, service, cancel, &tracker).await,
                    Some(acceptor) => {
                        // The handshake counts against the time the headers may take.
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => connection(tls, service, cancel, &tracker).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
            };
            tokio::select! {
                _ = evicted.notified() => {}
                _ = tokio::time::timeout(CONNECTION_LIFETIME, served) => {}
            }
        });
    }
}

/// A listener's connections now, for [`slots::admit`].
#[derive(Default)]
struct Table {
    inner: std::sync::Mutex<TableInner>,
    /// Told when a slot frees.
    freed: tokio::sync::Notify,
    waiting: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct TableInner {
    next: u64,
    slots: std::collections::HashMap<u64, (Slot, Arc<tokio::sync::Notify>)>,
}

impl Table {
    fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection from `peer`, closing an idle one if that is the rule's answer;
    /// `None` if none frees within [`HEADER_TIMEOUT`].
    async fn admit(self: &Arc<Self>, peer: std::net::IpAddr) -> Option<Tracker> {
        let limits = slots::Limits {
            total: MAX_CONNECTIONS,
            per_peer: MAX_PER_PEER,
        };
        let deadline = tokio::time::Instant::now() + HEADER_TIMEOUT;
        let mut counted = false;
        let got = loop {
            {
                let mut inner = self.lock();
                let now: Vec<Slot> = inner.slots.values().map(|(s, _)| *s).collect();
                let room = match slots::admit(&now, peer, limits) {
                    Admit::Yes => true,
                    Admit::Evict(id) => {
                        if let Some((_, evict)) = inner.slots.remove(&id) {
                            evict.notify_one();
                        }
                        true
                    }
                    Admit::Wait => false,
                };
                if room {
                    inner.next += 1;
                    let id = inner.next;
                    let evicted = Arc::new(tokio::sync::Notify::new());
                    let slot = Slot {
                        id,
                        peer,
                        busy: false,
                        proven: false,
                        since: std::time::Instant::now(),
                    };
                    inner.slots.insert(id, (slot, evicted.clone()));
                    break Some(Tracker {
                        table: self.clone(),
                        id,
                        evicted,
                    });
                }
            }
            if !counted {
                counted = true;
                self.waiting
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let freed = self.freed.notified();
            let wake = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            if tokio::time::timeout_at(wake, freed).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                break None;
            }
        };
        if counted {
            self.waiting
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        got
    }
}

/// One connection's slot: marks it busy while a request is answered, proven once credentials
/// were accepted, and frees it when dropped.
struct Tracker {
    table: Arc<Table>,
    id: u64,
    evicted: Arc<tokio::sync::Notify>,
}

impl Tracker {
    fn set(&self, busy: bool, proven: bool) {
        if let Some((slot, _)) = self.table.lock().slots.get_mut(&self.id) {
            slot.busy = busy;
            slot.proven |= proven;
            slot.since = std::time::Instant::now();
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.table.lock().slots.remove(&self.id);
        self.table.freed.notify_waiters();
    }
}

/// Serve HTTP/1.1 on one connection (plain or TLS) until it closes.
async fn connection<IO, S: Service>(
    io: IO,
    service: Arc<S>,
    cancel: CancellationToken,
    tracker: &Tracker,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let service = service.clone();
        let cancel = cancel.clone();
        tracker.set(true, false);
        // Credentials shown (the API's token, an upstream signature) and not refused.
        let credentials = req.headers().contains_key(hyper::header::AUTHORIZATION)
            || req.headers().contains_key("webhook-signature");
        async move {
            let mut response = service.answer(req, cancel).await;
            // Every answer, of either listener: never sniffed into another type (a device's id
            // or a receiver's words in JSON are never run as a page or a script).
            response.headers_mut().insert(
                hyper::header::X_CONTENT_TYPE_OPTIONS,
                hyper::header::HeaderValue::from_static("nosniff"),
            );
            let refused = matches!(response.status().as_u16(), 401 | 403);
            tracker.set(false, credentials && !refused);
            Ok::<_, Infallible>(response)
        }
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
        // The console's page and its script and style: static, nothing secret in them.
        open: matches!(path, "/" | "/console.js" | "/console.css"),
    };
    if let Err(refusal) = auth::check(&request, rules, &control.token) {
        return super::http::error(refusal.status, None, refusal.why);
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
    super::routes::route(control, &parts.method, path, query, bytes, cancel).await
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
        return Err(super::http::error(413, None, "request body over 64 KiB"));
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) => Err(super::http::error(413, None, "request body over 64 KiB")),
        Err(_) => Err(super::http::error(
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
