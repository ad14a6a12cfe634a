//! The Modbus source against firmware-sim's Modbus units: RTU on real pseudo-terminals, and
//! Modbus TCP on a real socket; events checked at a verifying receiver.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Rig};
use firmware_sim::modbus::PEOPLE_COUNTER_MAP;
use firmware_sim::modbus::{people_counter, serve_rtu, serve_tcp, Behaviour, Unit, Units};
use firmware_sim::serial::SerialLink;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// A bus at `at` (`path = "..."` or `address = "..."`) with `units` people counters, read
/// every 200 ms, answering within 100 ms or tried once more, offline after 2 failed polls.
fn bus(at: &str, units: &[u8]) -> String {
    let devices: Vec<String> = units
        .iter()
        .map(|u| format!("{{ id = \"counter-{u}\", unit = {u}, map = \"people-counter\" }}"))
        .collect();
    format!(
        "{PEOPLE_COUNTER_MAP}\n[[modbus.buses]]\n{at}\nparity = \"none\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nretries = 1\noffline_after = 2\nreopen_min = \"50ms\"\nreopen_max = \"200ms\"\ndevices = [{}]\n",
        devices.join(", ")
    )
}

fn rtu(link: &SerialLink, units: &[u8]) -> String {
    bus(&format!("path = \"{}\"", link.path().display()), units)
}

