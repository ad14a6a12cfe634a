//! The hostile-input harness (#43), beside the fault harness: seeded, run in CI on fixed
//! seeds. Each seed throws generated hostile input at a real daemon (a real broker, a
//! verifying receiver, systemd's notify socket played by the test) on every way in at once:
//! payloads that are deep, huge, wide, numerically extreme, not UTF-8 or not JSON, under
//! made-up and malformed device ids, at every subscription kind and at jq mappings; hostile
//! HTTP clients at the local listener (garbage, huge headers, half requests, hostile bodies
//! with the token); hostile commands in a pulled answer; and a second endpoint whose receiver
//! misbehaves (errors, resets, redirects, hangs). Meanwhile three good devices publish
//! numbered readings. Checked: the daemon never dies, its watchdog is fed throughout, its
//! peak RSS stays under the unit's `MemoryMax`, no jq worker is left behind, and every good
//! reading reaches the good receiver (nothing acknowledged is lost).
//!
//! `TEST_HOSTILE_SEED=N cargo test --test hostile_harness -- one_seed --nocapture` replays one
//! seed; `TEST_HOSTILE_SEEDS=N` runs N random ones.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The unit's `MemoryMax=96M`.
const MEMORY_MAX_KB: u64 = 96 * 1024;
const GOOD_DEVICES: usize = 3;
const GOOD_READINGS: u64 = 12;
const LONG: Duration = Duration::from_secs(90);

