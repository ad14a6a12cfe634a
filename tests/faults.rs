//! Fault injection through real parts: a state directory whose filesystem fills up, a state
//! directory whose files are corrupt, `kill -9` during bursts, a receiver down for a minute, a
//! broker restarted under load, and an outbox that reaches its size limit.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{device, publish, Daemon, Mosquitto, Receiver, Rig};
use firmware_sim::DeviceClass;

const LONG: Duration = Duration::from_secs(60);

/// A size-limited tmpfs, unmounted on drop. `None` when this process may not mount.
struct TinyFs {
    path: std::path::PathBuf,
}

impl TinyFs {
    fn mount(path: std::path::PathBuf, size: &str) -> Option<TinyFs> {
        std::fs::create_dir_all(&path).unwrap();
        let uid = Command::new("id").arg("-u").output().unwrap();
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return None;
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        // A container without CAP_SYS_ADMIN cannot mount even as root.
        status.success().then_some(TinyFs { path })
    }

    /// Fill every free byte with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.path.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4096"])
            .arg(format!("of={}", filler.display()))
            .output()
            .unwrap(); // fails with "No space left on device", as intended
        filler
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_back_pressure_not_loss_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fs = TinyFs::mount(dir.path().join("tiny"), "16m")
        .expect("this test mounts a tmpfs: run it as root with CAP_SYS_ADMIN (CI does)");
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    // A checkpoint a second: the write-ahead log has its room taken in advance, so a full disk
    // is met at the checkpoint, when sled must grow.
    let outbox = "[outbox]\ncheckpoint_interval = \"1s\"\n";
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, outbox);
    daemon.rewrite_state_dir(&fs.path.join("state"), broker.port, &receiver.url);
    daemon.start();
    let mut sensor = device(broker.port, "full-occ-1", DeviceClass::OccupancySensor).await;
    let mut want = publish(&mut sensor, 5, 1.0).await;
    receiver
        .wait_until(LONG, "the first readings", |s| {
            s.readings_of("full-occ-1").len() == 5
        })
        .await;

    let filler = fs.fill();
    // The receiver is down while the disk is full: the case where space is needed. Publish
    // while the disk is full: the broker takes them (PUBACK to the device); edgehook logs the
    // first in the room its log has taken in advance, then cannot put what waits into sled at
    // a checkpoint, so it acknowledges nothing more and the broker keeps the rest.
    receiver.fail_with(503);
    let failed = || {
        daemon
            .metric("edgehook_outbox_write_failures_total")
            .is_some_and(|n| n > 0)
    };
    let wait = Instant::now() + LONG;
    while want.len() < 45 || !failed() {
        assert!(
            Instant::now() < wait,
            "writes never failed:\n{}",
            daemon.log()
        );
        let (payload, changed) = sensor.publish_next(1.0).await.unwrap();
        assert!(changed);
        want.push(payload);
    }
    sensor.flushed().await.unwrap();
    let health = common::http_get(daemon.metrics_port, "/healthz").unwrap();
    assert!(health.contains("outbox not writable"), "{health}");
    daemon.assert_logged("cannot write the outbox");

    std::fs::remove_file(&filler).unwrap();
    receiver.fail_with(0);
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || receiver.seen(|s| s.readings_of("full-occ-1").len()) >= want.len(),
        || {
            format!(
                "not recovered after space returned ({} of {} readings):\n{}",
                receiver.seen(|s| s.readings_of("full-occ-1").len()),
                want.len(),
                daemon.log()
            )
        },
    )
    .await;
    receiver
        .wait_until(LONG, "every reading after space returned", |s| {
            s.readings_of("full-occ-1").len() >= want.len()
        })
        .await;
    assert_eq!(
        receiver.seen(|s| s.readings_of("full-occ-1")),
        want,
        "in order, none lost"
    );
    let health = common::http_get(daemon.metrics_port, "/healthz").unwrap();
    assert!(health.contains("ok"), "{health}");
    daemon.assert_logged("outbox writable again");
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_with_the_way_out_not_used_empty() {
    let (dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    receiver.fail_with(503); // events stay in the outbox
    daemon.start();
    let mut sensor = device(broker.port, "dmg-occ-1", DeviceClass::OccupancySensor).await;
    publish(&mut sensor, 5, 1.0).await;
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || daemon.metric("edgehook_outbox_depth").unwrap_or(0) >= 6,
        || daemon.log(),
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));

    // A dying SD card: the log file is garbage now. sled alone would come up empty.
    let db = dir.path().join("state/outbox.sled/db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&db, garbage).unwrap();

    daemon.spawn();
    let code = daemon.wait_exit(Duration::from_secs(20));
    let log = daemon.log();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("lost its history") && log.contains("Recovering the state directory"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    let (code, _, err) = daemon.outbox_cli(&["status"]);
    assert_eq!(code, 2);
    assert!(err.contains("lost its history"), "{err}");

    // The documented way out: move it aside and start afresh.
    std::fs::rename(dir.path().join("state"), dir.path().join("state.broken")).unwrap();
    daemon.start();
    assert_eq!(daemon.terminate(), Some(0));
    assert!(
        dir.path().join("state.broken/outbox.sled").exists(),
        "nothing was deleted"
    );
}

/// When to pull the plug on the daemon during a burst.
enum Kills {
    /// Once each time this many readings have been delivered.
    AtProgress(&'static [usize]),
    /// This many times, at random intervals (30–300 ms) from this seed.
    Random { times: usize, seed: u64 },
}

/// `devices` sensors publish `each` changes `pause` apart while the daemon is killed with
/// SIGKILL and restarted as `kills` says; then every change the broker acknowledged must have
/// been delivered, and no healthy device re-announced.
async fn kill9_during_a_burst(
    prefix: &'static str,
    devices: usize,
    each: usize,
    pause: Duration,
    kills: Kills,
) {
    let (_dir, broker, receiver, mut daemon) = Rig::start("").await.parts();
    let (_running, never) = tokio::sync::watch::channel(false);
    let publisher = common::publishers(broker.port, prefix, devices, Some(each), pause, never);

    let what = match kills {
        Kills::AtProgress(thresholds) => {
            for &n in thresholds {
                receiver
                    .wait_until(LONG, "burst progress", |s| {
                        s.of_type("sensor.reading.updated").len() >= n
                    })
                    .await;
                daemon.kill9();
                daemon.start();
            }
            format!("kill -9 at {thresholds:?} readings")
        }
        Kills::Random { times, seed } => {
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..times {
                tokio::time::sleep(Duration::from_millis(rng.u64(30..300))).await;
                daemon.kill9();
                daemon.start();
            }
            format!("kill -9 x{times} (seed {seed})")
        }
    };
    let published = publisher.await.unwrap();
    assert_eq!(published.len(), devices * each);
    common::until(
        Instant::now() + LONG,
        || receiver.seen(|s| published.is_subset(&s.reading_keys())),
        || {
            let missing: Vec<_> = receiver.seen(|s| {
                let mut m: Vec<_> = published.difference(&s.reading_keys()).cloned().collect();
                m.sort();
                m
            });
            format!(
                "{what}: {} acknowledged changes not delivered: {:?}\n{}",
                missing.len(),
                &missing[..missing.len().min(20)],
                daemon.log()
            )
        },
    )
    .await;
    receiver.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        assert_eq!(
            s.of_type("device.online").len(),
            devices,
            "restarts do not re-announce healthy devices"
        );
        eprintln!(
            "{what}: {} changes published, {} events delivered, {} duplicate deliveries",
            published.len(),
            s.events.len(),
            s.duplicates
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_three_depths_of_a_full_speed_burst_loses_nothing() {
    let kills = Kills::AtProgress(&[150, 700, 1300]);
    kill9_during_a_burst("t3-occ", 8, 250, Duration::ZERO, kills).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kill9_at_random_moments_lose_no_acknowledged_change() {
    let kills = Kills::Random {
        times: 20,
        seed: fastrand::u64(..),
    };
    kill9_during_a_burst("k20-occ", 6, 250, Duration::from_millis(15), kills).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_for_a_minute_under_load_loses_nothing_and_latency_recovers() {
    let (_dir, broker, receiver, daemon) = Rig::start("").await.parts();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let load = common::publishers(
        broker.port,
        "out60",
        10,
        None,
        Duration::from_millis(100),
        stop,
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    receiver.fail_with(503);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let backlog = daemon.metric("edgehook_outbox_depth").unwrap();
    assert!(
        backlog > 3000,
        "a minute of events waits in the outbox: {backlog}"
    );
    receiver.fail_with(0);
    let recovered_at = firmware_sim::now_ms();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop_tx.send(true).unwrap();
    let published = load.await.unwrap();

    receiver
        .wait_until(LONG, "every change after the outage", |s| {
            published.is_subset(&s.reading_keys())
        })
        .await;
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || daemon.metric("edgehook_outbox_depth") == Some(0),
        || "backlog not drained".to_string(),
    )
    .await;
    receiver.seen(|s| {
        // Readings published well after recovery (the backlog drained) arrive promptly again.
        let mut late: Vec<u64> = s
            .events
            .iter()
            .zip(&s.arrived_ms)
            .filter(|(e, _)| e["type"] == "sensor.reading.updated")
            .filter_map(|(e, at)| {
                let ts = e["data"]["fields"]["ts"].as_u64()?;
                (ts > recovered_at + 7_000).then(|| at.saturating_sub(ts))
            })
            .collect();
        late.sort_unstable();
        assert!(late.len() > 100, "{} late readings", late.len());
        let p99 = late[(late.len() - 1) * 99 / 100];
        eprintln!(
            "receiver down 60 s: {} changes, backlog {backlog}, {} duplicates, p99 after recovery {p99} ms",
            published.len(),
            s.duplicates
        );
        assert!(p99 < 500, "latency back to normal after the backlog: p99 {p99} ms");
    });
}

/// Mosquitto restarted twice (SIGTERM, as `systemctl restart mosquitto` does) while eight
/// sensors publish: messages the broker held for edgehook survive in its persistence file, the
/// ones in flight to edgehook are redelivered to its persistent session, and the sensors' own
/// unacknowledged publishes are sent again on their resumed sessions. Every change is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_twice_under_load_loses_nothing() {
    let (_dir, mut broker, receiver, daemon) = Rig::start("").await.parts();
    let (_running, never) = tokio::sync::watch::channel(false);
    let pause = Duration::from_millis(10);
    let publisher = common::publishers(broker.port, "brk-occ", 8, Some(300), pause, never);

    for (n, progress) in [300, 1200].into_iter().enumerate() {
        receiver
            .wait_until(LONG, "load before the restart", |s| {
                s.of_type("sensor.reading.updated").len() >= progress
            })
            .await;
        broker.stop();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        broker.restart();
        let deadline = Instant::now() + LONG;
        common::until(
            deadline,
            || daemon.metric("edgehook_mqtt_connects_total").unwrap_or(0) >= n as u64 + 2,
            || format!("no reconnect:\n{}", daemon.log()),
        )
        .await;
    }
    let published = publisher.await.unwrap();
    assert_eq!(published.len(), 8 * 300);
    let wait = Instant::now() + LONG;
    loop {
        let missing: Vec<_> =
            receiver.seen(|s| published.difference(&s.reading_keys()).cloned().collect());
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < wait,
            "{} changes lost across the restarts: {missing:?}\n{:?}\n{}\n{}",
            missing.len(),
            receiver.seen(|s| missing
                .iter()
                .map(|(d, _)| s
                    .readings_of(d)
                    .iter()
                    .map(|f| (
                        f["seq"].as_u64(),
                        f["presence"].clone(),
                        f["temperature"].clone()
                    ))
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()),
            common::http_get(daemon.metrics_port, "/metrics").unwrap_or_default(),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        eprintln!(
            "broker restarted twice: {} changes published, {} events delivered, {} duplicate deliveries",
            published.len(),
            s.events.len(),
            s.duplicates
        );
    });
}

/// A device publishes its retained birth again after every reconnect, as real firmware (and
/// the simulator) does: a last-will the broker published meanwhile (here, one published for it)
/// is answered by `device.online`. Found by the randomized fault harness: edgehook took the
/// second birth — the same topic and payload as the first, acknowledged a connection earlier —
/// for the broker's redelivery and skipped it, so the device stayed offline upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birth_again_after_a_broker_restart_is_news_not_a_redelivery() {
    let classes = "[[device_classes]]\nname = \"quick\"\nmatch = [\"*\"]\ndebounce = \"200ms\"\n";
    let (_dir, mut broker, receiver, mut daemon) = Rig::start(classes).await.parts();
    let mut sensor = device(broker.port, "occ-reborn", DeviceClass::OccupancySensor).await;
    sensor.flushed().await.unwrap();
    receiver
        .wait_until(LONG, "online", |s| s.of_type("device.online").len() == 1)
        .await;
    // What the broker does with its last-will when the device's connection drops uncleanly.
    let will = [("devices/occ-reborn/status", "offline")];
    common::publish_plain(broker.port, "will", &will).await;
    receiver
        .wait_until(LONG, "offline", |s| s.of_type("device.offline").len() == 1)
        .await;
    broker.stop();
    broker.restart();
    receiver
        .wait_until(LONG, "online again", |s| {
            s.of_type("device.online").len() == 2
        })
        .await;
    sensor.flushed().await.unwrap();
    assert_eq!(daemon.terminate(), Some(0));
}

/// A daemon with `max_size = "64KiB"` (and `outbox` keys `extra`) whose receiver refuses
/// everything, and about 200 KB of events published to it (three times the limit) by four
/// sensors `<prefix>-<i>`. Returns what the broker acknowledged.
async fn overfill(
    extra: &str,
    prefix: &'static str,
) -> (
    tempfile::TempDir,
    Mosquitto,
    Receiver,
    Daemon,
    std::collections::BTreeSet<(String, u64)>,
) {
    let config = format!("[outbox]\nmax_size = \"64KiB\"\n{extra}");
    let (dir, broker, receiver, mut daemon) = Rig::new(&config).await.parts();
    receiver.fail_with(503);
    daemon.start();
    let (_running, never) = tokio::sync::watch::channel(false);
    let load = common::publishers(broker.port, prefix, 4, Some(150), Duration::ZERO, never);
    let published = load.await.unwrap();
    (dir, broker, receiver, daemon, published)
}

/// Readers of a few metrics of the running daemon.
fn full(daemon: &Daemon) -> Option<u64> {
    daemon.metric("edgehook_outbox_full")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_pushes_back_to_the_broker_and_loses_nothing() {
    let (_dir, _broker, receiver, mut daemon, published) = overfill("", "cap").await;
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || full(&daemon) == Some(1),
        || format!("never full:\n{}", daemon.log()),
    )
    .await;
    let health = common::http_get(daemon.metrics_port, "/healthz").unwrap();
    assert!(health.contains("outbox full"), "{health}");
    daemon.assert_logged("outbox FULL");
    let bytes = daemon.metric("edgehook_outbox_bytes").unwrap();
    assert!(bytes <= 64 * 1024, "held within the limit: {bytes} bytes");
    let held = daemon.metric("edgehook_outbox_depth").unwrap();
    assert!(
        (held as usize) < published.len(),
        "the rest waits at the broker: {held} of {}",
        published.len()
    );

    receiver.fail_with(0);
    let wait = Instant::now() + LONG;
    loop {
        let missing: Vec<_> =
            receiver.seen(|s| published.difference(&s.reading_keys()).cloned().collect());
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < wait,
            "{} changes never delivered: {missing:?}\n{:?}\n{}",
            missing.len(),
            common::http_get(daemon.metrics_port, "/metrics"),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || full(&daemon) == Some(0),
        || format!("still full:\n{}", daemon.log()),
    )
    .await;
    daemon.assert_logged("outbox has room again");
    assert_eq!(daemon.metric("edgehook_outbox_dropped_total"), Some(0));
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_can_drop_old_readings_but_never_health_events() {
    let on_full = "on_full = \"drop_oldest_readings\"\n";
    let (_dir, _broker, receiver, mut daemon, published) = overfill(on_full, "drop").await;
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || {
            daemon.metric("edgehook_events_created_total{type=\"sensor.reading.updated\"}")
                >= Some(published.len() as u64)
        },
        || {
            format!(
                "not all taken in: {:?}\n{}",
                common::http_get(daemon.metrics_port, "/metrics"),
                daemon.log()
            )
        },
    )
    .await;
    let dropped = daemon.metric("edgehook_outbox_dropped_total").unwrap();
    assert!(dropped > 0, "{}", daemon.log());
    let bytes = daemon.metric("edgehook_outbox_bytes").unwrap();
    assert!(bytes <= 64 * 1024, "held within the limit: {bytes} bytes");

    receiver.fail_with(0);
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || daemon.metric("edgehook_outbox_depth") == Some(0),
        || format!("not drained:\n{}", daemon.log()),
    )
    .await;
    receiver.seen(|s| {
        assert_eq!(
            s.of_type("device.online").len(),
            4,
            "health events are never dropped"
        );
        let delivered = s.reading_keys().len() as u64;
        assert!(
            delivered + dropped >= published.len() as u64,
            "every reading delivered or counted as dropped: {delivered} + {dropped} of {}",
            published.len()
        );
        assert!((delivered as usize) < published.len());
    });
    assert_eq!(daemon.terminate(), Some(0));
}

/// Found by the fault harness (seed 3420867613234405262): under `drop_oldest_readings`, a
/// failing endpoint's share filled with events that policy never drops (a flood of new
/// devices' registrations) had nothing left to drop, so the writer waited for it — and held
/// every other endpoint (and every MQTT acknowledgement) with it. Now its new events are
/// dropped for it alone, counted, and the healthy endpoint keeps getting everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoints_share_full_of_health_events_holds_no_other_endpoint() {
    let ops = Receiver::start().await;
    ops.fail_with(503);
    let config = format!(
        "[outbox]\nmax_size = \"64KiB\"\non_full = \"drop_oldest_readings\"\n\n[[endpoints]]\nname = \"ops\"\nurl = \"{}\"\nsecret = \"{}\"\nevents = [\"device.*\"]\n[endpoints.retry]\ninitial = \"50ms\"\nmax = \"500ms\"\n",
        ops.url,
        common::SECRET
    );
    let (_dir, broker, default, mut daemon) = Rig::start(&config).await.parts();
    // New devices' registrations and births: only health events for ops, past its 32 KiB.
    // In chunks default keeps up with (its own share must not fill: it is the healthy one).
    for chunk in 0..15 {
        let topics: Vec<String> = (0..10)
            .map(|i| format!("sensors/flood-{}/reading", chunk * 10 + i))
            .collect();
        let messages: Vec<(&str, &str)> = topics
            .iter()
            .map(|t| (t.as_str(), r#"{"presence":true}"#))
            .collect();
        common::publish_plain(broker.port, "flood", &messages).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // default gets every flood device, and what comes next.
    common::publish_plain(
        broker.port,
        "late",
        &[("sensors/late-1/reading", r#"{"presence":false}"#)],
    )
    .await;
    common::until(
        Instant::now() + LONG,
        || default.seen(|s| s.of_type("sensor.reading.updated").len()) == 151,
        || {
            format!(
                "default has {} of 151 devices' readings:\n{}",
                default.seen(|s| s.of_type("sensor.reading.updated").len()),
                daemon.log()
            )
        },
    )
    .await;
    // ops's share is full of health events: its new ones are dropped for it alone, counted.
    assert!(
        daemon
            .metric("edgehook_endpoint_dropped_total{endpoint=\"ops\"}")
            .is_some_and(|n| n > 0),
        "{}",
        daemon.log()
    );
    daemon.assert_logged("are DROPPED for it alone");
    assert_eq!(daemon.terminate(), Some(0));
}

/// Issue 16 #4: what `on_full = drop_oldest_readings` deletes, an endpoint never gets, so it is
/// counted *for that endpoint*, durably: `edgehook_endpoint_dropped_total{endpoint}` and
/// `edgehook outbox status` say so, after a restart too (not only a process-wide counter that
/// a restart zeroes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_dropped_to_make_room_are_counted_for_their_endpoint_across_a_restart() {
    let on_full = "on_full = \"drop_oldest_readings\"\n";
    let (_dir, _broker, _receiver, mut daemon, published) = overfill(on_full, "dropc").await;
    let endpoint_dropped = "edgehook_endpoint_dropped_total{endpoint=\"default\"}";
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || {
            daemon.metric("edgehook_events_created_total{type=\"sensor.reading.updated\"}")
                >= Some(published.len() as u64)
        },
        || format!("not all taken in:\n{}", daemon.log()),
    )
    .await;
    let dropped = daemon.metric("edgehook_outbox_dropped_total").unwrap();
    assert!(dropped > 0, "{}", daemon.log());
    assert_eq!(daemon.metric(endpoint_dropped), Some(dropped));
    assert_eq!(daemon.terminate(), Some(0));
    let (code, out, err) = daemon.outbox_cli(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("dropped       {dropped} ")),
        "outbox status tells the {dropped} dropped readings:\n{out}"
    );
    daemon.start();
    daemon.wait_metric(endpoint_dropped, dropped).await;
    assert_eq!(daemon.metric(endpoint_dropped), Some(dropped));
    assert_eq!(daemon.terminate(), Some(0));
}

/// Issue 16 #1: a change held back by `min_interval` is acknowledged to the broker, so it must
/// be on disk when the PUBACK goes out, though no event has been made of it yet. Publish A,
/// then B 0.3 s later (held), `kill -9` 30 ms after B's PUBACK, start again: B is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_change_survives_kill9_right_after_its_ack() {
    let classes = r#"
[[device_classes]]
name = "held"
match = ["held-*"]
min_interval = "5s"
"#;
    let (_dir, broker, receiver, mut daemon) = Rig::start(classes).await.parts();
    let mut sensor = device(broker.port, "held-occ-1", DeviceClass::OccupancySensor).await;
    for (presence, seq) in [(true, 1), (false, 2)] {
        let payload = serde_json::json!({"presence": presence, "seq": seq});
        sensor
            .publish_raw(payload.to_string().into_bytes())
            .await
            .unwrap();
        sensor.flushed().await.unwrap();
        if seq == 1 {
            receiver
                .wait_until(LONG, "A", |s| s.readings_of("held-occ-1").len() == 1)
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // The daemon has B (its birth, A and B: 3 messages); its ack follows within milliseconds.
    wait_received(&daemon, 3).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    daemon.kill9();
    daemon.start();
    receiver
        .wait_until(LONG, "the held change B after the restart", |s| {
            s.readings_of("held-occ-1")
                .last()
                .is_some_and(|f| f["presence"] == false)
        })
        .await;
}

/// Issue 16 #1, the same path: an `offline` report inside its debounce window (default 5 s)
/// makes no event yet, but is acknowledged; after `kill -9` 30 ms later the device is still
/// reported offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_inside_its_debounce_survives_kill9_right_after_its_ack() {
    let (_dir, broker, receiver, mut daemon) = Rig::start("").await.parts();
    // A device with no retained messages: nothing brings the report back after the restart
    // but the outbox (a retained status would be redelivered when edgehook resubscribes).
    let topic = "devices/deb-occ-1/status";
    common::publish_plain(broker.port, "deb-1", &[(topic, "online")]).await;
    receiver
        .wait_until(LONG, "online", |s| s.of_type("device.online").len() == 1)
        .await;
    common::publish_plain(broker.port, "deb-2", &[(topic, "offline")]).await;
    wait_received(&daemon, 2).await; // the birth, then `offline`
    tokio::time::sleep(Duration::from_millis(30)).await;
    daemon.kill9();
    daemon.start();
    receiver
        .wait_until(LONG, "device.offline after the restart", |s| {
            s.of_type("device.offline").len() == 1
        })
        .await;
}

/// Wait until the daemon has received `n` MQTT messages since it started.
async fn wait_received(daemon: &Daemon, n: u64) {
    daemon
        .wait_metric("edgehook_messages_received_total", n)
        .await;
}

/// Issue 16 #12: delivery's window is bounded in bytes, not only in events. 600 readings of
/// 60 KiB wait for a receiver that is down; after a restart delivery loads them and keeps
/// retrying. With a window of 4,096 events it held all 36 MB of them in memory (and a larger
/// backlog was an OOM kill under `MemoryMax=96M` at every start); now it holds at most
/// `window_bytes` (256 KiB) and one event, and the daemon's peak stays well under `MemoryMax`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_readings_is_delivered_within_bounded_memory() {
    // A camera's readings are large: what is kept of one device is raised to fit them.
    let extra = "[devices]\nmax_state_bytes = 131072\n";
    let (_dir, broker, receiver, mut daemon) = Rig::new(extra).await.parts();
    receiver.fail_with(503);
    daemon.start();
    let mut sensor = device(broker.port, "big-cam-1", DeviceClass::OccupancySensor).await;
    let n = 600;
    for seq in 0..n {
        let blob: String =
            std::iter::repeat_n(char::from(b'a' + (seq % 26) as u8), 60 * 1024).collect();
        let payload = serde_json::json!({"seq": seq, "image": blob});
        sensor
            .publish_raw(payload.to_string().into_bytes())
            .await
            .unwrap();
    }
    sensor.flushed().await.unwrap();
    daemon
        .wait_metric(
            "edgehook_events_created_total{type=\"sensor.reading.updated\"}",
            n,
        )
        .await;
    daemon.kill9();
    daemon.start();
    let held = "edgehook_delivery_window_bytes{endpoint=\"default\"}";
    let mut most = 0;
    let tried = receiver.seen(|s| s.failures_served);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        most = most.max(daemon.metric(held).expect("the window is measured"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        receiver.seen(|s| s.failures_served) > tried,
        "delivery loads and retries meanwhile"
    );
    assert!(
        most <= (256 << 10) + 62 * 1024,
        "{most} bytes held: more than window_bytes and one event"
    );
    let peak_kb = common::peak_rss_kb(daemon.pid().unwrap()).expect("VmHWM in /proc/<pid>/status");
    assert!(
        peak_kb < 96 * 1024,
        "peak RSS {peak_kb} kB: over MemoryMax=96M"
    );
    receiver.fail_with(0);
    receiver
        .wait_until(Duration::from_secs(120), "every large reading", |s| {
            s.readings_of("big-cam-1").len() == n as usize
        })
        .await;
}

/// Issue 16 #10: any local user can open connections to the health and metrics listener. With
/// the daemon's file descriptors limited to 128 and 160 connections that never send a byte,
/// it used to accept until it ran out of descriptors, then spin on the failing accept, and
/// had none left to deliver with. Now it serves a bounded number at once, closes the silent
/// ones after the header timeout, and delivers and answers `/healthz` meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_local_connections_starves_nothing() {
    let (_dir, broker, receiver, mut daemon) = Rig::start("").await.parts();
    let pid = daemon.pid().unwrap();
    let limited = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=128:128"])
        .status()
        .unwrap();
    assert!(limited.success());
    let mut silent = Vec::new();
    for _ in 0..160 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], daemon.metrics_port));
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            silent.push(s);
        }
    }
    assert!(
        silent.len() >= 100,
        "only {} connections made",
        silent.len()
    );
    let ticks_before = cpu_ticks(pid);
    let started = Instant::now();
    let changes = publish(
        &mut device(broker.port, "flood-occ-1", DeviceClass::OccupancySensor).await,
        5,
        1.0,
    )
    .await;
    receiver
        .wait_until(LONG, "readings delivered during the flood", |s| {
            s.readings_of("flood-occ-1") == changes
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = (cpu_ticks(pid) - ticks_before) as f64 / 100.0;
    let wall = started.elapsed().as_secs_f64();
    assert!(
        cpu < wall * 0.5,
        "{cpu:.2} s of CPU in {wall:.2} s: spinning"
    );
    // The silent ones are closed after the header timeout; the listener serves again.
    drop(silent);
    common::until(
        Instant::now() + Duration::from_secs(20),
        || common::http_get(daemon.metrics_port, "/healthz").is_some(),
        || "/healthz never answered after the flood".to_string(),
    )
    .await;
    let health = common::http_get(daemon.metrics_port, "/healthz").unwrap();
    assert!(health.contains("ok"), "{health}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// User plus system CPU time of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Issue 16 #6: readings from 5,000 made-up device ids (with `max_devices = 500`). Every one
/// used to get a registry entry and a state on disk (30,000 took the memory from 8 to 80 MB,
/// and as much again at every start: a crash loop under `MemoryMax=96M`). Past the bound they
/// are bad input: counted, logged once a minute, acknowledged, no event; the known device keeps
/// flowing, and memory stays under half of `MemoryMax`, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_device_ids_is_refused_past_the_bound_and_known_devices_flow() {
    let bounds = "[devices]\nmax_devices = 500\n";
    let (_dir, broker, receiver, mut daemon) = Rig::start(bounds).await.parts();
    let mut known = device(broker.port, "known-occ-1", DeviceClass::OccupancySensor).await;
    let before = publish(&mut known, 2, 1.0).await;
    let topics: Vec<String> = (0..5_000)
        .map(|i| format!("sensors/junk-{i:05}-{}/reading", fastrand::u32(..)))
        .collect();
    let messages: Vec<(&str, &str)> = topics
        .iter()
        .map(|t| (t.as_str(), r#"{"presence":true,"temperature":20.5}"#))
        .collect();
    common::publish_plain(broker.port, "junk-flood", &messages).await;
    let after = publish(&mut known, 2, 1.0).await;
    receiver
        .wait_until(LONG, "the known device's readings through the flood", |s| {
            s.readings_of("known-occ-1") == [before.clone(), after.clone()].concat()
        })
        .await;
    let refused = "edgehook_device_messages_refused_total{reason=\"max_devices\"}";
    daemon.wait_metric(refused, 4_500).await;
    assert_eq!(
        daemon.metric(refused),
        Some(4_501),
        "5,000 new ids, 499 places left"
    );
    assert_eq!(daemon.metric("edgehook_devices"), Some(500));
    let lines = daemon.log().matches("device limit reached").count();
    assert_eq!(lines, 1, "logged once a minute: {}", daemon.log());
    let peak = common::peak_rss_kb(daemon.pid().unwrap()).expect("VmHWM in /proc/<pid>/status");
    assert!(peak < 48 * 1024, "peak RSS {peak} kB");
    let junk = |s: &common::Seen| {
        s.events
            .iter()
            .filter(|e| {
                e["data"]["device_id"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("junk-"))
            })
            .count()
    };
    receiver
        .wait_until(LONG, "the admitted ids' events", |s| junk(s) >= 499 * 3)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.seen(junk),
        499 * 3,
        "registered, online and a reading for each admitted id (none for a refused one)"
    );
    daemon.kill9();
    daemon.start();
    assert_eq!(daemon.metric("edgehook_devices"), Some(500));
    let peak = common::peak_rss_kb(daemon.pid().unwrap()).expect("VmHWM in /proc/<pid>/status");
    assert!(peak < 48 * 1024, "peak RSS {peak} kB after a restart");
}

/// The envelope time of an event, in Unix ms.
fn stamped_ms(event: &serde_json::Value) -> u64 {
    let t = humantime::parse_rfc3339(event["timestamp"].as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Issue 16 #7: state written while the clock was a day ahead, then a restart with the right
/// clock (a Pi whose clock was wrong at boot, corrected before the next start). New changes
/// were never reported, even with `min_interval = 0`: every remembered time was in the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_written_a_day_ahead_does_not_freeze_reporting_under_the_right_clock() {
    let (dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+1d\n").unwrap();
    common::fake_clock(&mut daemon, &offset);
    daemon.start();
    let mut sensor = device(broker.port, "ahead-occ-1", DeviceClass::OccupancySensor).await;
    let first = publish(&mut sensor, 1, 1.0).await;
    receiver
        .wait_until(LONG, "the first reading, stamped a day ahead", |s| {
            s.readings_of("ahead-occ-1") == first
        })
        .await;
    let ahead = receiver.seen(|s| stamped_ms(s.of_type("sensor.reading.updated")[0]));
    assert!(
        ahead > firmware_sim::now_ms() + 23 * 3_600_000,
        "faketime applies"
    );
    assert_eq!(daemon.terminate(), Some(0));

    std::fs::write(&offset, "+0\n").unwrap();
    daemon.start();
    let next = publish(&mut sensor, 2, 1.0).await;
    receiver
        .wait_until(LONG, "changes under the right clock", |s| {
            s.readings_of("ahead-occ-1") == [first.clone(), next.clone()].concat()
        })
        .await;
}

/// Issue 16 #7: NTP steps the clock two hours forward while events wait for a receiver that
/// is down, with `max_age = "1h"`. Their age counts real time only, so none is given up on;
/// the step is logged; events made after it carry the new time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_clock_step_while_running_dead_letters_nothing_early() {
    let (dir, broker, receiver, mut daemon) =
        Rig::with_webhook(|url| common::webhook_section(url, "max_age = \"1h\""))
            .await
            .parts();
    receiver.fail_with(503);
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    common::fake_clock(&mut daemon, &offset);
    daemon.start();
    let mut sensor = device(broker.port, "step-occ-1", DeviceClass::OccupancySensor).await;
    let before = publish(&mut sensor, 2, 1.0).await;
    receiver
        .wait_until(LONG, "attempts before the step", |s| s.failures_served >= 3)
        .await;
    std::fs::write(&offset, "+2h\n").unwrap();
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || daemon.log().contains("system clock stepped"),
        || daemon.log(),
    )
    .await;
    let tried = receiver.seen(|s| s.failures_served);
    receiver
        .wait_until(LONG, "attempts after the step", |s| {
            s.failures_served >= tried + 5
        })
        .await;
    assert_eq!(
        daemon.metric("edgehook_dead_letters_total{endpoint=\"default\"}"),
        Some(0),
        "{}",
        daemon.log()
    );
    let after = publish(&mut sensor, 1, 1.0).await;
    receiver.fail_with(0);
    receiver
        .wait_until(LONG, "everything, once the receiver is back", |s| {
            s.readings_of("step-occ-1") == [before.clone(), after.clone()].concat()
        })
        .await;
    receiver.seen(|s| {
        let readings = s.of_type("sensor.reading.updated");
        let real = firmware_sim::now_ms();
        assert!(stamped_ms(readings[0]) < real, "made before the step");
        let last = stamped_ms(readings[2]);
        assert!(
            last > real + 7_000_000 && last < real + 7_500_000,
            "made after the step, stamped with the new time: {last} vs {real}"
        );
    });
}

/// Issue 16 #9: a power cut is not a `kill -9`: it also drops every write that was not
/// synced, and every create, rename and unlink whose directory was not. The state directory
/// is on [`firmware_sim::powercut`], a FUSE filesystem that keeps exactly what was synced; the
/// power is cut at random moments under load (the first one while the store is being created,
/// as in the first second of a fresh install), half the time tearing the unsynced writes, and
/// the daemon started again on what is left. Every change the broker acknowledged must reach
/// the receiver. `TEST_POWERCUT_SEED` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_at_random_moments_under_load_lose_no_acknowledged_change() {
    let seed = std::env::var("TEST_POWERCUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("power cuts: seed {seed} (TEST_POWERCUT_SEED={seed} cargo test --test faults power_cuts replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let (card, state) = common::powercut_card(dir.path(), seed);
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, "");
    daemon.rewrite_state_dir(&state, broker.port, &receiver.url);

    daemon.spawn();
    tokio::time::sleep(Duration::from_millis(rng.u64(0..150))).await;
    card.fs.cut(rng.bool());
    daemon.kill9();
    card.fs.power_on();
    daemon.start();

    let (stop, running) = tokio::sync::watch::channel(false);
    let publisher = common::publishers(
        broker.port,
        "pc-occ",
        6,
        None,
        Duration::from_millis(5),
        running,
    );
    let cuts = 8;
    for _ in 0..cuts {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..700))).await;
        card.fs.cut(rng.bool());
        daemon.kill9();
        card.fs.power_on();
        daemon.start();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    let published = publisher.await.unwrap();
    assert!(
        published.len() > 500,
        "only {} changes published",
        published.len()
    );
    let wait = Instant::now() + Duration::from_secs(90);
    loop {
        let missing: Vec<_> =
            receiver.seen(|s| published.difference(&s.reading_keys()).cloned().collect());
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < wait,
            "seed {seed}: {} acknowledged changes lost after {cuts} power cuts: {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (written, syncs) = card.fs.counts();
    receiver.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        eprintln!(
            "seed {seed}: {} power cuts, {} changes acknowledged, 0 lost, {} events delivered, {} duplicates; the card took {written} bytes and {syncs} syncs",
            cuts + 1,
            published.len(),
            s.events.len(),
            s.duplicates
        );
    });
    assert_eq!(daemon.terminate(), Some(0));
}

