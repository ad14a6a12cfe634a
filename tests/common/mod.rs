//! Real parts for integration tests: a mosquitto broker on a free port, the `edgehook` binary
//! as a child process, and an HTTP receiver that verifies every signature with its own HMAC
//! code (not edgehook's `Signer`), records events and can be told to fail.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use sha2::Sha256;

pub const SECRET: &str = "test-secret-7f3a";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on {port} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real mosquitto, with persistence so it can be restarted with our session intact.
pub struct Mosquitto {
    pub port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_with(dir, "")
    }

    /// Start with extra configuration lines (more listeners, TLS).
    pub fn start_with(dir: &Path, extra: &str) -> Mosquitto {
        let port = free_port();
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // `user root`: started as root, mosquitto would otherwise switch to the
                // `mosquitto` user, which cannot write its persistence file in our temp dir
                // (it is ignored when not started as root).
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 0\nmax_inflight_messages 1000\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n{extra}\n",
                data.display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            port,
            conf,
            child: None,
        };
        m.restart();
        m
    }

    fn binary() -> &'static str {
        [
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
            "/usr/bin/mosquitto",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is not installed (apt-get install -y mosquitto)")
    }

    /// Start again on the same port and persistence directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        // Its log (errors and warnings) goes next to its configuration, to read after a failure.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.conf.with_extension("log"))
            .unwrap();
        let child = Command::new(Self::binary())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        wait_listening(self.port, Duration::from_secs(10));
    }

    /// SIGTERM and wait: what `systemctl restart mosquitto` or an upgrade does. The broker
    /// saves its sessions, queued and in-flight messages to its persistence file.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_kill(c.id(), 15);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("mosquitto did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL: no chance to save sessions.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

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
}

impl Seen {
    pub fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == kind).collect()
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

/// A simulated device connected to the broker on `port` (seed 7).
pub async fn device(
    port: u16,
    id: &str,
    class: firmware_sim::DeviceClass,
) -> firmware_sim::SimDevice {
    let firmware = firmware_sim::Firmware::new(id, class, 7);
    firmware_sim::SimDevice::connect("127.0.0.1", port, firmware, firmware_sim::Topics::default())
        .await
        .unwrap()
}

/// Publish `n` readings, wait for the broker's acks, and return the payloads of those that
/// changed a tracked field.
pub async fn publish(dev: &mut firmware_sim::SimDevice, n: usize, change_ratio: f64) -> Vec<Value> {
    let mut changes = Vec::new();
    for _ in 0..n {
        let (payload, changed) = dev.publish_next(change_ratio).await.unwrap();
        if changed {
            changes.push(payload);
        }
    }
    dev.flushed().await.unwrap();
    changes
}