fn wait_metric(daemon: &Daemon, name: &str, at_least: u64) {
    let deadline = Instant::now() + LONG;
    while daemon.metric(name).unwrap_or(0) < at_least {
        assert!(
            Instant::now() < deadline,
            "{name} never reached {at_least} (now {:?}):\n{}",
            daemon.metric(name),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn told(s: &common::Seen, kind: &str, device: &str) -> usize {
    s.of_type(kind)
        .iter()
        .filter(|e| e["data"]["device_id"] == device)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_become_readings_with_their_types_word_order_and_scale() {
    let dir = tempfile::tempdir().unwrap();
    let link = SerialLink::plug(dir.path().join("ttyRS485")).unwrap();
    let units = Units::default();
    units.add(1, people_counter(120, 100, 215));
    units.add(2, people_counter(70_000, 3, -45));
    let _serving = serve_rtu(&link, units.clone()).unwrap();
    let (_dir, _broker, receiver, daemon) = Rig::start(&rtu(&link, &[1, 2])).await.parts();

    receiver
        .wait_until(LONG, "both counters' readings", |s| {
            !s.readings_of("counter-1").is_empty() && !s.readings_of("counter-2").is_empty()
        })
        .await;
    receiver.seen(|s| {
        assert_eq!(
            s.readings_of("counter-1")[0],
            json!({"people_in": 120, "people_out": 100, "occupancy": 20, "temperature": 21.5, "presence": true})
        );
        // 70,000 takes both words of the u32; -4.5 °C is an i16 below zero, scaled.
        assert_eq!(
            s.readings_of("counter-2")[0],
            json!({"people_in": 70000, "people_out": 3, "occupancy": 65535, "temperature": -4.5, "presence": true})
        );
        assert_eq!(told(s, "device.online", "counter-1"), 1);
        assert_eq!(s.bad_signatures, 0);
    });

    // The registers change: the next poll reports it; an unchanged poll reports nothing.
    units.with(1, |u| {
        Unit::set_u32(&mut u.input, 0, 121);
        u.input[4] = 21;
    });
    receiver
        .wait_until(LONG, "the new count", |s| {
            s.readings_of("counter-1")
                .last()
                .map(|f| f["people_in"].clone())
                == Some(json!(121))
        })
        .await;
    let polls = units.requests(1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(units.requests(1) > polls, "polled again");
    receiver.seen(|s| assert_eq!(s.readings_of("counter-1").len(), 2));
    wait_metric(&daemon, "edgehook_modbus_buses_open", 1);
    assert!(
        daemon
            .metric("edgehook_modbus_requests_total{kind=\"ok\"}")
            .unwrap()
            >= 4
    );
    // The gateway says which buses it reads, and that this one is open.
    let gateway: Value =
        serde_json::from_str(&common::http_get(daemon.metrics_port, "/v1/gateway").unwrap())
            .unwrap();
    assert_eq!(
        gateway["modbus"],
        json!({"buses": [link.path().display().to_string()], "open": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unit_and_one_with_bad_crcs_go_offline_and_never_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let link = SerialLink::plug(dir.path().join("ttyRS485")).unwrap();
    let units = Units::default();
    units.add(1, people_counter(0, 0, 200));
    units.add(2, people_counter(5, 0, 200));
    units.add(3, people_counter(9, 0, 200));
    units.with(2, |u| u.behaviour = Behaviour::Silent);
    units.with(3, |u| u.behaviour = Behaviour::BadCrc);
    let _serving = serve_rtu(&link, units.clone()).unwrap();
    let (_dir, _broker, receiver, daemon) = Rig::start(&rtu(&link, &[1, 2, 3])).await.parts();

    receiver
        .wait_until(LONG, "counter-2 and counter-3 offline", |s| {
            told(s, "device.offline", "counter-2") == 1
                && told(s, "device.offline", "counter-3") == 1
        })
        .await;
    // Meanwhile, and after, counter-1's every count reaches the receiver.
    for n in 1..=5u32 {
        units.with(1, |u| Unit::set_u32(&mut u.input, 0, n));
        receiver
            .wait_until(LONG, "counter-1's count", |s| {
                s.readings_of("counter-1")
                    .last()
                    .map(|f| f["people_in"].clone())
                    == Some(json!(n))
            })
            .await;
    }
    receiver.seen(|s| {
        assert!(s.readings_of("counter-2").is_empty() && s.readings_of("counter-3").is_empty());
        // Offline once each, however many polls failed.
        assert_eq!(told(s, "device.offline", "counter-2"), 1);
        assert_eq!(told(s, "device.offline", "counter-3"), 1);
    });
    // The silent unit is polled less and less often: far fewer requests than the healthy one.
    assert!(
        units.requests(2) * 2 < units.requests(1),
        "silent {} vs healthy {}",
        units.requests(2),
        units.requests(1)
    );
    wait_metric(
        &daemon,
        "edgehook_modbus_requests_total{kind=\"timeout\"}",
        2,
    );
    wait_metric(&daemon, "edgehook_modbus_requests_total{kind=\"crc\"}", 2);
    daemon.assert_logged("Modbus device not answering; reported offline");

    // It answers again: online, with its reading.
    units.with(2, |u| u.behaviour = Behaviour::Answers);
    receiver
        .wait_until(LONG, "counter-2 back", |s| {
            told(s, "device.online", "counter-2") >= 1
                && s.readings_of("counter-2")
                    .last()
                    .map(|f| f["people_in"].clone())
                    == Some(json!(5))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_adapter_reports_its_devices_offline_and_a_replug_brings_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut link = SerialLink::plug(dir.path().join("ttyRS485")).unwrap();
    let units = Units::default();
    units.add(1, people_counter(10, 2, 200));
    units.add(2, people_counter(20, 2, 200));
    let serving = serve_rtu(&link, units.clone()).unwrap();
    let (_dir, _broker, receiver, daemon) = Rig::start(&rtu(&link, &[1, 2])).await.parts();
    receiver
        .wait_until(LONG, "both online", |s| {
            told(s, "device.online", "counter-1") == 1 && told(s, "device.online", "counter-2") == 1
        })
        .await;

    drop(serving);
    link.unplug();
    receiver
        .wait_until(LONG, "both offline", |s| {
            told(s, "device.offline", "counter-1") == 1
                && told(s, "device.offline", "counter-2") == 1
        })
        .await;
    wait_metric(&daemon, "edgehook_modbus_bus_closures_total", 1);
    daemon.assert_logged("Modbus bus lost");

    link.replug().unwrap();
    units.with(2, |u| Unit::set_u32(&mut u.input, 0, 21));
    let _serving = serve_rtu(&link, units.clone()).unwrap();
    receiver
        .wait_until(LONG, "both back, counter-2 with its new count", |s| {
            told(s, "device.online", "counter-1") == 2
                && told(s, "device.online", "counter-2") == 2
                && s.readings_of("counter-2")
                    .last()
                    .map(|f| f["people_in"].clone())
                    == Some(json!(21))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_behind_a_modbus_tcp_gateway_are_read_over_tcp() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let units = Units::default();
    units.add(1, people_counter(7, 1, 230));
    units.add(9, people_counter(3, 3, 190));
    units.with(9, |u| u.coils[0] = true);
    let _serving = serve_tcp(listener, units.clone()).unwrap();
    let (_dir, _broker, receiver, _daemon) =
        Rig::start(&bus(&format!("address = \"127.0.0.1:{port}\""), &[1, 9]))
            .await
            .parts();
    receiver
        .wait_until(LONG, "both units' readings", |s| {
            !s.readings_of("counter-1").is_empty() && !s.readings_of("counter-9").is_empty()
        })
        .await;
    receiver.seen(|s| {
        let one: Value = s.readings_of("counter-1")[0].clone();
        assert_eq!(one["people_in"], 7);
        assert_eq!(one["temperature"], 23.0);
        assert_eq!(s.readings_of("counter-9")[0]["presence"], false);
    });
}

/// An action to a Modbus device is sent nowhere — not to the broker in its stead, where nobody
/// would answer — and the log says why; it ends timed out, and upstream is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_to_a_modbus_device_is_sent_nowhere_and_the_log_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let link = SerialLink::plug(dir.path().join("ttyRS485")).unwrap();
    let units = Units::default();
    units.add(1, people_counter(4, 0, 200));
    let _serving = serve_rtu(&link, units.clone()).unwrap();
    let class = "[[device_classes]]\nname = \"counters\"\nmatch = [\"counter-*\"]\nactions = [\"reset\"]\naction_timeout = \"1s\"\n";
    let (_dir, broker, receiver, daemon) = Rig::start(&format!("{}{class}", rtu(&link, &[1])))
        .await
        .parts();
    receiver
        .wait_until(LONG, "counter-1's reading", |s| {
            !s.readings_of("counter-1").is_empty()
        })
        .await;
    let published = common::watch(broker.port, "devices/+/actions").await;
    let api = common::Api::with_token(&daemon);
    let action = json!({"id": "mb-1", "device": "counter-1", "name": "reset"});
    let submitted = api
        .call("POST", "/v1/actions", "/v1/actions", Some(&action))
        .await;
    assert_eq!(submitted.status, 202, "{}", submitted.body);
    receiver
        .wait_until(LONG, "the action told timed out", |s| {
            s.told_of_action("mb-1")
                .iter()
                .any(|a| a["status"] == "timed_out")
        })
        .await;
    daemon.assert_logged("it takes no actions");
    assert_eq!(*published.lock().unwrap(), Vec::<String>::new());
}