/// A broker, a receiver and a daemon delivering to it whose state directory is on the power-cut
/// card (`seed`), checkpointing every 100 ms.
async fn on_card_checkpointing_often(
    dir: &std::path::Path,
    seed: u64,
) -> (Mosquitto, Receiver, firmware_sim::powercut::Mounted, Daemon) {
    let broker = Mosquitto::start(dir);
    let receiver = Receiver::start().await;
    let (card, state) = common::powercut_card(dir, seed);
    let outbox = "[outbox]\ncheckpoint_interval = \"100ms\"\n";
    let mut daemon = Daemon::new(dir, broker.port, &receiver.url, outbox);
    daemon.rewrite_state_dir(&state, broker.port, &receiver.url);
    daemon.start();
    (broker, receiver, card, daemon)
}

/// While `receiver` refuses, `each` readings from each of four devices `<prefix>-<i>`, put into
/// sled by a checkpoint (due 100 ms after the last write); then the disk is full. Returns what
/// the broker acknowledged.
async fn backlog_in_sled_then_full_disk(
    broker: &Mosquitto,
    receiver: &Receiver,
    card: &firmware_sim::powercut::Mounted,
    prefix: &'static str,
    each: usize,
) -> std::collections::BTreeSet<(String, u64)> {
    receiver.fail_with(503);
    let (_stop, running) = tokio::sync::watch::channel(false);
    let published = common::publishers(
        broker.port,
        prefix,
        4,
        Some(each),
        Duration::from_millis(2),
        running,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    card.fs.set_full(true);
    published
}

/// The daemon met the full disk (else the test proves nothing), and stops with exit code 0.
fn met_the_full_disk_and_exits_cleanly(daemon: &mut Daemon) {
    assert!(
        daemon.log().contains("No space left on device"),
        "the full disk was met (else this test proves nothing):\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log());
}

/// Wait until `receiver` has every reading in `published` and the daemon holds nothing pending
/// for it; `what` names the moment in a failure.
async fn all_delivered_none_pending(
    daemon: &Daemon,
    receiver: &Receiver,
    published: &std::collections::BTreeSet<(String, u64)>,
    what: &str,
) {
    common::until(
        Instant::now() + LONG,
        || receiver.seen(|s| published.is_subset(&s.reading_keys())),
        || {
            let missing = receiver.seen(|s| published.difference(&s.reading_keys()).count());
            format!(
                "{what}: {missing} of {} readings never delivered:\n{}",
                published.len(),
                daemon.log()
            )
        },
    )
    .await;
    let pending = "edgehook_endpoint_pending{endpoint=\"default\"}";
    common::until(
        Instant::now() + Duration::from_secs(20),
        || daemon.metric(pending) == Some(0),
        || {
            format!(
                "{what}: {:?} events stay pending after everything was delivered:\n{}",
                daemon.metric(pending),
                daemon.log()
            )
        },
    )
    .await;
}

/// Found by the randomized fault harness, twice: the disk fills while events are being
/// delivered and the outbox is reopened from disk. First, records delivery had already passed
/// (delivered, their removal lost with the broken instance; or written again by the recovery)
/// sat in the queue behind its read position, never sent, never removed, until the next
/// restart; then, delivery that found the store unavailable while it was being reopened waited
/// for a write to wake it, and with every device quiet none came. After a reopen (or a failed
/// removal) delivery reads its queue again from the start, and a failed read is retried on its
/// own: each time the disk fills and frees, with nothing published after, everything is
/// delivered and nothing stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_stays_pending_after_the_outbox_is_reopened_on_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    // Checkpoints often, so that they meet the full disk too.
    let (broker, receiver, card, mut daemon) = on_card_checkpointing_often(dir.path(), 3).await;
    // A slow receiver: deliveries are in flight when the store goes away.
    receiver.delay(Duration::from_millis(50));
    let prefixes = ["full-a", "full-b", "full-c", "full-d", "full-e", "full-f"];
    for (round, prefix) in prefixes.into_iter().enumerate() {
        let (stop, running) = tokio::sync::watch::channel(false);
        let publisher = common::publishers(
            broker.port,
            prefix,
            4,
            None,
            Duration::from_millis(3),
            running,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        card.fs.set_full(true);
        // Nothing is published from here on: only delivery's own retries can finish the job.
        stop.send(true).unwrap();
        let published = publisher.await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        card.fs.set_full(false);
        all_delivered_none_pending(&daemon, &receiver, &published, &format!("round {round}")).await;
    }
    assert!(
        daemon.log().contains("outbox writable again"),
        "the disk filled and the outbox was reopened:\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// Found by the randomized fault harness (seed 2116547421131359390): the disk filled while only
/// delivery wrote to the store — removing what it had delivered; no device published, so the
/// writer had nothing to write. sled's own periodic flush met the full disk, and after an I/O
/// error sled refuses every later write; the store was reopened only by the writer, on its own
/// errors, so it never was. Every removal failed, delivery read its queue again from the start
/// and sent the head of each device's lane again, as fast as the receiver answered, for good:
/// nothing behind a head was ever delivered. Now a storage error met anywhere has the writer
/// check the store (a checkpoint) and reopen it, and delivery waits for that (or a second)
/// before it reads again: every event arrives, with a bounded number of duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_broken_under_delivery_alone_is_reopened_and_every_event_still_goes() {
    let dir = tempfile::tempdir().unwrap();
    // Checkpoints often: the backlog is in sled, not only in the log, when delivery removes it.
    let (broker, receiver, card, mut daemon) = on_card_checkpointing_often(dir.path(), 5).await;
    // From here on nothing is published: the only writes are delivery's removals.
    let published = backlog_in_sled_then_full_disk(&broker, &receiver, &card, "alone", 30).await;
    // Every device's readings go and are removed (sled holds the removals until its own flush,
    // once a second, meets the full disk), except one device's, refused until that happened.
    receiver.fail_device(Some("alone-0"));
    receiver.fail_with(0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    receiver.fail_device(None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    card.fs.set_full(false);
    all_delivered_none_pending(&daemon, &receiver, &published, "after the full disk").await;
    // Duplicates are allowed, a flood of them is not: each event went a few times at most.
    let (duplicates, events) = receiver.seen(|s| (s.duplicates, s.events.len() as u64));
    assert!(
        duplicates <= 4 * events,
        "{duplicates} duplicates of {events} events: delivery re-sent in a loop:\n{}",
        daemon.log()
    );
    met_the_full_disk_and_exits_cleanly(&mut daemon);
}

/// Found by the fault harness (seed 6967197422479035482): the disk filled and freed while only
/// delivery wrote, and every removal was made before sled's own flush met the full disk — so no
/// operation failed afterwards and nothing woke the writer. sled stayed broken until shutdown,
/// whose final checkpoint failed: exit 1 (nothing lost: the log had everything). The final
/// checkpoint now reopens the store and tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_broken_while_nobody_writes_is_reopened_at_shutdown_which_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, receiver, card, mut daemon) = on_card_checkpointing_often(dir.path(), 7).await;
    let published = backlog_in_sled_then_full_disk(&broker, &receiver, &card, "idle", 20).await;
    // Everything goes and is removed at once; sled's flush of the removals then fails.
    receiver.fail_with(0);
    all_delivered_none_pending(&daemon, &receiver, &published, "full disk").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    card.fs.set_full(false);
    met_the_full_disk_and_exits_cleanly(&mut daemon);
}

/// Issue 16 #9: the power is cut right after a fresh store wrote its marker (`outbox.id`): the
/// id inside the store must already be durable too, or the next start refuses the store as
/// one that "lost its history" — a gateway that never starts again after a power cut in its
/// first second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_right_after_a_fresh_store_is_made_leaves_one_that_starts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let (card, state) = common::powercut_card(dir.path(), 1);
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, "");
    daemon.rewrite_state_dir(&state, broker.port, &receiver.url);
    daemon.spawn();
    let wait = Instant::now() + LONG;
    while !state.join("outbox.id").exists() {
        assert!(Instant::now() < wait, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(1));
    }
    card.fs.cut(false);
    daemon.kill9();
    card.fs.power_on();
    daemon.start();
    let changes = publish(
        &mut device(broker.port, "fresh-occ-1", DeviceClass::OccupancySensor).await,
        2,
        1.0,
    )
    .await;
    receiver
        .wait_until(LONG, "delivery on the store that survived", |s| {
            s.readings_of("fresh-occ-1") == changes
        })
        .await;
}

/// Found by the randomized fault harness (seed 4568558730993717793): an operator created an
/// endpoint a moment after a full disk was freed, while the outbox was still closed, waiting
/// for the writer's next attempt to reopen it (its retries back off to 5 s apart); the API
/// refused at once ("not applied: the outbox is being reopened after a storage error"). An
/// operator at 2 a.m. would rather it waited: a change now waits (a bounded while) for the
/// reopen and is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_created_while_the_outbox_is_being_reopened_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, receiver, card, mut daemon) = on_card_checkpointing_often(dir.path(), 11).await;
    let crm = Receiver::start().await;
    card.fs.set_full(true);
    let (_stop, running) = tokio::sync::watch::channel(false);
    let mut published = common::publishers(
        broker.port,
        "reopen",
        2,
        Some(5),
        Duration::from_millis(5),
        running,
    )
    .await
    .unwrap();
    // The writer failed four times: its store is closed and its next reopen is 800 ms away.
    common::until(
        Instant::now() + LONG,
        || daemon.log().contains("failures=4"),
        || format!("the writer never met the full disk:\n{}", daemon.log()),
    )
    .await;
    card.fs.set_full(false);
    let secret = [("EDGEHOOK_ENDPOINT_SECRET", common::SECRET)];
    let (code, out, err) = daemon.cli(
        &[
            "endpoints",
            "create",
            "crm",
            "--url",
            &crm.url,
            "--events",
            "sensor.*",
        ],
        &secret,
    );
    assert_eq!(code, 0, "{out}{err}\n{}", daemon.log());
    assert!(out.contains("endpoint crm created (applied now)"), "{out}");
    // Nothing acknowledged was lost, and the new endpoint takes what comes next.
    all_delivered_none_pending(&daemon, &receiver, &published, "after the reopen").await;
    let (_stop, running) = tokio::sync::watch::channel(false);
    let after = common::publishers(
        broker.port,
        "after",
        1,
        Some(3),
        Duration::from_millis(5),
        running,
    )
    .await
    .unwrap();
    crm.wait_until(LONG, "the new endpoint's readings", |s| {
        after.is_subset(&s.reading_keys())
    })
    .await;
    published.extend(after);
    all_delivered_none_pending(&daemon, &receiver, &published, "at the end").await;
    met_the_full_disk_and_exits_cleanly(&mut daemon);
}