/// A hostile payload, from `rng`.
fn payload(rng: &mut fastrand::Rng) -> Vec<u8> {
    let n = |rng: &mut fastrand::Rng, max: usize| rng.usize(1..=max);
    match rng.u8(..16) {
        0 => "[".repeat(n(rng, 12_000)).into_bytes(),
        1 => "{\"a\":".repeat(n(rng, 5_000)).into_bytes(),
        2 => json!({"presence": true, "blob": "x".repeat(n(rng, 60_000))})
            .to_string()
            .into_bytes(),
        3 => {
            let wide: serde_json::Map<String, Value> =
                (0..n(rng, 3_000)).map(|i| (format!("f{i}"), json!(i))).collect();
            Value::Object(wide).to_string().into_bytes()
        }
        4 => br#"{"temperature": 1e308, "humidity": -1e308, "co2": 123456789012345678901234567890, "t": -0, "u": 1e-400}"#.to_vec(),
        5 => (0..n(rng, 2_000)).map(|_| rng.u8(..)).collect(),
        6 => vec![0xff, 0xfe, b'{', 0x80, b'}'],
        7 => br#"{"presence": tru"#.to_vec(),
        8 => Vec::new(),
        9 => b"null".to_vec(),
        10 => format!(r#"{{"n": {}}}"#, ["1e12", "1e18", "-5", "\"x\""][rng.usize(..4)]).into_bytes(),
        11 => format!(r#"{{"level": {}}}"#, [1_000_000_000u64, 1 << 60, 3][rng.usize(..3)]).into_bytes(),
        12 => br#"{"state": "offline"}"#.to_vec(),
        13 => json!({"id": "a-x", "status": ["succeeded"], "result": {"deep": "[".repeat(300)}})
            .to_string()
            .into_bytes(),
        14 => json!({"presence": "yes", "temperature": "warm", "seq": "one"}).to_string().into_bytes(),
        _ => json!({"dev": {"eui": [1, 2]}, "object": {"presence": true}}).to_string().into_bytes(),
    }
}

/// A device id as a hostile publisher might write one into a topic.
fn device_id(rng: &mut fastrand::Rng) -> String {
    match rng.u8(..8) {
        0 => "d".repeat(rng.usize(100..400)),
        1 => "..".into(),
        2 => "ünïcødé-ø".into(),
        3 => String::new(),
        4 => "with space".into(),
        _ => format!("made-up-{}", rng.u32(..10_000)),
    }
}

fn topic(rng: &mut fastrand::Rng) -> String {
    let id = device_id(rng);
    match rng.u8(..6) {
        0 => format!("sensors/{id}/reading"),
        1 => format!("devices/{id}/status"),
        2 => format!("devices/{id}/actions/result"),
        3 => format!("rooms/{id}/display"),
        4 => format!("mapped/{id}"),
        _ => "lora/app/up".into(),
    }
}

/// One hostile HTTP exchange with the local listener (its outcome does not matter: that the
/// daemon lives through it does).
async fn hostile_http(rng: &mut fastrand::Rng, port: u16, token: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let host = format!("127.0.0.1:{port}");
    let request: Vec<u8> = match rng.u8(..8) {
        0 => (0..rng.usize(1..4096)).map(|_| rng.u8(..)).collect(),
        1 => format!("GET /v1/devices HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000)).into_bytes(),
        2 => format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n").into_bytes(), // never ends
        3 => {
            let body = payload(rng);
            let mut r = format!(
                "POST /v1/endpoints HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        }
        4 => format!("GET /v1/outbox/events?limit=999999999999&offset=-1&type=%ff%fe HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes(),
        5 => format!("POST /v1/actions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: 999999999\r\n\r\n{{").into_bytes(),
        6 => format!("DELETE /v1/devices/{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n", "%2F..".repeat(50)).into_bytes(),
        _ => format!("GET /v1/gateway HTTP/1.1\r\nHost: evil.example\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n").into_bytes(),
    };
    let _ = s.write_all(&request).await;
    let mut buf = vec![0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
}

/// A command upstream might send that is not one.
fn hostile_command(rng: &mut fastrand::Rng, i: usize) -> Value {
    match rng.u8(..6) {
        0 => json!("booking.start"),
        1 => json!({"id": i, "type": "booking.start"}),
        2 => {
            json!({"id": format!("h-{i}"), "type": "booking.start", "data": {"booking_id": "x".repeat(5000), "workspace_id": [1], "start": "yesterday"}})
        }
        3 => {
            json!({"id": format!("h-{i}"), "type": "device.action_requested", "data": {"id": format!("a-{i}"), "device": "good-0", "name": "nope", "params": {"deep": "[".repeat(500)}}})
        }
        4 => json!({"id": format!("h-{i}"), "type": "no.such.type", "data": null}),
        _ => json!({"id": "x".repeat(300), "type": "booking.end", "data": {}}),
    }
}

/// The daemon's children (its jq workers).
fn children(pid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rfind(')')
                .and_then(|i| stat[i + 2..].split(' ').nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .count()
}

async fn run(seed: u64) {
    eprintln!("hostile harness: seed {seed} (replay: TEST_HOSTILE_SEED={seed} cargo test --test hostile_harness -- one_seed --nocapture)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let good = Receiver::start().await;
    let rough = Receiver::start().await;
    let upstream = Upstream::start().await;
    // The ecosystems' presets too, LoRaWAN's radio metadata on or off (drawn apart, so that
    // earlier seeds keep their scenarios): their uplinks go through jq mappings.
    let mut prng = fastrand::Rng::with_seed(seed ^ 0x7ad1_0000);
    let radio = prng.bool();
    let (mut daemon, metrics_port) =
        hostile_daemon(dir.path(), broker.port, [&good, &rough], &upstream, radio);
    // One worker at most per jq filter: the `mapped/` subscription's, ChirpStack's status and
    // Shelly's notifications, and with radio metadata both LoRaWAN uplinks'.
    let filters = 3 + if radio { 2 } else { 0 };
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    daemon
        .env
        .push(("NOTIFY_SOCKET".into(), notify.display().to_string()));
    daemon.env.push(("WATCHDOG_USEC".into(), "3000000".into()));
    daemon.start();
    let pid = daemon.pid().unwrap();
    let token = daemon.token();

    let stop = Arc::new(AtomicBool::new(false));
    let watchdog = watch_pings(sock, stop.clone());

    // The rough receiver misbehaves in turn; the good one never does.
    let misbehave = {
        let rough = rough.clone();
        let mut rrng = fastrand::Rng::with_seed(seed ^ 0x0b ^ 0xad);
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                rough.fail_with(0);
                rough.delay(Duration::ZERO);
                rough.reset_connections(false);
                rough.redirect(None);
                match rrng.u8(..5) {
                    0 => rough.fail_with([500, 429, 400, 404][rrng.usize(..4)]),
                    1 => rough.delay(Duration::from_secs(3)),
                    2 => rough.reset_connections(true),
                    3 => rough.redirect(Some("http://127.0.0.1:1/elsewhere")),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(rrng.u64(100..600))).await;
            }
        })
    };

    // Hostile commands in pulled answers (the answers themselves signed).
    let mut crng = fastrand::Rng::with_seed(seed ^ 0xc0ffee);
    upstream.queue_all((0..crng.usize(3..10)).map(|i| hostile_command(&mut crng, i)));

    // Hostile HTTP clients, at the same time as the devices.
    let http = {
        let mut hrng = fastrand::Rng::with_seed(seed ^ 0x4777);
        let token = token.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                hostile_http(&mut hrng, metrics_port, &token).await;
            }
        })
    };

    publish_rounds(broker.port, &mut rng, &mut prng).await;
    http.await.unwrap();

    // Every good reading reaches the good receiver.
    good.wait_until(LONG, "every good reading", |s| {
        (0..GOOD_DEVICES).all(|d| s.readings_of(&format!("good-{d}")).len() as u64 == GOOD_READINGS)
    })
    .await;
    every_good_reading_in_order(&good, seed);
    // The pulled answer was taken: the cursor moved past the hostile commands.
    upstream
        .wait_poll(LONG, "past the hostile commands", |p| {
            p["cursor"].as_str().is_some()
        })
        .await;

    stop.store(true, Ordering::Relaxed);
    misbehave.await.unwrap();
    let longest = watchdog.join().unwrap();
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(alive, "seed {seed}: the daemon died:\n{}", daemon.log());
    assert!(
        http_get(metrics_port, "/healthz").is_some(),
        "seed {seed}: /healthz unanswered"
    );
    assert!(
        longest < Duration::from_secs(3),
        "seed {seed}: no watchdog ping for {longest:?}"
    );
    let peak = peak_rss_kb(pid).unwrap();
    assert!(peak < MEMORY_MAX_KB, "seed {seed}: peak RSS {peak} kB");
    let workers = children(pid);
    assert!(
        workers <= filters,
        "seed {seed}: {workers} jq workers ({filters} filters)"
    );
    assert_eq!(
        daemon.terminate(),
        Some(0),
        "seed {seed}:\n{}",
        daemon.log()
    );
    eprintln!(
        "hostile harness: seed {seed} ok (peak RSS {peak} kB, longest watchdog gap {longest:?})"
    );
}

/// The daemon under attack: a good endpoint and a rough one, upstream's pull, a jq mapping
/// for hostile readings, a LoRaWAN subscription and the ecosystems' presets (`radio`: with
/// LoRaWAN's radio metadata). Its control API's port with it.
fn hostile_daemon(
    dir: &std::path::Path,
    broker_port: u16,
    [good, rough]: [&Receiver; 2],
    upstream: &Upstream,
    radio: bool,
) -> (Daemon, u16) {
    let webhook = format!(
        r#"{}
[[endpoints]]
name = "rough"
url = "{}"
secret = "{SECRET}"
timeout = "1s"
[endpoints.retry]
initial = "50ms"
max = "300ms"

[upstream]
secrets = ["{UPSTREAM_SECRET}"]
tolerance = "5m"
[upstream.pull]
url = "{}"
wait = "1s"
"#,
        webhook_section(&good.url, ""),
        rough.url,
        upstream.url
    );
    let metrics_port = free_port();
    let text = config_with_webhook(broker_port, &webhook, metrics_port, &dir.join("state"), "")
        .replacen(
            "subscriptions = [",
            r##"subscriptions = [
  { topic = "mapped/{device}", kind = "reading", jq = '{v: .v, spin: (if (.n | type) == "number" then last(range(0; .n)) else 0 end), bar: ("#" * ((.level // 1) | if type == "number" then . else 1 end) | length)}' },
  { topic = "lora/+/up", kind = "reading", device = "/dev/eui", fields = "/object" },"##,
            1,
        );
    let mut daemon = Daemon::with_config(dir, metrics_port, &text);
    daemon.env.push((
        "EDGEHOOK_MQTT__PRESETS".into(),
        "[chirpstack, the_things_stack, shelly]".into(),
    ));
    daemon
        .env
        .push(("EDGEHOOK_MQTT__RADIO_METADATA".into(), radio.to_string()));
    (daemon, metrics_port)
}

/// systemd's side: the watchdog pings on `sock`, and the longest gap between two, once `stop`.
fn watch_pings(sock: UnixDatagram, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut last = Instant::now();
        let mut longest = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "WATCHDOG=1")
                {
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                }
            }
        }
        longest.max(last.elapsed())
    })
}

