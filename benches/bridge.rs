//! `cargo bench --bench bridge`: the whole bridge under load, through real parts (mosquitto,
//! the release `edgehook` binary, a signature-verifying receiver), printing one table.
//!
//! Scenarios, each with 150 occupancy sensors + 50 room displays and 30% of readings changes:
//! - "burst": 100 readings per device (20,000 in all) as fast as the broker accepts them (each
//!   device waits for its previous PUBACK). This saturates the 2 cores: publishers, broker and
//!   daemon share them, so latency here is mostly queueing.
//! - "paced": each device every 200 ms, 1,000 readings/s in all, for 30 s.
//! - "paced-503": the same, with the receiver answering 503 for 5 s from the 10th second.
//! - "paced+console": "paced" while the console's load is on the control API: the live
//!   delivery stream followed, and 10 API requests a second (gateway, devices, endpoints,
//!   outbox, delivery log in turn), to show the pipeline is not slowed by them (no null bridge
//!   row: it has no API).
//!
//! - "low-rate": a building's rate: 10 sensors each changing every second, 10 events/s, for
//!   60 s (every event its own group commit: the per-commit floor).
//! - "idle" and "idle+heartbeats": the 200 devices connected and online, then silent, or each
//!   sending an unchanged reading every 30 s (its class watching for silence), for 10 minutes
//!   (`BENCH_IDLE_SECS`), from the checkpoint of what coming online changed: the bytes the
//!   daemon wrote meanwhile, in how many of its seconds, its checkpoints
//!   (`edgehook_outbox_checkpoints_total`), and its resident memory. Run once: they count, they
//!   do not time.
//!
//! - "limits": memory at the default device limits, the worst case devices can make: 5,000
//!   devices (`devices.max_devices`) each keeping 3.7 KB (just under `max_state_bytes`),
//!   published at once at QoS 0 (no backpressure) with the receiver down; then eight
//!   concurrent `GET /v1/devices?limit=1000`; then a restart over that store. Peak RSS after
//!   each, against the unit's `MemoryMax`. Run once.
//!
//! - "actions": the action round trip: 500 actions to 20 room displays, pushed signed to the
//!   push listener at 50 a second; from the push to the receipt of its
//!   `device.action_completed`, through the outbox, mosquitto, the display and back (p50/p99).
//!
//! Each load is run `BENCH_RUNS` times (3 by default) and the table holds the median of each
//! figure. Each is run through edgehook, and (but for the console and low-rate loads) through
//! a *null bridge* — an MQTT subscriber inside
//! the bench that POSTs every reading, signed, the moment it arrives: no state, no change
//! detection, no disk, no retries. It is the practical limit of this machine, so each edgehook
//! row can state its ratio to it.
//!
//! Figures: events delivered, lost and duplicated; readings handled per second (all readings
//! published ÷ first publish → last receipt); publish-to-receipt latency of readings delivered
//! (p50/p99/max); the daemon's peak RSS (VmHWM), its CPU seconds per 10,000 events and the bytes
//! it wrote to disk per event (/proc/<pid>/io write_bytes: pages dirtied, each counted whole).
//! "dev B/ev" is what reached the block device that holds the state directory from when the
//! daemon runs (its store open) to the end of the load (/sys/dev/block/.../stat, sectors
//! written), per event.
//! Run as root, the state directory is an ext4 file system of its own on a loop device (see
//! [`Card`]), so this is the daemon's alone: its files, their metadata, ext4's journal — what
//! an SD card would be asked to write. Otherwise it is the machine's disk, everyone's writes
//! (an upper bound); on the null bridge's row, always the machine's. "W.A." is the write
//! amplification: the daemon's `write_bytes` per byte of event delivered (its JSON body).
//!
//! Environment: `BENCH_ONLY=<scenario>` runs one scenario, `BENCH_CONFIG` appends TOML to the
//! daemon's configuration, and `BENCH_DIAG=1` prints, per half-second since the start, how many
//! readings took over 40 ms (to see whether slow readings are spread out or one stall), and the
//! daemon's memory (`/proc/<pid>/smaps_rollup`: anonymous against file-backed) at the end of each.
//! `BENCH_RECEIVER_DELAY_MS` makes the receiver answer each request that much later: a
//! receiver slower than the load, so the outbox holds a backlog (its checkpoint puts it in sled).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{peak_rss_kb, proc_field, Api, Daemon, Mosquitto, Receiver};
use firmware_sim::{run_fleet, FleetConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// utime + stime, seconds (clock ticks are 100 Hz on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Bytes written so far to the block device holding `path` (none on a filesystem without one).
fn device_bytes_written(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    // glibc's encoding of major and minor numbers in a dev_t.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

/// The daemon's state directory on a block device of its own — an ext4 file system (as on a
/// Pi's SD card) on a loop device, mounted where the state directory goes — so that what the
/// block device wrote is the daemon's alone: its files, their metadata and ext4's journal.
/// Needs root (`losetup`, `mount`); elsewhere, or with `BENCH_CARD=0`, `None`, and the state
/// directory stays on the machine's disk, whose writes are everyone's.
struct Card {
    at: std::path::PathBuf,
}

impl Card {
    fn mount(at: &std::path::Path) -> Option<Card> {
        let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
            std::process::Command::new(cmd)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        // SAFETY: geteuid only reads this process's credentials.
        if unsafe { libc::geteuid() } != 0 || std::env::var("BENCH_CARD").is_ok_and(|v| v == "0") {
            return None;
        }
        let image = at.with_extension("img");
        std::fs::File::create(&image).ok()?.set_len(1 << 30).ok()?;
        std::fs::create_dir_all(at).ok()?;
        // 4 KiB blocks, as on a card of gigabytes (mke2fs picks 1 KiB for a small file
        // system); inode tables and journal written now, not by a kernel thread during the
        // measurement.
        let made = run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-b",
                "4096",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ]
            .map(std::ffi::OsStr::new)
            .into_iter()
            .chain([image.as_os_str()])
            .collect::<Vec<_>>(),
        );
        let mounted = made
            && run(
                "mount",
                &[
                    std::ffi::OsStr::new("-o"),
                    "loop".as_ref(),
                    image.as_os_str(),
                    at.as_os_str(),
                ],
            );
        mounted.then(|| Card {
            at: at.to_path_buf(),
        })
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.at).status();
    }
}

