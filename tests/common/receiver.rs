//! The HTTP receiver: verifies every signature with its own HMAC code (not edgehook's
//! `Signer`), records events and can be told to fail.

use super::*;

/// What the receiver has seen.
#[derive(Default, Debug)]
pub struct Seen {
    /// First receipt of each event id, in arrival order.
    pub events: Vec<Value>,
    /// When each of `events` arrived, milliseconds since the Unix epoch.
    pub arrived_ms: Vec<u64>,
    pub ids: HashSet<String>,
    pub duplicates: u64,
    pub bad_signatures: u64,
    pub failures_served: u64,
    pub requests: u64,
    /// Requests that were not POSTs (a client following a redirect), and how many of them
    /// carried a signature or the API key header.
    pub other_methods: u64,
    pub other_methods_with_secrets: u64,
    /// Every attempt per event id (accepted or refused), with its arrival time.
    pub attempts: HashMap<String, Vec<Instant>>,
    /// Requests that came gzipped.
    pub gzipped: u64,
    /// The size of every batch (a request whose body is an array of events).
    pub batches: Vec<usize>,
}

impl Seen {
    pub fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == kind).collect()
    }

    /// The `data` of every `device.action_completed` told of action `id`.
    pub fn told_of_action(&self, id: &str) -> Vec<Value> {
        self.of_type("device.action_completed")
            .into_iter()
            .filter(|e| e["data"]["action_id"] == id)
            .map(|e| e["data"].clone())
            .collect()
    }

    /// (device, seq) of every reading delivered.
    pub fn reading_keys(&self) -> std::collections::BTreeSet<(String, u64)> {
        self.of_type("sensor.reading.updated")
            .into_iter()
            .map(reading_key)
            .collect()
    }

    /// The `fields` of each `sensor.reading.updated` of `device`, in arrival order.
    pub fn readings_of(&self, device: &str) -> Vec<Value> {
        self.of_type("sensor.reading.updated")
            .into_iter()
            .filter(|e| e["data"]["device_id"] == device)
            .map(|e| e["data"]["fields"].clone())
            .collect()
    }
}

struct Inner {
    seen: Mutex<Seen>,
    fail_with: AtomicU16,
    served: AtomicU64,
    /// Refuse only this device's events (with `fail_with`, or `fail_device_status`).
    fail_device: Mutex<Option<String>>,
    fail_device_status: AtomicU16,
    /// Answer every POST with `302 Found` and this `Location`.
    redirect: Mutex<Option<String>>,
    /// `Retry-After` value to send with refusals.
    retry_after: Mutex<Option<String>>,
    /// The body of every answer to a verified request, accepted or refused (empty by default).
    says: Mutex<String>,
    /// Hold every answer this long (to trigger client timeouts).
    delay_ms: AtomicU64,
    /// Verify another scheme's signatures instead of the default hex HMAC.
    check: Mutex<Option<Check>>,
    /// Reset every connection (TCP RST) after reading the start of the request.
    reset: AtomicBool,
    resets: AtomicU64,
}

/// What a receiver other than the default checks.
#[derive(Clone)]
pub enum Check {
    Standard(StandardCheck),
    Hmac(HmacCheck),
}

impl Check {
    fn verify(&self, headers: &hyper::HeaderMap, body: &[u8]) -> bool {
        match self {
            Check::Standard(c) => c.verify(headers, body),
            Check::Hmac(c) => c.verify(headers, body),
        }
    }
}

/// A platform's HMAC signature as its public documentation says its receivers check it
/// (written from that text, not from edgehook's code): ROOMZ (`documentation/signature.md`:
/// `Convert.ToBase64String(HMACSHA512(UTF8(secret)).ComputeHash(payload))` in
/// `Roomz-Signature`), gospace (an HMAC SHA256 of the body in `x-gospace-signature`), a
/// GitHub-style `sha256=` prefix...
#[derive(Clone)]
pub struct HmacCheck {
    pub header: &'static str,
    pub sha512: bool,
    pub base64: bool,
    pub prefix: &'static str,
    pub secret: String,
    pub content_type: &'static str,
    /// A header every request must carry, e.g. an API key.
    pub required_header: Option<(&'static str, &'static str)>,
}

impl HmacCheck {
    fn verify(&self, headers: &hyper::HeaderMap, body: &[u8]) -> bool {
        use base64::Engine;
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let mac = if self.sha512 {
            let mut m = Hmac::<sha2::Sha512>::new_from_slice(self.secret.as_bytes()).unwrap();
            m.update(body);
            m.finalize().into_bytes().to_vec()
        } else {
            let mut m = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()).unwrap();
            m.update(body);
            m.finalize().into_bytes().to_vec()
        };
        let expected = if self.base64 {
            base64::engine::general_purpose::STANDARD.encode(mac)
        } else {
            hex::encode(mac)
        };
        let expected = format!("{}{expected}", self.prefix);
        get("content-type") == Some(self.content_type)
            && self.required_header.is_none_or(|(k, v)| get(k) == Some(v))
            && get(self.header).is_some_and(|sigs| sigs.split(',').any(|s| s == expected))
    }
}

