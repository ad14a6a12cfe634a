//! A state directory written by an older release (commit 6d41b75, before the control API, the
//! `groups` tree and the device vocabulary; made by `scripts/make-old-store`) opens in place:
//! the commands read it, the daemon delivers every event it held, and the devices it knew are
//! not registered again — a device never seen before is.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::{publish_plain, Daemon, Mosquitto, Receiver};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_by_an_older_release_opens_in_place_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/store-6d41b75.tar.gz"
    );
    let untar = Command::new("tar")
        .args(["-xzf", fixture, "-C"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(untar.success());
    let state = dir.path().join("state");

    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    receiver.fail_with(503);
    let class =
        "[[device_classes]]\nname = \"old\"\nmatch = [\"old-*\", \"new-*\"]\ndebounce = \"0s\"\n";
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, class);

    // The commands read it before the daemon has ever run on it.
    let (code, out, err) = daemon.outbox_cli(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    let pending: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("pending       "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        pending >= 10,
        "the old store holds its undelivered events: {out}"
    );

    daemon.start();
    assert_eq!(daemon.metric("edgehook_outbox_depth"), Some(pending));
    assert_eq!(
        daemon.metric("edgehook_devices"),
        Some(3),
        "{}",
        daemon.log()
    );
    receiver.fail_with(0);
    receiver
        .wait_until(LONG, "every event the old store held", |s| {
            s.events.len() as u64 >= pending
        })
        .await;
    receiver.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        assert_eq!(s.duplicates, 0);
        assert!(
            s.events.iter().all(|e| e["gateway"] == "gw-old"),
            "sent as they were stored"
        );
        let kinds: HashSet<&str> = s.events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert!(
            kinds.contains("sensor.reading.updated") && kinds.contains("device.online"),
            "{kinds:?}"
        );
    });
    let before = receiver.seen(|s| s.events.len());

    // A device it knew speaks again: online, its reading, and no registration; a new one is
    // registered.
    publish_plain(
        broker.port,
        "after-upgrade",
        &[
            (
                "sensors/old-occ-1/reading",
                r#"{"presence":true,"temperature":30.5,"seq":99}"#,
            ),
            (
                "sensors/new-occ-1/reading",
                r#"{"presence":true,"temperature":20.0,"seq":1}"#,
            ),
        ],
    )
    .await;
    receiver
        .wait_until(LONG, "both devices' readings", |s| {
            !s.readings_of("old-occ-1").is_empty()
                && s.readings_of("old-occ-1").last().unwrap()["seq"] == 99
                && !s.readings_of("new-occ-1").is_empty()
        })
        .await;
    receiver.seen(|s| {
        let registered: Vec<&str> = s
            .of_type("device.registered")
            .iter()
            .filter_map(|e| e["data"]["device_id"].as_str())
            .collect();
        assert_eq!(
            registered,
            ["new-occ-1"],
            "only the device never seen before"
        );
        assert!(s.events.len() > before);
    });
    assert_eq!(daemon.metric("edgehook_outbox_depth"), Some(0));
    assert_eq!(daemon.terminate(), Some(0));
    assert!(state.join("outbox.sled").exists());
}