/// Write back what earlier scenarios left dirty (and let the machine go quiet), so that it is
/// not written, and counted, during the next.
fn settle() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
}

/// The median of `values` (0 when there are none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[derive(Clone, Copy, PartialEq)]
enum Bridge {
    Edgehook,
    Null,
}

#[derive(Clone, Copy)]
struct Load {
    name: &'static str,
    each: u64,
    interval: Duration,
    /// Receiver answers 503 for this long, starting this far in.
    outage: Option<(Duration, Duration)>,
    /// The console's load on the control API meanwhile.
    console: bool,
    /// Occupancy sensors and room displays.
    devices: (usize, usize),
    /// The share of readings that change a field.
    change_ratio: f64,
    /// Also run through the null bridge.
    null: bool,
}

struct Row {
    name: String,
    expected: u64,
    delivered: u64,
    duplicates: u64,
    readings: u64,
    seconds: f64,
    latencies: Vec<u64>,
    /// Of edgehook's readings: publish → event created (its `timestamp`), created → receipt.
    split: Option<(Vec<u64>, Vec<u64>)>,
    /// The daemon's figures (none for the null bridge, which runs inside the bench).
    daemon: Option<(u64, f64, u64)>,
    /// The daemon's outbox group commits: how many, and the histogram bucket holding the p99.
    commits: Option<(u64, String)>,
    /// Bytes the state directory's block device wrote meanwhile (the whole machine's).
    device_bytes: Option<u64>,
    /// Bytes of the events delivered (their JSON bodies).
    event_bytes: u64,
    /// With the console's load: API requests answered 200, others, and the live stream's
    /// bytes.
    api: Option<(u64, u64, u64)>,
}

/// The console's load on the daemon's API at `port` until `stop`: the live delivery stream
/// followed, and 10 requests a second. Returns (answered 200, other answers or failures,
/// stream bytes read).
async fn console_load(port: u16, stop: Arc<std::sync::atomic::AtomicBool>) -> (u64, u64, u64) {
    use std::sync::atomic::Ordering;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(edgehook::tls::client_config(None).unwrap())
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let streamed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stream = {
        let (client, base, streamed, stop) =
            (client.clone(), base.clone(), streamed.clone(), stop.clone());
        tokio::spawn(async move {
            if let Ok(mut r) = client
                .get(format!("{base}/v1/deliveries/stream"))
                .send()
                .await
            {
                while !stop.load(Ordering::Relaxed) {
                    match r.chunk().await {
                        Ok(Some(c)) => streamed.fetch_add(c.len() as u64, Ordering::Relaxed),
                        _ => break,
                    };
                }
            }
        })
    };
    let paths = [
        "/v1/gateway",
        "/v1/devices",
        "/v1/endpoints",
        "/v1/outbox",
        "/v1/deliveries?limit=100",
    ];
    let (mut ok, mut failed) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let answer = client
            .get(format!("{base}{}", paths[i % paths.len()]))
            .send()
            .await;
        let answered = match answer {
            Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if answered {
            ok += 1;
        } else {
            failed += 1;
        }
        i += 1;
    }
    stream.abort();
    (ok, failed, streamed.load(Ordering::Relaxed))
}