/// What a Standard Webhooks receiver checks, with its own code (not edgehook's).
#[derive(Clone)]
pub struct StandardCheck {
    /// The receiver's secret, `whsec_...`.
    pub secret: String,
    pub content_type: String,
    /// A header every request must carry, e.g. an API key.
    pub required_header: Option<(String, String)>,
}

impl StandardCheck {
    fn verify(&self, headers: &hyper::HeaderMap, body: &[u8]) -> bool {
        use base64::Engine;
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(id), Some(ts), Some(sigs)) = (
            get("webhook-id"),
            get("webhook-timestamp"),
            get("webhook-signature"),
        ) else {
            return false;
        };
        let fresh = ts
            .parse::<u64>()
            .is_ok_and(|t| t.abs_diff(firmware_sim::now_ms() / 1000) < 300);
        let key = base64::engine::general_purpose::STANDARD
            .decode(self.secret.trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        let expected = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        let header_ok = self
            .required_header
            .as_ref()
            .is_none_or(|(k, v)| get(k) == Some(v.as_str()));
        fresh
            && header_ok
            && get("content-type") == Some(self.content_type.as_str())
            && sigs.split(' ').any(|s| s == expected)
    }
}

/// A webhook receiver on 127.0.0.1:<free port>.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Inner>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            seen: Mutex::new(Seen::default()),
            fail_with: AtomicU16::new(0),
            served: AtomicU64::new(0),
            fail_device: Mutex::new(None),
            fail_device_status: AtomicU16::new(503),
            redirect: Mutex::new(None),
            retry_after: Mutex::new(None),
            says: Mutex::new(String::new()),
            delay_ms: AtomicU64::new(0),
            check: Mutex::new(None),
            reset: AtomicBool::new(false),
            resets: AtomicU64::new(0),
        });
        let state = inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if state.reset.load(Ordering::SeqCst) {
                    // Read the start of the request, then abort: SO_LINGER 0 makes the close a RST.
                    let _ = stream.readable().await;
                    let _ = stream.try_read(&mut [0u8; 512]);
                    #[allow(deprecated)] // a zero linger resets at once; it cannot block
                    let _ = stream.set_linger(Some(Duration::ZERO));
                    state.resets.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                    continue;
                }
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            inner,
        }
    }

    /// Verify Standard Webhooks signatures (and the format's content type) from now on.
    pub fn expect_standard(&self, check: StandardCheck) {
        *self.inner.check.lock().unwrap() = Some(Check::Standard(check));
    }

    /// Verify this HMAC signature instead of the default.
    pub fn expect_hmac(&self, check: HmacCheck) {
        *self.inner.check.lock().unwrap() = Some(Check::Hmac(check));
    }

    /// Answer every request with `status` (0 = accept normally).
    pub fn fail_with(&self, status: u16) {
        self.inner.fail_with.store(status, Ordering::SeqCst);
    }

    /// Refuse (503) only the events of `device`; `None` stops it.
    pub fn fail_device(&self, device: Option<&str>) {
        self.fail_device_with(device, 503);
    }

    /// Refuse only the events of `device`, with `status`; `None` stops it.
    pub fn fail_device_with(&self, device: Option<&str>, status: u16) {
        self.inner
            .fail_device_status
            .store(status, Ordering::SeqCst);
        *self.inner.fail_device.lock().unwrap() = device.map(str::to_owned);
    }

    /// Answer every POST with `302 Found, Location: <location>` (as an SSO gateway in front of
    /// a receiver does), and any other method with 200; `None` serves normally again.
    pub fn redirect(&self, location: Option<&str>) {
        *self.inner.redirect.lock().unwrap() = location.map(str::to_owned);
    }

    /// Say `text` in the body of every answer to a verified request, accepted or refused.
    pub fn say(&self, text: &str) {
        *self.inner.says.lock().unwrap() = text.to_string();
    }

    /// Send this `Retry-After` with every refusal.
    pub fn retry_after(&self, value: Option<&str>) {
        *self.inner.retry_after.lock().unwrap() = value.map(str::to_owned);
    }

    /// Reset every new connection mid-request (true) or serve normally again (false).
    pub fn reset_connections(&self, on: bool) {
        self.inner.reset.store(on, Ordering::SeqCst);
    }

    /// Connections reset so far.
    pub fn resets(&self) -> u64 {
        self.inner.resets.load(Ordering::SeqCst)
    }

    /// Requests read whole so far (answered or still held by [`Receiver::delay`]).
    pub fn served(&self) -> u64 {
        self.inner.served.load(Ordering::Relaxed)
    }

    /// Hold each answer this long before sending it.
    pub fn delay(&self, d: Duration) {
        self.inner
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.inner.seen.lock().unwrap())
    }

    /// Poll until `pred` holds; panics with `what` and the state after `within`.
    pub async fn wait_until(&self, within: Duration, what: &str, pred: impl Fn(&Seen) -> bool) {
        super::until(Instant::now() + within, || self.seen(&pred), || {
            self.seen(|s| {
                format!(
                    "timed out after {within:?} waiting for {what}: {} events, {} duplicates, {} bad signatures, {} failures served",
                    s.events.len(),
                    s.duplicates,
                    s.bad_signatures,
                    s.failures_served
                )
            })
        })
        .await;
    }
}

