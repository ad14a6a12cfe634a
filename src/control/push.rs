//! The push listener (`[upstream.push]`): upstream POSTs one command to `/v1/commands`, signed
//! with Standard Webhooks. Its own listener, not the local API's: it faces upstream, takes
//! nothing but signed commands, and has the local server's bounds (connections, header and
//! body timeouts, 64 KiB bodies). Loopback, or anywhere with TLS (checked by config).
//!
//! Answers: what [`Control::take`] says (202 taken, 200 already known, 404 unknown device or
//! workspace, 422 action not allowed, 429 with `Retry-After`), 400 naming the field of a
//! malformed command, 401 for a request that is unsigned, outside the timestamp tolerance,
//! wrongly signed or replayed (counted by reason, logged at most once a minute per reason),
//! 503 when the replay window is full. Only a request answered 2xx uses up its `webhook-id`:
//! a sender's retry of any other is answered again, not refused as a replay.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::{Request, Response};
use tokio_util::sync::CancellationToken;

use super::server::{read_body, Body, Service};
use super::Control;
use crate::fault_log::FaultLog;
use crate::upstream::command;
use crate::upstream::gate::{Gate, Signed, Unauthorized};

/// The one path it serves.
pub const PATH: &str = "/v1/commands";

pub struct Push {
    control: Arc<Control>,
    gate: Mutex<Gate>,
    log: Mutex<FaultLog>,
}

impl Push {
    pub fn new(control: Arc<Control>, gate: Gate) -> Push {
        Push {
            control,
            gate: Mutex::new(gate),
            log: Mutex::new(FaultLog::new(Duration::from_secs(60))),
        }
    }

    /// Count a refusal and log it (at most once a minute per reason).
    fn refused(&self, via: &'static str, why: Unauthorized) {
        refused(&self.control, &self.log, via, why);
    }
}

/// Count a gate's refusal and log it at most once a minute per reason (`log`).
pub(super) fn refused(
    control: &Control,
    log: &Mutex<FaultLog>,
    via: &'static str,
    why: Unauthorized,
) {
    control.metrics.upstream.refused(via, why);
    let admitted = log
        .lock()
        .expect("not poisoned")
        .admit(why.as_str(), via, Instant::now());
    if let Some(suppressed) = admitted {
        tracing::warn!(
            via,
            reason = why.as_str(),
            suppressed,
            "refused a command from upstream: {} (more like it are counted in edgehook_upstream_refused_total and logged once a minute)",
            why.why()
        );
    }
}

impl Service for Push {
    const WHAT: &'static str = "push listener for upstream commands (POST /v1/commands)";

    async fn answer(
        &self,
        req: Request<hyper::body::Incoming>,
        _cancel: CancellationToken,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        if parts.uri.path() != PATH {
            return super::http::error(
                404,
                None,
                "nothing here: commands are POSTed to /v1/commands",
            );
        }
        if parts.method != hyper::Method::POST {
            let mut r = super::http::error(405, None, "commands are POSTed");
            r.headers_mut()
                .insert("allow", hyper::header::HeaderValue::from_static("POST"));
            return r;
        }
        let bytes = match read_body(&parts, body).await {
            Ok(bytes) => bytes,
            Err(refused) => return refused,
        };
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let signed = Signed {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
        };
        let now = crate::clock::system_now();
        let checked = self
            .gate
            .lock()
            .expect("not poisoned")
            .check(signed, &bytes, now / 1000);
        if let Err(why) = checked {
            self.refused("push", why);
            let status = if why == Unauthorized::Busy { 503 } else { 401 };
            return super::http::error(status, None, why.why());
        }
        let id = signed.id.unwrap_or_default().trim();
        let reply = match serde_json::from_slice(&bytes) {
            Err(e) => {
                super::commands::Reply::error(400, None, &format!("the body is not JSON: {e}"))
            }
            Ok(value) => match command::parse(&value, now) {
                Err(e) => super::commands::Reply::error(400, Some(&e.field), &e.message),
                Ok(command) => self.control.take(command).await,
            },
        };
        if !(200..300).contains(&reply.status) {
            // Only a taken request uses up its id: a sender retries any other answer with the
            // same webhook-id (as Standard Webhooks senders do), and gets the same answer again,
            // not a 401.
            self.gate.lock().expect("not poisoned").release(id);
        }
        self.control.metrics.upstream.taken("push", reply.status);
        reply.into_response()
    }
}