/// Occupancy sensors `<prefix>-<i>` each publishing a change `pause` apart, until `each`
/// readings are out or `stop` turns true. Returns every (device, seq) the broker acknowledged.
pub fn publishers(
    port: u16,
    prefix: &'static str,
    devices: usize,
    each: Option<usize>,
    pause: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::collections::BTreeSet<(String, u64)>> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..devices {
            let stop = stop.clone();
            tasks.spawn(async move {
                let id = format!("{prefix}-{i}");
                let mut dev = device(port, &id, firmware_sim::DeviceClass::OccupancySensor).await;
                let mut keys = Vec::new();
                while each.is_none_or(|n| keys.len() < n) && !*stop.borrow() {
                    let (payload, changed) = dev.publish_next(1.0).await.unwrap();
                    assert!(changed);
                    keys.push((id.clone(), payload["seq"].as_u64().unwrap()));
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                tokio::time::timeout(Duration::from_secs(60), dev.flushed())
                    .await
                    .expect("the broker acknowledges every publish")
                    .unwrap();
                keys
            });
        }
        let mut all = std::collections::BTreeSet::new();
        while let Some(keys) = tasks.join_next().await {
            all.extend(keys.unwrap());
        }
        all
    })
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
    /// Hold every answer this long (to trigger client timeouts).
    delay_ms: AtomicU64,
    /// Verify Standard Webhooks signatures instead of the hex HMAC.
    standard: Mutex<Option<StandardCheck>>,
    /// Reset every connection (TCP RST) after reading the start of the request.
    reset: AtomicBool,
    resets: AtomicU64,
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
            delay_ms: AtomicU64::new(0),
            standard: Mutex::new(None),
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
        *self.inner.standard.lock().unwrap() = Some(check);
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
        let deadline = Instant::now() + within;
        loop {
            if self.seen(&pred) {
                return;
            }
            if Instant::now() > deadline {
                self.seen(|s| {
                    panic!(
                        "timed out after {within:?} waiting for {what}: {} events, {} duplicates, {} bad signatures, {} failures served",
                        s.events.len(),
                        s.duplicates,
                        s.bad_signatures,
                        s.failures_served
                    )
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
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
    state.served.fetch_add(1, Ordering::Relaxed);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected = hex::encode(mac.finalize().into_bytes());
    let standard = state.standard.lock().unwrap().clone();
    let verified = match standard {
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
    let id = event["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        idempotency.as_deref(),
        Some(id.as_str()),
        "idempotency header must be the event id"
    );
    seen.attempts
        .entry(id.clone())
        .or_default()
        .push(Instant::now());
    let fail = state.fail_with.load(Ordering::SeqCst);
    let device_refused = state
        .fail_device
        .lock()
        .unwrap()
        .as_deref()
        .is_some_and(|d| event["data"]["device_id"] == d);
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
        return Ok(resp.body(Full::new(Bytes::new())).unwrap());
    }
    if seen.ids.insert(id) {
        seen.events.push(event);
        seen.arrived_ms.push(firmware_sim::now_ms());
    } else {
        seen.duplicates += 1;
    }
    reply(StatusCode::OK)
}

/// The daemon under test, as a child process.
pub struct Daemon {
    pub dir: PathBuf,
    pub metrics_port: u16,
    config: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Extra environment for the daemon process.
    pub env: Vec<(String, String)>,
}

/// A config for the test: fast retries, the default demo topics.
pub fn config_text(
    broker_port: u16,
    receiver_url: &str,
    metrics_port: u16,
    state_dir: &Path,
    extra: &str,
) -> String {
    config_with_webhook(
        broker_port,
        &webhook_section(receiver_url, ""),
        metrics_port,
        state_dir,
        extra,
    )
}

/// The test's `[webhook]` section for `receiver_url`: the test secret, a 2 s timeout, fast
/// retries (50 ms – 500 ms), and the keys `extra` adds (`window = 16`, a `headers` table, …).
pub fn webhook_section(receiver_url: &str, extra: &str) -> String {
    format!(
        r#"
[webhook]
url = "{receiver_url}"
secret = "{SECRET}"
timeout = "2s"
{extra}
[webhook.retry]
initial = "50ms"
max = "500ms"
"#
    )
}

/// [`config_text`] with the caller's own `[webhook]` section.
pub fn config_with_webhook(
    broker_port: u16,
    webhook: &str,
    metrics_port: u16,
    state_dir: &Path,
    extra: &str,
) -> String {
    format!(
        r#"
gateway_id = "gw-test"
state_dir = "{state}"
[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "edgehook-under-test"
max_payload_bytes = 65536
reconnect_min = "100ms"
reconnect_max = "500ms"
subscriptions = [
  {{ topic = "sensors/{{device}}/reading", kind = "reading", metadata_fields = ["seq", "ts"] }},
  {{ topic = "rooms/{{device}}/display", kind = "reading", metadata_fields = ["seq", "ts"] }},
  {{ topic = "devices/{{device}}/status", kind = "status" }},
]
{webhook}
[telemetry]
listen = "127.0.0.1:{metrics_port}"
{extra}
"#,
        state = state_dir.display()
    )
}

impl Daemon {
    pub fn new(dir: &Path, broker_port: u16, receiver_url: &str, extra: &str) -> Daemon {
        let metrics_port = free_port();
        let text = config_text(
            broker_port,
            receiver_url,
            metrics_port,
            &dir.join("state"),
            extra,
        );
        Self::with_config(dir, metrics_port, &text)
    }

    /// A daemon whose `[webhook]` section (with its subtables) is `webhook`.
    pub fn new_with_webhook(dir: &Path, broker_port: u16, webhook: &str) -> Daemon {
        let metrics_port = free_port();
        let text = config_with_webhook(broker_port, webhook, metrics_port, &dir.join("state"), "");
        Self::with_config(dir, metrics_port, &text)
    }

    fn with_config(dir: &Path, metrics_port: u16, text: &str) -> Daemon {
        let config = dir.join("edgehook.toml");
        std::fs::write(&config, text).unwrap();
        Daemon {
            dir: dir.to_path_buf(),
            metrics_port,
            config,
            stderr: dir.join("edgehook.stderr"),
            child: None,
            starts: 0,
            env: Vec::new(),
        }
    }

    /// Start the daemon and wait until it is connected to the broker.
    pub fn start(&mut self) {
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.metric("edgehook_mqtt_connected") != Some(1) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("edgehook exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "edgehook did not connect:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Start the daemon without waiting for anything.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap();
        let child = daemon_command()
            .args(["run", "--config"])
            .arg(&self.config)
            .env("EDGEHOOK_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning edgehook");
        self.child = Some(child);
    }

    /// Wait for the daemon to exit by itself; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("edgehook did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, like a power cut for the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe_kill(c.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill(); // do not leave it running past the test
                let _ = c.wait();
                panic!("edgehook did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrite the configuration file (same broker, receiver and state) with other `extra` keys.
    pub fn rewrite_config(&self, broker_port: u16, receiver_url: &str, extra: &str) {
        let state = self.dir.join("state");
        std::fs::write(
            &self.config,
            config_text(broker_port, receiver_url, self.metrics_port, &state, extra),
        )
        .unwrap();
    }

    /// `edgehook outbox <args>` on this daemon's configuration: (exit code, stdout, stderr).
    pub fn outbox_cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_edgehook"))
            .arg("outbox")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("running edgehook outbox");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Replace the `[webhook]` section (and whatever follows it, e.g. `[[endpoints]]`).
    pub fn rewrite_webhook(&mut self, broker_port: u16, webhook: &str) {
        let text = config_with_webhook(
            broker_port,
            webhook,
            self.metrics_port,
            &self.dir.join("state"),
            "",
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Put the state (the outbox) somewhere else, e.g. on a small filesystem.
    pub fn rewrite_state_dir(&mut self, state: &Path, broker_port: u16, receiver_url: &str) {
        std::fs::write(
            &self.config,
            config_text(broker_port, receiver_url, self.metrics_port, state, ""),
        )
        .unwrap();
    }

    /// Send a signal (e.g. 1 = SIGHUP) to the running daemon.
    pub fn signal(&self, signal: i32) {
        unsafe_kill(self.pid().expect("running"), signal);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Wait (at most a minute) until the sample `name` of /metrics is at least `at_least`;
    /// panics with the daemon's log otherwise.
    pub async fn wait_metric(&self, name: &str, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metric(name).is_none_or(|v| v < at_least) {
            assert!(
                Instant::now() < deadline,
                "{name} never reached {at_least} (now {:?}):\n{}",
                self.metric(name),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Scrape one sample from /metrics (exact name with labels).
    pub fn metric(&self, name: &str) -> Option<u64> {
        let text = http_get(self.metrics_port, "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

/// The `edgehook` under test: this build's binary, or `TEST_EDGEHOOK_BIN` run through
/// `TEST_EDGEHOOK_RUNNER` (how CI runs the aarch64 build under qemu-aarch64).
pub fn daemon_command() -> Command {
    let bin = std::env::var("TEST_EDGEHOOK_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_edgehook").to_string());
    match std::env::var("TEST_EDGEHOOK_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut cmd = Command::new(words.next().expect("non-empty"));
            cmd.args(words).arg(bin);
            cmd
        }
        _ => Command::new(bin),
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_kill(pid: u32, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// A minimal blocking HTTP GET on localhost.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

/// The key that identifies one published reading in the events: (device id, seq).
pub fn reading_key(event: &Value) -> (String, u64) {
    (
        event["data"]["device_id"].as_str().unwrap().to_string(),
        event["data"]["fields"]["seq"].as_u64().unwrap(),
    )
}

/// Publish each `(topic, payload)` at QoS 1, not retained, from a plain client with no birth,
/// last-will or retained message of its own; returns once the broker acknowledged them all.
pub async fn publish_plain(port: u16, client_id: &str, messages: &[(&str, &str)]) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (acked_tx, mut acked) = tokio::sync::watch::channel(0usize);
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked_tx.send_modify(|n| *n += 1),
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let want = messages.len();
    let run = async {
        for (topic, payload) in messages {
            client
                .publish(*topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
                .await
                .unwrap();
        }
        acked
            .wait_for(|n| *n >= want)
            .await
            .expect("the publisher's connection stays up");
        client.disconnect().await.unwrap();
        poller.await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the broker acknowledges every publish");
}

/// A power-cut filesystem (`firmware_sim::powercut`) mounted at `<dir>/card`, with the state
/// directory `<dir>/card/state` made and durable, as systemd's `StateDirectory=` makes it.
pub fn powercut_card(dir: &Path, seed: u64) -> (firmware_sim::powercut::Mounted, PathBuf) {
    let card_dir = dir.join("card");
    std::fs::create_dir_all(&card_dir).unwrap();
    let card = firmware_sim::powercut::PowerCut::new(seed)
        .mount(&card_dir)
        .expect("mounting the power-cut filesystem (needs /dev/fuse and fuse3's fusermount3)");
    let state = card_dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::File::open(&card_dir).unwrap().sync_all().unwrap();
    (card, state)
}

/// The peak resident set of process `pid` (VmHWM), in kB; `None` once it is gone.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Run the daemon under libfaketime, its wall clock offset by what `offset_file` says (`+1d`,
/// `-90s`; re-read every second), its monotonic clock real, as across an NTP step. mosquitto
/// and the receivers keep the real clock.
pub fn fake_clock(daemon: &mut Daemon, offset_file: &Path) {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(lib).exists(),
        "libfaketime is not installed (apt-get install faketime)"
    );
    for (k, v) in [
        ("LD_PRELOAD", lib.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.display().to_string()),
        ("FAKETIME_CACHE_DURATION", "1".into()),
    ] {
        daemon.env.push((k.into(), v));
    }
}