const SENSORS: usize = 150;
const DISPLAYS: usize = 50;

/// The null bridge: subscribe, and POST each reading, signed, as it arrives.
fn start_null_bridge(port: u16, url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut options = rumqttc::MqttOptions::new("null-bridge", "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(1000);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10_000);
        for topic in ["sensors/+/reading", "rooms/+/display"] {
            client
                .subscribe(topic, rumqttc::QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(edgehook::tls::client_config(None).unwrap())
            .build()
            .unwrap();
        let slots = Arc::new(tokio::sync::Semaphore::new(16));
        loop {
            let Ok(event) = eventloop.poll().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event else {
                continue;
            };
            let device = p.topic.split('/').nth(1).unwrap_or_default().to_string();
            let fields: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            let id = uuid::Uuid::now_v7().to_string();
            let body = serde_json::to_vec(&serde_json::json!({
                "id": id, "type": "sensor.reading.updated",
                "data": {"device_id": device, "fields": fields},
            }))
            .unwrap();
            let mut mac = Hmac::<Sha256>::new_from_slice(common::SECRET.as_bytes()).unwrap();
            mac.update(&body);
            let signature = hex::encode(mac.finalize().into_bytes());
            let request = http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-webhook-signature", signature)
                .header("idempotency-key", id)
                .body(body);
            let permit = slots.clone().acquire_owned().await.unwrap();
            tokio::spawn(async move {
                let _ = request.send().await; // no retries: a refused one is lost
                drop(permit);
            });
        }
    })
}

async fn scenario(bridge: Bridge, load: Load) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    if let Ok(ms) = std::env::var("BENCH_RECEIVER_DELAY_MS") {
        let ms = ms
            .parse()
            .expect("BENCH_RECEIVER_DELAY_MS: a number of milliseconds");
        receiver.delay(Duration::from_millis(ms));
    }
    let mut daemon = None;
    let mut null = None;
    let mut before = (0, 0.0, 0);
    let card = (bridge == Bridge::Edgehook)
        .then(|| Card::mount(&dir.path().join("state")))
        .flatten();
    // The card's writes (the daemon's alone) or, without one, the machine disk's.
    let device = card
        .as_ref()
        .map_or(dir.path(), |c| c.at.as_path())
        .to_path_buf();
    let mut device_before = device_bytes_written(&device);
    match bridge {
        Bridge::Edgehook => {
            // Offline reports go out at once: the figures measure the pipeline, not the
            // debounce policy.
            // BENCH_CONFIG adds configuration (TOML tables) to try settings against the same load.
            let rules = format!(
                "[[device_classes]]\nname = \"bench\"\nmatch = [\"*\"]\ndebounce = \"0s\"\n{}\n",
                std::env::var("BENCH_CONFIG").unwrap_or_default()
            );
            let mut d = Daemon::new(dir.path(), broker.port, &receiver.url, &rules);
            d.start();
            let pid = d.pid().unwrap();
            // From here, as `write_bytes`: opening a new store is not the load's.
            device_before = device_bytes_written(&device);
            before = (
                pid,
                cpu_seconds(pid),
                proc_field(pid, "io", "write_bytes:").unwrap_or(0),
            );
            daemon = Some(d);
        }
        Bridge::Null => {
            null = Some(start_null_bridge(broker.port, receiver.url.clone()));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    let fleet = FleetConfig {
        port: broker.port,
        sensors: load.devices.0,
        displays: load.devices.1,
        seed: 2026,
        interval: load.interval,
        readings: Some(load.each),
        change_ratio: load.change_ratio,
        prefix: "bench".into(),
        ..Default::default()
    };
    let devices = (load.devices.0 + load.devices.1) as u64;
    let start_ms = firmware_sim::now_ms();
    if let Some((after, length)) = load.outage {
        let r = receiver.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            r.fail_with(503);
            tokio::time::sleep(length).await;
            r.fail_with(0);
        });
    }
    let stop_console = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let console = match (&daemon, load.console) {
        (Some(d), true) => Some(tokio::spawn(console_load(
            d.metrics_port,
            stop_console.clone(),
        ))),
        _ => None,
    };
    let stats = run_fleet(fleet, std::future::pending())
        .await
        .expect("fleet");
    let expected = match bridge {
        // Every change, plus each device's registration, birth (online) and clean shutdown
        // (offline).
        Bridge::Edgehook => stats.changes + 3 * devices,
        // Every reading.
        Bridge::Null => stats.readings,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.seen(|s| (s.events.len() as u64) < expected) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let event_bytes = receiver.seen(|s| {
        s.events
            .iter()
            .map(|e| serde_json::to_vec(e).map_or(0, |b| b.len() as u64))
            .sum()
    });
    let (delivered, duplicates, last_ms, latencies, split) = receiver.seen(|s| {
        let readings = || {
            s.events
                .iter()
                .zip(&s.arrived_ms)
                .filter(|(e, _)| e["type"] == "sensor.reading.updated")
        };
        let mut lat: Vec<u64> = readings()
            .filter_map(|(e, at)| Some(at.saturating_sub(e["data"]["fields"]["ts"].as_u64()?)))
            .collect();
        if std::env::var("BENCH_DIAG").is_ok() {
            let mut slow = std::collections::BTreeMap::<u64, u32>::new();
            for (e, at) in readings() {
                let ts = e["data"]["fields"]["ts"].as_u64().unwrap_or(0);
                if at.saturating_sub(ts) > 40 {
                    *slow.entry((ts.saturating_sub(start_ms)) / 500).or_default() += 1;
                }
            }
            eprintln!(
                "DIAG {} slow by half-second since start: {slow:?}",
                load.name
            );
        }
        lat.sort_unstable();
        let (mut before, mut after): (Vec<u64>, Vec<u64>) = readings()
            .filter_map(|(e, at)| {
                let published = e["data"]["fields"]["ts"].as_u64()?;
                let created = humantime::parse_rfc3339(e["timestamp"].as_str()?).ok()?;
                let created = created
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_millis() as u64;
                Some((
                    created.saturating_sub(published),
                    at.saturating_sub(created),
                ))
            })
            .unzip();
        before.sort_unstable();
        after.sort_unstable();
        (
            s.events.len() as u64,
            s.duplicates,
            s.arrived_ms.iter().max().copied().unwrap_or(start_ms + 1),
            lat,
            (bridge == Bridge::Edgehook).then_some((before, after)),
        )
    });
    stop_console.store(true, std::sync::atomic::Ordering::Relaxed);
    let api = match console {
        Some(task) => task.await.ok(),
        None => None,
    };
    let commits = daemon.as_ref().map(commit_p99);
    let device_bytes = device_bytes_written(&device)
        .zip(device_before)
        .map(|(after, before)| after - before);
    let figures = daemon.as_mut().map(|d| {
        let (pid, cpu0, disk0) = before;
        if std::env::var("BENCH_DIAG").is_ok() {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"));
            eprintln!(
                "DIAG {} daemon memory at the end:\n{}",
                load.name,
                rollup.unwrap_or_default()
            );
        }
        let f = (
            proc_field(pid, "status", "VmHWM:").unwrap_or(0),
            cpu_seconds(pid) - cpu0,
            proc_field(pid, "io", "write_bytes:").unwrap_or(0) - disk0,
        );
        assert_eq!(d.terminate(), Some(0));
        f
    });
    if let Some(null) = null {
        null.abort();
    }
    Row {
        name: format!(
            "{}{}",
            load.name,
            if bridge == Bridge::Null { " null" } else { "" }
        ),
        expected,
        delivered,
        duplicates,
        readings: stats.readings,
        seconds: (last_ms - start_ms) as f64 / 1000.0,
        latencies,
        split,
        daemon: figures,
        commits,
        device_bytes,
        event_bytes,
        api,
    }
}

/// An idle gateway for `length`: the 200 devices connected and online, then either silent or
/// sending an unchanged reading every 30 s each (`heartbeats`), measured from the checkpoint
/// of what coming online changed. Returns the daemon's bytes written meanwhile, the seconds in
/// which it wrote (`write_bytes` sampled every second), its checkpoints (its metric), its
/// resident memory at the end and its peak.
async fn idle(heartbeats: bool, length: Duration) -> Idle {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    // With heartbeats the class watches for silence (a device unheard for 90 s is lost), so
    // every reading moves the device's `last_seen`, which must be kept.
    let watch = if heartbeats {
        "heartbeat = \"90s\"\n"
    } else {
        ""
    };
    let rules = format!(
        "[[device_classes]]\nname = \"bench\"\nmatch = [\"*\"]\ndebounce = \"0s\"\n{watch}"
    );
    let card = Card::mount(&dir.path().join("state"));
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, &rules);
    daemon.start();
    let pid = daemon.pid().unwrap();
    let interval = if heartbeats {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(10 * 365 * 24 * 3600) // each device's first reading, then none
    };
    let fleet = FleetConfig {
        port: broker.port,
        sensors: SENSORS,
        displays: DISPLAYS,
        seed: 2026,
        interval,
        readings: None,
        change_ratio: 0.0,
        prefix: "bench".into(),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let fleet = tokio::spawn(run_fleet(fleet, async move {
        let _ = stopped.await;
    }));
    // Every device registered and online (and, with heartbeats, its first reading told)
    // before the measurement starts.
    let devices = (SENSORS + DISPLAYS) as u64;
    daemon.wait_metric("edgehook_devices", devices).await;
    let mut warm = devices * 2;
    if heartbeats {
        warm += devices;
        tokio::time::sleep(Duration::from_secs(35)).await;
    }
    while receiver.seen(|s| (s.events.len() as u64) < warm) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then what coming online changed (the registrations, held since) is checkpointed, once,
    // a minute later: the window starts after it (or after two minutes without one).
    let checkpoints = || {
        daemon
            .metric("edgehook_outbox_checkpoints_total")
            .unwrap_or(0)
    };
    let (before, wait_until) = (checkpoints(), Instant::now() + Duration::from_secs(120));
    while checkpoints() == before && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = || proc_field(pid, "io", "write_bytes:").unwrap_or(0);
    let device = || card.as_ref().and_then(|c| device_bytes_written(&c.at));
    let (start, from, device_from) = (written(), checkpoints(), device());
    let (mut last, mut seconds) = (start, 0u64);
    let ends = Instant::now() + length;
    while Instant::now() < ends {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = written();
        seconds += u64::from(now > last);
        last = now;
    }
    let writes = checkpoints() - from;
    let device_bytes = device().zip(device_from).map(|(now, from)| now - from);
    let result = Idle {
        bytes: last - start,
        device_bytes,
        writes,
        seconds,
        minutes: length.as_secs_f64() / 60.0,
        rss: proc_field(pid, "status", "VmRSS:").unwrap_or(0),
        anon: proc_field(pid, "status", "RssAnon:").unwrap_or(0),
        peak: proc_field(pid, "status", "VmHWM:").unwrap_or(0),
    };
    let _ = stop.send(());
    let _ = fleet.await;
    assert_eq!(daemon.terminate(), Some(0));
    result
}

/// The "limits" scenario (see the module docs): peak RSS in kB once every device is in, after
/// eight concurrent pages, and after a restart (with one page read).
async fn limits() -> (u64, u64, u64) {
    const DEVICES: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    // The receiver is down: nothing listens there.
    let down = format!("http://127.0.0.1:{}/down", common::free_port());
    let mut daemon = Daemon::new(dir.path(), broker.port, &down, "");
    daemon.start();
    let filler = "x".repeat(3_700);
    let messages: Vec<(String, Vec<u8>)> = (0..DEVICES)
        .map(|i| {
            let body = serde_json::json!({ "presence": i % 2 == 0, "blob": filler });
            (
                format!("sensors/w-{i:05}/reading"),
                body.to_string().into_bytes(),
            )
        })
        .collect();
    publish_qos0(broker.port, &messages);
    daemon.wait_metric("edgehook_devices", DEVICES as u64).await;
    let pid = daemon.pid().unwrap();
    let arrived = peak_rss_kb(pid).unwrap_or(0);
    let pages: Vec<_> = (0..8)
        .map(|_| {
            let api = Api::new(daemon.metrics_port);
            tokio::spawn(async move { api.get("/v1/devices", "/v1/devices?limit=1000").await })
        })
        .collect();
    for page in pages {
        assert_eq!(page.await.unwrap().status, 200);
    }
    let paged = peak_rss_kb(pid).unwrap_or(0);
    assert_eq!(daemon.terminate(), Some(0));
    daemon.start();
    let api = Api::new(daemon.metrics_port);
    assert_eq!(
        api.get("/v1/devices", "/v1/devices?limit=1000")
            .await
            .status,
        200
    );
    let restarted = peak_rss_kb(daemon.pid().unwrap()).unwrap_or(0);
    assert_eq!(daemon.terminate(), Some(0));
    (arrived, paged, restarted)
}

/// Publish every `(topic, payload)` at QoS 0 over one plain MQTT 3.1.1 connection, as fast
/// as the socket takes them: no acknowledgement, no backpressure.
fn publish_qos0(port: u16, messages: &[(String, Vec<u8>)]) {
    use std::io::{Read, Write};
    fn length(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let digit = (n % 128) as u8;
            n /= 128;
            out.push(if n > 0 { digit | 0x80 } else { digit });
            if n == 0 {
                return;
            }
        }
    }
    fn text(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut rest = Vec::new();
    text(b"MQTT", &mut rest);
    rest.extend_from_slice(&[4, 2, 0, 60]); // 3.1.1, clean session, keep-alive 60 s
    text(b"bench-limits", &mut rest);
    let mut connect = vec![0x10];
    length(rest.len(), &mut connect);
    connect.extend_from_slice(&rest);
    socket.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack).unwrap();
    assert_eq!(connack[3], 0, "the broker refused the connection");
    for (topic, payload) in messages {
        let mut rest = Vec::new();
        text(topic.as_bytes(), &mut rest);
        rest.extend_from_slice(payload);
        let mut packet = vec![0x30];
        length(rest.len(), &mut packet);
        packet.extend_from_slice(&rest);
        socket.write_all(&packet).unwrap();
    }
    socket.write_all(&[0xe0, 0]).unwrap(); // DISCONNECT
}

