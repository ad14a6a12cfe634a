//! Upstream as a gateway meets it: [`sign`] (Standard Webhooks, with the tests' own HMAC code),
//! [`push`] (a signed command POSTed to the push listener) and [`Upstream`], a pull server on a
//! free port that keeps a list of commands, verifies every poll's signature with its own code,
//! long-polls, and answers signed (or, when told, with another secret).

use super::*;

/// The tests' upstream secret.
pub const UPSTREAM_SECRET: &str = "whsec_dXBzdHJlYW0tc2VjcmV0LWZvci10ZXN0cy0xMjM0NQ==";

/// `webhook-signature` for `id`, `ts`, `body` under `secret` (`whsec_...`).
pub fn sign(secret: &str, id: &str, ts: u64, body: &[u8]) -> String {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Unix seconds `secs` as RFC 3339 (a booking's start and end).
pub fn rfc3339_at(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

pub fn unix_now() -> u64 {
    firmware_sim::now_ms() / 1000
}

/// POST `command` to the push listener on `port`, signed with `secret` as message `id` at
/// `ts`.
pub async fn push_signed(port: u16, command: &Value, secret: &str, id: &str, ts: u64) -> Answer {
    let body = command.to_string();
    raw(
        port,
        "POST",
        "/v1/commands",
        &push_headers(port, &body, secret, id, ts),
        Some(&body),
    )
    .await
}

/// The headers of a command pushed as [`push_signed`] does.
pub fn push_headers(
    port: u16,
    body: &str,
    secret: &str,
    id: &str,
    ts: u64,
) -> Vec<(String, String)> {
    vec![
        ("Host".to_string(), format!("127.0.0.1:{port}")),
        ("webhook-id".to_string(), id.to_string()),
        ("webhook-timestamp".to_string(), ts.to_string()),
        (
            "webhook-signature".to_string(),
            sign(secret, id, ts, body.as_bytes()),
        ),
    ]
}

/// [`push_signed`] now, with the tests' secret.
pub async fn push(port: u16, command: &Value, id: &str) -> Answer {
    push_signed(port, command, UPSTREAM_SECRET, id, unix_now()).await
}

#[derive(Default)]
struct PullState {
    /// Every command ever queued (`{"id", "type", "data"}`); cursor `c-N` is after the first N.
    commands: Vec<Value>,
    /// Every verified poll's body, in order.
    polls: Vec<Value>,
    /// Polls whose signature did not verify.
    bad_polls: u64,
    /// Answer with this secret instead of [`UPSTREAM_SECRET`].
    answer_secret: Option<String>,
}

/// A pull-mode upstream on 127.0.0.1:<free port>, URL [`Upstream::url`].
#[derive(Clone)]
pub struct Upstream {
    pub url: String,
    state: Arc<(Mutex<PullState>, tokio::sync::Notify)>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new((Mutex::new(PullState::default()), tokio::sync::Notify::new()));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| poll(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            url: format!("http://{addr}/edge/poll"),
            state,
        }
    }

    /// Queue a command for the gateway.
    pub fn queue(&self, command: Value) {
        self.queue_all([command]);
    }

    /// Queue commands at once (one answer takes them all).
    pub fn queue_all(&self, commands: impl IntoIterator<Item = Value>) {
        self.state.0.lock().unwrap().commands.extend(commands);
        self.state.1.notify_waiters();
    }

    /// Sign answers with `secret` (None: the right one again).
    pub fn answer_with(&self, secret: Option<&str>) {
        self.state.0.lock().unwrap().answer_secret = secret.map(str::to_owned);
    }

    /// Every verified poll so far.
    pub fn polls(&self) -> Vec<Value> {
        self.state.0.lock().unwrap().polls.clone()
    }

    pub fn bad_polls(&self) -> u64 {
        self.state.0.lock().unwrap().bad_polls
    }

    /// Wait until a verified poll satisfies `pred`; it.
    pub async fn wait_poll(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(p) = self.polls().into_iter().find(|p| pred(p)) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no poll {what} within {within:?}; polls: {:#?}",
                self.polls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn poll(
    state: Arc<(Mutex<PullState>, tokio::sync::Notify)>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let verified = match (&id, &ts, &sig) {
        (Some(id), Some(ts), Some(sig)) => {
            let fresh = ts
                .parse::<u64>()
                .is_ok_and(|t| t.abs_diff(unix_now()) < 300);
            let expected = ts
                .parse::<u64>()
                .map(|t| sign(UPSTREAM_SECRET, id, t, &body))
                .unwrap_or_default();
            fresh && sig.split(' ').any(|s| s == expected)
        }
        _ => false,
    };
    let reply = |status: u16, body: String, headers: Vec<(String, String)>| {
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        Ok(r.body(Full::new(Bytes::from(body))).unwrap())
    };
    if !verified {
        state.0.lock().unwrap().bad_polls += 1;
        return reply(401, "{\"error\":\"bad signature\"}".into(), vec![]);
    }
    let poll: Value = serde_json::from_slice(&body).unwrap();
    state.0.lock().unwrap().polls.push(poll.clone());
    let after: usize = poll["cursor"]
        .as_str()
        .and_then(|c| c.strip_prefix("c-")?.parse().ok())
        .unwrap_or(0);
    let wait = Duration::from_secs(poll["wait"].as_u64().unwrap_or(0));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = state.1.notified();
        if state.0.lock().unwrap().commands.len() > after {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    let (answer, secret) = {
        let s = state.0.lock().unwrap();
        let commands: Vec<Value> = s.commands.iter().skip(after).cloned().collect();
        let answer = serde_json::json!({
            "cursor": format!("c-{}", s.commands.len().max(after)),
            "commands": commands,
        });
        let secret = s
            .answer_secret
            .clone()
            .unwrap_or(UPSTREAM_SECRET.to_string());
        (answer.to_string(), secret)
    };
    let id = format!("ans_{}", uuid::Uuid::now_v7().simple());
    let ts = unix_now();
    let signature = sign(&secret, &id, ts, answer.as_bytes());
    reply(
        200,
        answer.clone(),
        vec![
            ("content-type".into(), "application/json".into()),
            ("webhook-id".into(), id),
            ("webhook-timestamp".into(), ts.to_string()),
            ("webhook-signature".into(), signature),
        ],
    )
}
