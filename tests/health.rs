//! Device health end to end: firmware-sim devices going silent, bouncing and dying (last-will)
//! through a real mosquitto, and the exact webhook sequence each device produces.

mod common;

use std::time::Duration;

use common::{device, publish, Rig};
use firmware_sim::{DeviceClass, SimDevice};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LONG: Duration = Duration::from_secs(30);

/// Heartbeat 300 ms, lost after 3 of them; offline reports debounced for 1 s. A workspace on
/// the device that dies.
const RULES: &str = r#"
[[device_classes]]
name = "sensors"
match = ["h-*"]
heartbeat = "300ms"
lost_after = 3
debounce = "1s"

[[workspaces]]
id = "desk-c"
sensors = ["h-occ-c"]
"#;

/// A device publishing unchanged readings every 100 ms (its heartbeat) until stopped.
struct Alive {
    stop: oneshot::Sender<()>,
    task: JoinHandle<SimDevice>,
}

fn keep_alive(mut dev: SimDevice) -> Alive {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            dev.publish_next(0.0).await.unwrap();
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        dev.flushed().await.unwrap();
        dev
    });
    Alive { stop, task }
}

impl Alive {
    async fn stop(self) -> SimDevice {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_bouncing_and_dead_devices_produce_exactly_the_right_webhooks() {
    let (dir, broker, receiver, daemon) = Rig::start(RULES).await.parts();
    let b_status = common::watch(broker.port, "devices/h-occ-b/status").await;

    let mut devices = Vec::new();
    for id in ["h-occ-a", "h-occ-b", "h-occ-c"] {
        let mut dev = device(broker.port, id, DeviceClass::OccupancySensor).await;
        publish(&mut dev, 1, 1.0).await;
        devices.push(dev);
    }
    let mut alive: Vec<Alive> = devices.into_iter().map(keep_alive).collect();
    receiver
        .wait_until(LONG, "three devices online with a reading each", |s| {
            s.of_type("sensor.reading.updated").len() == 3
        })
        .await;

    // a: goes silent while still connected → lost communication, then speaks again → online.
    let mut a = alive.remove(0).stop().await;
    receiver
        .wait_until(LONG, "h-occ-a lost", |s| {
            !s.of_type("device.lost_communication").is_empty()
        })
        .await;
    publish(&mut a, 1, 1.0).await;
    let a = keep_alive(a);

    // b: reboots, down for 200 ms — the broker publishes its last-will, then its birth.
    let b = alive.remove(0).stop().await;
    let b = b.bounce(Duration::from_millis(200)).await.unwrap();
    let b = keep_alive(b);

    // c: dies for good → offline after the 1 s debounce; its workspace becomes Unknown.
    alive.remove(0).stop().await.pull_plug();
    receiver
        .wait_until(LONG, "h-occ-c offline", |s| {
            !s.of_type("device.offline").is_empty()
        })
        .await;
    receiver
        .wait_until(LONG, "h-occ-a back online with its reading", |s| {
            s.readings_of("h-occ-a").len() == 2
        })
        .await;
    // b's debounce window has long passed too: anything it was going to cause has been sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.stop().await;
    b.stop().await;

    let statuses = b_status.lock().unwrap().clone();
    assert!(
        statuses.windows(2).any(|w| w == ["offline", "online"]),
        "the broker saw h-occ-b bounce: {statuses:?}"
    );
    receiver.seen(|s| {
        let sequence = |id: &str| -> Vec<String> {
            s.events
                .iter()
                .filter(|e| e["data"]["device_id"] == id && e["data"].get("workspace_id").is_none())
                .map(|e| e["type"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            sequence("h-occ-a"),
            [
                "device.registered",
                "device.online",
                "sensor.reading.updated",
                "device.lost_communication",
                "device.online",
                "sensor.reading.updated"
            ]
        );
        assert_eq!(
            sequence("h-occ-b"),
            [
                "device.registered",
                "device.online",
                "sensor.reading.updated"
            ],
            "a bounce inside the debounce window sends nothing"
        );
        assert_eq!(
            sequence("h-occ-c"),
            [
                "device.registered",
                "device.online",
                "sensor.reading.updated",
                "device.offline"
            ]
        );
        let lost = &s.of_type("device.lost_communication")[0]["data"];
        assert!(lost["last_seen"].as_str().unwrap().ends_with('Z'), "{lost}");
        let desk: Vec<&str> = s
            .of_type("workspace.status.updated")
            .iter()
            .map(|e| e["data"]["status"].as_str().unwrap())
            .collect();
        assert_eq!(desk.len(), 2, "{desk:?}");
        assert!(["Free", "Occupied"].contains(&desk[0]), "{desk:?}");
        assert_eq!(desk[1], "Unknown", "its only sensor is offline");
        assert_eq!(s.bad_signatures, 0);
    });
    // Each device's detail keeps the changes it was told, in order, with their times; the
    // bounce told nothing and kept nothing.
    let api = common::Api::with_token(&daemon);
    for (id, want) in [
        ("h-occ-a", &["online", "lost", "online"][..]),
        ("h-occ-b", &["online"][..]),
        ("h-occ-c", &["online", "offline"][..]),
    ] {
        let d = api
            .get("/v1/devices/{id}", &format!("/v1/devices/{id}"))
            .await
            .json();
        let history = d["health_history"].as_array().unwrap();
        let healths: Vec<&str> = history
            .iter()
            .map(|c| c["health"].as_str().unwrap())
            .collect();
        assert_eq!(healths, want, "{id}: {d}");
        let times: Vec<&str> = history.iter().map(|c| c["at"].as_str().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{id}: {times:?}");
    }
    let (code, out, err) = daemon.cli(&["devices", "show", "h-occ-a"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("health history"), "{out}");
    api.check_answers(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_reannounce_healthy_devices_and_reports_the_silent_one() {
    let (_dir, broker, receiver, mut daemon) = Rig::start(RULES).await.parts();

    let mut healthy = device(broker.port, "h-occ-healthy", DeviceClass::OccupancySensor).await;
    let mut silent = device(broker.port, "h-occ-silent", DeviceClass::OccupancySensor).await;
    publish(&mut healthy, 1, 1.0).await;
    publish(&mut silent, 1, 1.0).await;
    let healthy = keep_alive(healthy);
    receiver
        .wait_until(LONG, "both online", |s| {
            s.of_type("sensor.reading.updated").len() == 2
        })
        .await;

    daemon.kill9();
    daemon.start();
    receiver
        .wait_until(LONG, "the silent device reported lost", |s| {
            !s.of_type("device.lost_communication").is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    healthy.stop().await;
    let _keep = silent; // connected all along, just silent

    receiver.seen(|s| {
        assert_eq!(
            s.of_type("device.online").len(),
            2,
            "no device.online burst after the restart"
        );
        let lost: Vec<_> = s
            .of_type("device.lost_communication")
            .iter()
            .map(|e| e["data"]["device_id"].clone())
            .collect();
        assert_eq!(lost, ["h-occ-silent"]);
    });
}

/// A device that went silent (still connected: no last-will) and was reported lost is not
/// brought back online by its retained birth, which the broker delivers again at every
/// (re)subscribe: that `online` is old news, from before the silence. Before: each restart of
/// the daemon (and each reconnect to the broker) told upstream `device.online` and then, a
/// heartbeat later, `device.lost_communication` again, for a device that never spoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_device_is_not_brought_back_online_by_its_retained_birth() {
    let (_dir, broker, receiver, mut daemon) = Rig::start(RULES).await.parts();
    let mut silent = device(broker.port, "h-occ-quiet", DeviceClass::OccupancySensor).await;
    publish(&mut silent, 1, 1.0).await;
    receiver
        .wait_until(LONG, "the silent device reported lost", |s| {
            !s.of_type("device.lost_communication").is_empty()
        })
        .await;

    for restart in 0..2 {
        daemon.terminate();
        daemon.start();
        // The retained birth (the broker's copy) arrives with the subscription; then a new
        // device's birth and reading, the proof that what came before was handled.
        let mut later = device(
            broker.port,
            &format!("h-occ-later-{restart}"),
            DeviceClass::OccupancySensor,
        )
        .await;
        publish(&mut later, 1, 1.0).await;
        receiver
            .wait_until(LONG, "the new device's reading", |s| {
                s.readings_of(&format!("h-occ-later-{restart}")).len() == 1
            })
            .await;
        common::until(
            std::time::Instant::now() + LONG,
            || daemon.metric("edgehook_outbox_depth") == Some(0),
            || daemon.log(),
        )
        .await;
    }
    receiver.seen(|s| {
        let health: Vec<String> = s
            .events
            .iter()
            .filter(|e| e["data"]["device_id"] == "h-occ-quiet")
            .map(|e| e["type"].as_str().unwrap().to_string())
            .filter(|t| t != "sensor.reading.updated")
            .collect();
        assert_eq!(
            health,
            [
                "device.registered",
                "device.online",
                "device.lost_communication"
            ],
            "no online for the retained birth after a restart"
        );
    });
    let _keep = silent; // connected all along, just silent
}