async fn handle(
    state: Arc<Inner>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode| {
        Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .unwrap())
    };
    let signature = req
        .headers()
        .get("x-webhook-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let idempotency = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type_ok = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/json");
    let headers = req.headers().clone();
    if req.method() != hyper::Method::POST {
        let mut seen = state.seen.lock().unwrap();
        seen.other_methods += 1;
        if signature.is_some() || headers.contains_key("x-api-key") {
            seen.other_methods_with_secrets += 1;
        }
        return reply(StatusCode::OK);
    }
    if let Some(location) = state.redirect.lock().unwrap().clone() {
        state.seen.lock().unwrap().requests += 1;
        return Ok(Response::builder()
            .status(StatusCode::FOUND)
            .header("location", location)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return reply(StatusCode::BAD_REQUEST);
    };
    // A gzipped body is signed before compression (as edgehook's README says a receiver
    // verifies it): undo it first.
    let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        use std::io::Read;
        let mut plain = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .is_err()
        {
            return reply(StatusCode::BAD_REQUEST);
        }
        state.seen.lock().unwrap().gzipped += 1;
        Bytes::from(plain)
    } else {
        body
    };
    state.served.fetch_add(1, Ordering::Relaxed);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected = hex::encode(mac.finalize().into_bytes());
    let check = state.check.lock().unwrap().clone();
    let verified = match check {
        Some(check) => check.verify(&headers, &body),
        None => signature.as_deref() == Some(expected.as_str()) && content_type_ok,
    };
    let event = serde_json::from_slice::<Value>(&body).ok();
    let mut seen = state.seen.lock().unwrap();
    seen.requests += 1;
    if !verified {
        seen.bad_signatures += 1;
        return reply(StatusCode::UNAUTHORIZED);
    }
    let Some(event) = event else {
        return reply(StatusCode::BAD_REQUEST);
    };
    // A batch is an array of events, keyed by its own id; one event is keyed by its id (or,
    // without one in the body, gospace's, by the idempotency key).
    let events: Vec<Value> = match event {
        Value::Array(events) => {
            seen.batches.push(events.len());
            events
        }
        event => {
            if let Some(id) = event["id"].as_str() {
                assert_eq!(
                    idempotency.as_deref(),
                    Some(id),
                    "idempotency header must be the event id"
                );
            }
            vec![event]
        }
    };
    let id_of = |event: &Value| match event["id"].as_str() {
        Some(id) => id.to_string(),
        None => idempotency.clone().unwrap_or_default(),
    };
    for event in &events {
        seen.attempts
            .entry(id_of(event))
            .or_default()
            .push(Instant::now());
    }
    let fail = state.fail_with.load(Ordering::SeqCst);
    let refused_device = state.fail_device.lock().unwrap().clone();
    let device_refused = refused_device
        .as_deref()
        .is_some_and(|d| events.iter().any(|e| e["data"]["device_id"] == d));
    if fail != 0 || device_refused {
        seen.failures_served += 1;
        let status = if fail != 0 {
            fail
        } else {
            state.fail_device_status.load(Ordering::SeqCst)
        };
        let status = StatusCode::from_u16(status).unwrap();
        let mut resp = Response::builder().status(status);
        if let Some(ra) = state.retry_after.lock().unwrap().as_deref() {
            resp = resp.header("retry-after", ra);
        }
        let says = state.says.lock().unwrap().clone();
        return Ok(resp.body(Full::new(Bytes::from(says))).unwrap());
    }
    for event in events {
        if seen.ids.insert(id_of(&event)) {
            seen.events.push(event);
            seen.arrived_ms.push(firmware_sim::now_ms());
        } else {
            seen.duplicates += 1;
        }
    }
    let says = state.says.lock().unwrap().clone();
    Ok(Response::new(Full::new(Bytes::from(says))))
}