/// Hostile publishers and the good devices, interleaved, in a few rounds; hostile payloads at
/// the presets' topics from their own generator `prng`.
async fn publish_rounds(port: u16, rng: &mut fastrand::Rng, prng: &mut fastrand::Rng) {
    for round in 0..GOOD_READINGS {
        let mut messages: Vec<(String, Vec<u8>)> = (0..rng.usize(5..25))
            .map(|_| (topic(rng), payload(rng)))
            .collect();
        for d in 0..GOOD_DEVICES {
            let reading = json!({"presence": round % 2 == 0, "seq": round + 1});
            let at = rng.usize(..=messages.len());
            messages.insert(
                at,
                (
                    format!("sensors/good-{d}/reading"),
                    reading.to_string().into_bytes(),
                ),
            );
        }
        // Hostile payloads at the presets' topics, from their own generator.
        for _ in 0..prng.usize(1..4) {
            let id = device_id(prng);
            let at = match prng.u8(..3) {
                0 => format!("application/app/device/{id}/event/up"),
                1 => format!("v3/app/devices/{id}/up"),
                _ => format!("{id}/events/rpc"),
            };
            let payload = payload(prng);
            let place = prng.usize(..=messages.len());
            messages.insert(place, (at, payload));
        }
        publish_bytes(port, &format!("hostile-{round}"), &messages).await;
    }
}

/// The good receiver has every good device's readings, in order, all signed right.
fn every_good_reading_in_order(good: &Receiver, seed: u64) {
    good.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        for d in 0..GOOD_DEVICES {
            let seqs: Vec<u64> = s
                .readings_of(&format!("good-{d}"))
                .iter()
                .map(|f| f["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(
                seqs,
                (1..=GOOD_READINGS).collect::<Vec<_>>(),
                "good-{d}, seed {seed}"
            );
        }
    });
}

/// The seeds CI runs.
const FIXED: [u64; 3] = [1, 43, 20261207];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_seeds() {
    for seed in FIXED {
        run(seed).await;
    }
}

/// `TEST_HOSTILE_SEED=N` replays one seed; `TEST_HOSTILE_SEEDS=N` runs N random ones; without
/// either, one random seed (printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed() {
    if let Ok(seed) = std::env::var("TEST_HOSTILE_SEED") {
        run(seed.parse().unwrap()).await;
        return;
    }
    let n: usize = std::env::var("TEST_HOSTILE_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    for _ in 0..n {
        run(fastrand::u64(..)).await;
    }
}
