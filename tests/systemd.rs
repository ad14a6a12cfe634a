//! systemd's notify protocol, with the test playing systemd: READY as soon as the daemon runs
//! (degraded or not, with the health in STATUS), watchdog pings, STOPPING on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Daemon, Mosquitto, Receiver, Rig};

fn messages_until(sock: &UnixDatagram, within: Duration, want: &str) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            got.push(msg);
            if done {
                break;
            }
        }
    }
    got
}

/// Issue 16 #5: with the broker down at boot the daemon is running, not starting: READY at
/// once (under `TimeoutStartSec` a wait for the broker was a restart loop), with the reason in
/// STATUS, which follows the health when the broker comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_at_once_with_the_broker_down_status_follows_health_then_watchdog_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path());
    broker.kill(); // the broker is down when the service starts
    let receiver = Receiver::start().await;
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, "");
    daemon
        .env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    daemon.env.push(("WATCHDOG_USEC".into(), "600000".into()));
    daemon.env.push(("JOURNAL_STREAM".into(), "8:12345".into()));
    daemon.spawn();

    let early = messages_until(&sock, Duration::from_secs(10), "READY=1");
    let ready = early
        .iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY with the broker down: {early:?}\n{}", daemon.log()));
    assert!(
        ready.contains("STATUS=running; degraded: mqtt broker not connected"),
        "{ready:?}"
    );
    let waiting = messages_until(&sock, Duration::from_millis(1000), "never");
    assert!(
        waiting.iter().any(|m| m.contains("WATCHDOG=1")),
        "the watchdog is fed while the broker is down: {waiting:?}"
    );

    broker.restart();
    let got = messages_until(&sock, Duration::from_secs(20), "STATUS=running; healthy");
    assert!(
        got.iter()
            .any(|m| m.lines().any(|l| l == "STATUS=running; healthy")),
        "{got:?}\n{}",
        daemon.log()
    );
    assert_eq!(daemon.metric("edgehook_mqtt_connected"), Some(1));

    let pings = messages_until(&sock, Duration::from_secs(1), "never");
    assert!(
        pings.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "{pings:?}"
    );

    let sock2 = sock.try_clone().unwrap();
    let stopping =
        std::thread::spawn(move || messages_until(&sock2, Duration::from_secs(10), "STOPPING=1"));
    assert_eq!(daemon.terminate(), Some(0));
    let got = stopping.join().unwrap();
    assert!(
        got.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{got:?}"
    );
    // journald lines: a priority prefix, no timestamp, no colour
    let log = daemon.log();
    assert!(
        log.lines().any(|l| l.starts_with("<6>edgehook starting")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("<4>MQTT connection lost or refused")),
        "{log}"
    );
    assert!(
        log.lines()
            .all(|l| l.starts_with('<') && !l.contains('\u{1b}')),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_device_rules_and_endpoints_live_and_names_what_needs_a_restart() {
    let (dir, broker, receiver, mut daemon) = Rig::start("").await.parts();
    let mut sensor = common::device(
        broker.port,
        "hup-occ-1",
        firmware_sim::DeviceClass::OccupancySensor,
    )
    .await;
    common::publish(&mut sensor, 1, 1.0).await;
    receiver
        .wait_until(Duration::from_secs(20), "the first reading", |s| {
            !s.of_type("sensor.reading.updated").is_empty()
        })
        .await;
    assert!(receiver.seen(|s| s.of_type("workspace.status.updated").is_empty()));

    // A broken file first: refused, the daemon keeps running on what it has.
    std::fs::write(dir.path().join("edgehook.toml"), "gateway_id = [").unwrap();
    daemon.signal(1);
    // Then a workspace on the sensor and a new webhook timeout (both applied live), and a new
    // MQTT reconnect bound (needs a restart).
    let extra = "[[workspaces]]\nid = \"desk-hup\"\nsensors = [\"hup-occ-1\"]\nhold = \"1s\"\n";
    let wait = Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains("configuration not reloaded") {
        assert!(Instant::now() < wait, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.rewrite_config(broker.port, &receiver.url, extra);
    let text = std::fs::read_to_string(dir.path().join("edgehook.toml"))
        .unwrap()
        .replace("timeout = \"2s\"", "timeout = \"3s\"")
        .replace("reconnect_max = \"500ms\"", "reconnect_max = \"600ms\"");
    std::fs::write(dir.path().join("edgehook.toml"), text).unwrap();
    daemon.signal(1);
    receiver
        .wait_until(
            Duration::from_secs(20),
            "the workspace's first status",
            |s| s.of_type("workspace.status.updated").len() == 1,
        )
        .await;
    receiver.seen(|s| {
        let ws = &s.of_type("workspace.status.updated")[0]["data"];
        assert_eq!(ws["workspace_id"], "desk-hup");
        assert!(ws["status"] == "Occupied" || ws["status"] == "Free", "{ws}");
    });
    let log = daemon.log();
    assert!(log.contains("needs_restart=mqtt"), "{log}");
    assert!(
        log.contains("configuration reloaded: endpoints applied started=default"),
        "the edited endpoint restarted with its new timeout: {log}"
    );
    assert_eq!(
        daemon.terminate(),
        Some(0),
        "still running and stops cleanly"
    );
}

/// Issue 16 #5: an endpoint disabled by a 410 stays disabled across a restart, and the daemon
/// still reports READY (it was silent before, and under `Restart=on-failure` that was a loop),
/// saying in STATUS which degraded state it is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_a_restart_with_an_endpoint_disabled_by_410() {
    let (dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    receiver.fail_with(410);
    daemon.start();
    let mut sensor = common::device(
        broker.port,
        "r410-occ-1",
        firmware_sim::DeviceClass::OccupancySensor,
    )
    .await;
    common::publish(&mut sensor, 2, 1.0).await;
    daemon
        .wait_metric("edgehook_endpoint_disabled{endpoint=\"default\"}", 1)
        .await;
    assert_eq!(daemon.terminate(), Some(0));

    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    daemon
        .env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    daemon.spawn();
    let got = messages_until(&sock, Duration::from_secs(10), "READY=1");
    let ready = got
        .iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY: {got:?}\n{}", daemon.log()));
    // The broker may still be connecting when READY goes out; the disabled endpoint is said
    // once it is the only reason left.
    let mut told: Vec<String> = vec![ready.clone()];
    told.extend(messages_until(
        &sock,
        Duration::from_secs(10),
        "STATUS=running; degraded: an endpoint is disabled after 410 Gone (edgehook outbox status; edgehook outbox enable)",
    ));
    assert!(
        told.iter()
            .any(|m| m.contains("degraded: an endpoint is disabled after 410 Gone")),
        "{told:?}"
    );
}

/// #43.13: an endpoint named in the file as one made through the API: SIGHUP logged an error
/// and then "endpoints applied", `check-config` said ok, and the next start exited 1 — every
/// device and endpoint stopped for one name. Now `check-config` refuses it (a warning only as
/// the unit's `--at-start`), the reload says the endpoints are not applied, and a start runs
/// the API's endpoint with the file's set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_in_both_the_file_and_the_api_is_refused_but_never_stops_a_start() {
    let crm = Receiver::start().await;
    let (dir, broker, receiver, mut daemon) = Rig::start("").await.parts();
    let api = common::Api::with_token(&daemon);
    let made = api
        .call(
            "POST",
            "/v1/endpoints",
            "/v1/endpoints",
            Some(&serde_json::json!({"name": "crm", "url": crm.url, "secret": common::SECRET, "retry": {"initial": "50ms", "max": "500ms"}})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    // The file gets an endpoint of the same name.
    let webhook = format!(
        "{}\n[[endpoints]]\nname = \"crm\"\nurl = \"{}\"\nsecret = \"other\"\n",
        common::webhook_section(&receiver.url, ""),
        receiver.url
    );
    daemon.rewrite_webhook(broker.port, &webhook);
    let config = dir.path().join("edgehook.toml");
    let state = dir.path().join("state");
    let check = |extra: &[&str]| {
        let out = common::daemon_command()
            .arg("check-config")
            .args(extra)
            .arg("--state-dir")
            .arg(&state)
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`crm`") && err.contains("endpoints.json"),
        "{err}"
    );
    let (code, err) = check(&["--at-start"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("warning"), "{err}");
    // SIGHUP: refused, and said so to the end.
    daemon.signal(1);
    let wait = Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains("configuration reloaded:") {
        assert!(Instant::now() < wait, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = daemon.log();
    assert!(log.contains("endpoints NOT applied"), "{log}");
    assert!(!log.contains("workspaces and endpoints applied"), "{log}");
    // A start goes on, with the API's endpoint.
    assert_eq!(daemon.terminate(), Some(0));
    daemon.start();
    let mut sensor = common::device(
        broker.port,
        "both-occ-1",
        firmware_sim::DeviceClass::OccupancySensor,
    )
    .await;
    common::publish(&mut sensor, 1, 1.0).await;
    crm.wait_until(Duration::from_secs(20), "a reading at the API's crm", |s| {
        !s.of_type("sensor.reading.updated").is_empty()
    })
    .await;
    daemon.assert_logged("the API's endpoint runs");
    assert_eq!(daemon.terminate(), Some(0));
}
