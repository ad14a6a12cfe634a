//! `cargo bench --bench bridge`: the whole bridge under load, through real parts (mosquitto,
//! the release `edgehook` binary, a signature-verifying receiver), printing one table.
//!
//! Scenarios, each with 150 occupancy sensors + 50 room displays and 30% of readings changes:
//! - "burst": 100 readings per device (20,000 in all) as fast as the broker accepts them (each
//!   device waits for its previous PUBACK). This saturates the 2 cores: publishers, broker and
//!   daemon share them, so latency here is mostly queueing.
//! - "paced": each device every 200 ms, 1,000 readings/s in all, for 15 s.
//!
//! Figures: events delivered per second (first publish → last receipt), publish-to-receipt
//! latency of reading events (p50/p99/max), the daemon's peak RSS (VmHWM), its CPU seconds per
//! 10,000 events, and bytes it wrote to disk per event (/proc/<pid>/io write_bytes).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Mosquitto, Receiver};
use firmware_sim::{run_fleet, FleetConfig};

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

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

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    name: &'static str,
    expected: u64,
    delivered: u64,
    duplicates: u64,
    seconds: f64,
    latencies: Vec<u64>,
    rss_kb: u64,
    cpu: f64,
    disk_bytes: u64,
}

async fn scenario(
    name: &'static str,
    sensors: usize,
    displays: usize,
    each: u64,
    interval: Duration,
) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    // Offline reports go out at once: the figures measure the pipeline, not the debounce policy.
    let rules = "[[device_classes]]\nname = \"bench\"\nmatch = [\"*\"]\ndebounce = \"0s\"\n";
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, rules);
    daemon.start();
    let pid = daemon.pid().unwrap();
    let cpu0 = cpu_seconds(pid);
    let disk0 = proc_field(pid, "io", "write_bytes:").unwrap_or(0);

    let fleet = FleetConfig {
        port: broker.port,
        sensors,
        displays,
        seed: 2026,
        interval,
        readings: Some(each),
        change_ratio: 0.3,
        prefix: "bench".into(),
        ..Default::default()
    };
    let devices = (sensors + displays) as u64;
    let start_ms = firmware_sim::now_ms();
    let stats = run_fleet(fleet, std::future::pending())
        .await
        .expect("fleet");
    // Every change, plus each device's birth (online) and clean shutdown (offline).
    let expected = stats.changes + 2 * devices;
    let deadline = Instant::now() + Duration::from_secs(300);
    while receiver.seen(|s| (s.events.len() as u64) < expected) {
        assert!(
            Instant::now() < deadline,
            "bench did not complete:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (delivered, duplicates, last_ms, latencies) = receiver.seen(|s| {
        let mut lat: Vec<u64> = s
            .events
            .iter()
            .zip(&s.arrived_ms)
            .filter(|(e, _)| e["type"] == "sensor.reading.updated")
            .filter_map(|(e, at)| Some(at.saturating_sub(e["data"]["fields"]["ts"].as_u64()?)))
            .collect();
        lat.sort_unstable();
        (
            s.events.len() as u64,
            s.duplicates,
            *s.arrived_ms.iter().max().unwrap(),
            lat,
        )
    });
    let row = Row {
        name,
        expected,
        delivered,
        duplicates,
        seconds: (last_ms - start_ms) as f64 / 1000.0,
        latencies,
        rss_kb: proc_field(pid, "status", "VmHWM:").unwrap_or(0),
        cpu: cpu_seconds(pid) - cpu0,
        disk_bytes: proc_field(pid, "io", "write_bytes:").unwrap_or(0) - disk0,
    };
    assert_eq!(daemon.terminate(), Some(0));
    row
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
    let rows = vec![
        runtime.block_on(scenario("burst", 150, 50, 100, Duration::ZERO)),
        runtime.block_on(scenario("paced", 150, 50, 75, Duration::from_millis(200))),
    ];
    println!();
    println!(
        "{:<8} {:>8} {:>8} {:>6} {:>5} {:>10} {:>7} {:>7} {:>7} {:>9} {:>13} {:>10}",
        "scenario",
        "expected",
        "deliverd",
        "lost",
        "dups",
        "events/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "peak RSS",
        "CPU s/10k ev",
        "disk B/ev"
    );
    for r in rows {
        println!(
            "{:<8} {:>8} {:>8} {:>6} {:>5} {:>10.0} {:>7} {:>7} {:>7} {:>7.1}MB {:>13.3} {:>10.0}",
            r.name,
            r.expected,
            r.delivered,
            r.expected.saturating_sub(r.delivered),
            r.duplicates,
            r.delivered as f64 / r.seconds,
            percentile(&r.latencies, 0.50),
            percentile(&r.latencies, 0.99),
            r.latencies.last().copied().unwrap_or(0),
            r.rss_kb as f64 / 1024.0,
            r.cpu / r.delivered as f64 * 10_000.0,
            r.disk_bytes as f64 / r.delivered as f64,
        );
    }
}