/// What [`idle`] measured.
struct Idle {
    bytes: u64,
    /// What its block device wrote (with a [`Card`]).
    device_bytes: Option<u64>,
    writes: u64,
    /// Seconds in which it wrote.
    seconds: u64,
    minutes: f64,
    rss: u64,
    /// Of `rss`, the daemon's own memory (the rest: code and libraries, clean file pages).
    anon: u64,
    peak: u64,
}

/// The action round trip (see the module docs): (actions told, p50, p99, max ms), and where
/// the time goes: p50/p99 of push → 202, 202 → event created, created → received.
async fn actions_round_trip() -> ((usize, u64, u64, u64), [(u64, u64); 3]) {
    const DISPLAYS: usize = 20;
    const EACH: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let push = common::free_port();
    let config = format!(
        "[[device_classes]]\nname = \"displays\"\nmatch = [\"*\"]\ndebounce = \"0s\"\nactions = [\"show_message\"]\n[upstream]\nsecrets = [\"{}\"]\n[upstream.push]\nlisten = \"127.0.0.1:{push}\"\n",
        common::UPSTREAM_SECRET
    );
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, &config);
    daemon.start();
    let mut displays = Vec::new();
    for i in 0..DISPLAYS {
        let id = format!("disp-{i}");
        displays
            .push(common::device(broker.port, &id, firmware_sim::DeviceClass::RoomDisplay).await);
    }
    daemon
        .wait_metric("edgehook_devices", DISPLAYS as u64)
        .await;
    let mut submitted = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for n in 0..DISPLAYS * EACH {
        tick.tick().await;
        let id = format!("act-{n}");
        let command = serde_json::json!({"type": "device.action_requested", "data": {"id": id, "device": format!("disp-{}", n % DISPLAYS), "name": "show_message", "params": {"text": id}}});
        let at = firmware_sim::now_ms();
        let answer = common::push(push, &command, &format!("msg-{n}")).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        submitted.insert(id, (at, firmware_sim::now_ms()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let told = || receiver.seen(|s| s.of_type("device.action_completed").len());
    while told() < submitted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut parts: [Vec<u64>; 3] = Default::default();
    let mut latencies: Vec<u64> = receiver.seen(|s| {
        s.events
            .iter()
            .zip(&s.arrived_ms)
            .filter(|(e, _)| e["type"] == "device.action_completed")
            .filter_map(|(e, at)| {
                let (sent, answered) = submitted.get(e["data"]["action_id"].as_str()?)?;
                let created = humantime::parse_rfc3339(e["timestamp"].as_str()?).ok()?;
                let created = created
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_millis() as u64;
                parts[0].push(answered - sent);
                parts[1].push(created.saturating_sub(*answered));
                parts[2].push(at.saturating_sub(created));
                Some(at.saturating_sub(*sent))
            })
            .collect()
    });
    latencies.sort_unstable();
    let split = parts.map(|mut p| {
        p.sort_unstable();
        (percentile(&p, 0.5), percentile(&p, 0.99))
    });
    assert_eq!(daemon.terminate(), Some(0));
    (
        (
            latencies.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0),
        ),
        split,
    )
}

/// How many group commits the daemon made and the `edgehook_outbox_commit_seconds` bucket
/// that holds the 99th percentile.
fn commit_p99(d: &Daemon) -> (u64, String) {
    const BOUNDS: [&str; 12] = [
        "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
        "5",
    ];
    let count = d
        .metric("edgehook_outbox_commit_seconds_count")
        .unwrap_or(0);
    let p99 = BOUNDS
        .iter()
        .find(|b| {
            let n = d
                .metric(&format!(
                    "edgehook_outbox_commit_seconds_bucket{{le=\"{b}\"}}"
                ))
                .unwrap_or(0);
            n * 100 >= count * 99
        })
        .map_or_else(|| "> 5 s".into(), |b| format!("<= {b} s"));
    (count, p99)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("bridge: bench");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let paced = Duration::from_millis(200);
    let fleet = (SENSORS, DISPLAYS);
    let load = |name, each, interval, outage, console| Load {
        name,
        each,
        interval,
        outage,
        console,
        devices: fleet,
        change_ratio: 0.3,
        null: !console,
    };
    let loads = [
        load("burst", 100, Duration::ZERO, None, false),
        load("paced", 150, paced, None, false),
        load(
            "paced-503",
            150,
            paced,
            Some((Duration::from_secs(10), Duration::from_secs(5))),
            false,
        ),
        load("paced+console", 150, paced, None, true),
        // A building's rate: 10 sensors each changing once a second, 10 events/s.
        Load {
            devices: (10, 0),
            change_ratio: 1.0,
            null: false,
            ..load("low-rate", 60, Duration::from_secs(1), None, false)
        },
    ];
    // BENCH_ONLY=paced runs one scenario (and its null bridge); BENCH_RUNS how many times each
    // load is run (the table holds the median of each figure); BENCH_IDLE_SECS how long each
    // idle scenario lasts.
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let idle_for = Duration::from_secs(
        std::env::var("BENCH_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    );
    let limits = wanted("limits").then(|| {
        settle();
        runtime.block_on(limits())
    });
    let actions = wanted("actions").then(|| {
        settle();
        runtime.block_on(actions_round_trip())
    });
    let mut rows: Vec<(Vec<Row>, Vec<Row>)> = Vec::new();
    for load in loads {
        if !wanted(load.name) {
            continue;
        }
        let (mut edge, mut null) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            settle();
            edge.push(runtime.block_on(scenario(Bridge::Edgehook, load)));
            if load.null {
                settle();
                null.push(runtime.block_on(scenario(Bridge::Null, load)));
            }
        }
        rows.push((edge, null));
    }
    let idles: Vec<(&str, Idle)> = [("idle", false), ("idle+heartbeats", true)]
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .map(|(name, heartbeats)| {
            settle();
            (name, runtime.block_on(idle(heartbeats, idle_for)))
        })
        .collect();
    println!();
    println!("each figure the median of {runs} runs");
    println!(
        "{:<15} {:>8} {:>8} {:>6} {:>5} {:>10} {:>9} {:>7} {:>7} {:>7} {:>9} {:>12} {:>9} {:>8} {:>6}",
        "scenario",
        "expected",
        "deliverd",
        "lost",
        "dups",
        "readings/s",
        "vs null",
        "p50 ms",
        "p99 ms",
        "max ms",
        "peak RSS",
        "CPU s/10k ev",
        "disk B/ev",
        "dev B/ev",
        "W.A."
    );
    for (edge, null) in &rows {
        let both = [(edge, Some(null)), (null, None)];
        for (runs, baseline) in both.into_iter().filter(|(r, _)| !r.is_empty()) {
            let baseline = baseline.filter(|b| !b.is_empty());
            let f = |pick: &dyn Fn(&Row) -> Option<f64>| median(runs.iter().filter_map(pick));
            let rate = |r: &Row| Some(r.readings as f64 / r.seconds);
            let vs_null = baseline
                .map(|b| {
                    format!(
                        "{:.0}%",
                        100.0 * f(&rate) / median(b.iter().filter_map(rate))
                    )
                })
                .unwrap_or_else(|| "-".into());
            let per_event = |v: u64, r: &Row| v as f64 / r.delivered.max(1) as f64;
            let daemon = |show: &dyn Fn(f64) -> String, pick: &dyn Fn(&Row) -> Option<f64>| {
                if runs[0].daemon.is_some() {
                    show(f(pick))
                } else {
                    "-".into()
                }
            };
            let rss = daemon(&|v| format!("{:.1}MB", v / 1024.0), &|r| {
                r.daemon.map(|d| d.0 as f64)
            });
            let cpu = daemon(&|v| format!("{v:.3}"), &|r| {
                r.daemon.map(|d| d.1 / r.delivered.max(1) as f64 * 10_000.0)
            });
            let disk = daemon(&|v| format!("{v:.0}"), &|r| {
                r.daemon.map(|d| per_event(d.2, r))
            });
            // Write amplification: bytes written per byte of event delivered.
            let amplification = daemon(&|v| format!("{v:.1}"), &|r| {
                r.daemon.map(|d| d.2 as f64 / r.event_bytes.max(1) as f64)
            });
            let dev = if runs.iter().any(|r| r.device_bytes.is_some()) {
                format!("{:.0}", f(&|r| r.device_bytes.map(|b| per_event(b, r))))
            } else {
                "-".into()
            };
            let r = &runs[0];
            println!(
                "{:<15} {:>8} {:>8.0} {:>6.0} {:>5.0} {:>10.0} {:>9} {:>7.0} {:>7.0} {:>7.0} {:>9} {:>12} {:>9} {:>8} {:>6}",
                r.name,
                r.expected,
                f(&|r| Some(r.delivered as f64)),
                f(&|r| Some(r.expected.saturating_sub(r.delivered) as f64)),
                f(&|r| Some(r.duplicates as f64)),
                f(&rate),
                vs_null,
                f(&|r| Some(percentile(&r.latencies, 0.50) as f64)),
                f(&|r| Some(percentile(&r.latencies, 0.99) as f64)),
                f(&|r| r.latencies.last().map(|&v| v as f64)),
                rss,
                cpu,
                disk,
                dev,
                amplification
            );
        }
    }
    for (name, i) in &idles {
        println!(
            "{name}: {} bytes written in {:.0} min ({} by its block device), in {} of its seconds, {} checkpoints ({:.1} a minute); RSS {:.1} MB at the end ({:.1} MB anonymous), peak {:.1} MB",
            i.bytes,
            i.minutes,
            i.device_bytes
                .map_or("not measured".to_string(), |b| b.to_string()),
            i.seconds,
            i.writes,
            i.writes as f64 / i.minutes.max(f64::EPSILON),
            i.rss as f64 / 1024.0,
            i.anon as f64 / 1024.0,
            i.peak as f64 / 1024.0
        );
    }
    if let Some((arrived, paged, restarted)) = limits {
        let mb = |kb: u64| kb as f64 / 1024.0;
        println!(
            "limits: 5,000 devices of 3.7 KB: peak RSS {:.1} MB once in, {:.1} MB after eight concurrent pages of 1,000, {:.1} MB restarted (the unit's MemoryMax: 96 MB)",
            mb(arrived),
            mb(paged),
            mb(restarted)
        );
    }
    let rows: Vec<&Row> = rows.iter().flat_map(|(e, _)| e).collect();
    println!();
    if let Some(((n, p50, p99, max), [accept, run, deliver])) = actions {
        println!(
            "actions: {n} of 500 told; push -> device -> device.action_completed received p50/p99/max {p50}/{p99}/{max} ms"
        );
        println!(
            "actions: push -> 202 (on disk) p50/p99 {}/{} ms, 202 -> device answered and event created {}/{} ms, created -> received {}/{} ms",
            accept.0, accept.1, run.0, run.1, deliver.0, deliver.1
        );
    }
    for edge in rows {
        if let Some((ok, failed, streamed)) = edge.api {
            println!(
                "{}: {ok} API requests answered, {failed} not; the live stream carried {streamed} bytes",
                edge.name
            );
        }
        if let Some((count, p99)) = &edge.commits {
            // Each run's peak beside it: the table's median hides how far runs are apart.
            let peak = edge.daemon.map_or(0.0, |d| d.0 as f64 / 1024.0);
            println!(
                "{}: {count} outbox group commits (write + fsync), p99 {p99}; peak RSS {peak:.1} MB",
                edge.name
            );
        }
        if let Some((before, after)) = &edge.split {
            println!(
                "{}: publish -> event created p50/p99 {}/{} ms, created -> receipt {}/{} ms",
                edge.name,
                percentile(before, 0.5),
                percentile(before, 0.99),
                percentile(after, 0.5),
                percentile(after, 0.99)
            );
        }
    }
}
