//! Serial sources end to end through real pseudo-terminals written by firmware-sim, the
//! `edgehook` binary and a signature-verifying receiver.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Mosquitto, Receiver};
use firmware_sim::serial::{status_frame, text_frame, SerialFraming, SerialLink};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

fn ports(text: &SerialLink, json: Option<&SerialLink>) -> String {
    let mut out = format!(
        r#"
[[device_classes]]
name = "serial"
match = ["ser-*"]
debounce = "300ms"

[[serial_ports]]
path = "{}"
framing = "text"
max_frame_bytes = 256
reopen_min = "50ms"
reopen_max = "200ms"
metadata_fields = ["seq"]
"#,
        text.path().display()
    );
    if let Some(json) = json {
        out.push_str(&format!(
            r#"
[[serial_ports]]
path = "{}"
framing = "json_lines"
"#,
            json.path().display()
        ));
    }
    out
}

fn wait_metric(daemon: &Daemon, name: &str, want: u64) {
    let deadline = Instant::now() + LONG;
    while daemon.metric(name) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{name} never reached {want} (now {:?}):\n{}",
            daemon.metric(name),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_lines_lose_nothing_good_and_split_frames_reassemble() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let mut text = SerialLink::plug(dir.path().join("ttyTEXT")).unwrap();
    let mut json_port = SerialLink::plug(dir.path().join("ttyJSON")).unwrap();
    let mut daemon = Daemon::new(
        dir.path(),
        broker.port,
        &receiver.url,
        &ports(&text, Some(&json_port)),
    );
    daemon.start();
    wait_metric(&daemon, "edgehook_serial_ports_open", 2);

    // One frame split at every byte boundary, each with its own temperature (so each is a change).
    let mut want = Vec::new();
    let template_len = text_frame("OCC,ser-1,1,20.00,0").len();
    for cut in 1..template_len {
        let temperature = 20.0 + cut as f64 / 100.0;
        let frame = text_frame(&format!("OCC,ser-1,1,{temperature:.2},{cut}"));
        text.send(frame[..cut].to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
        text.send(frame[cut..].to_vec()).await.unwrap();
        want.push(json!({"presence": 1, "temperature": temperature, "seq": cut}));
    }
    // A corrupted checksum: dropped. Line noise, then a good frame: kept.
    let mut corrupt = text_frame("OCC,ser-1,0,99.9,100");
    let star = corrupt.iter().rposition(|b| *b == b'*').unwrap();
    corrupt[star + 1] = if corrupt[star + 1] == b'0' {
        b'1'
    } else {
        b'0'
    };
    text.send(corrupt).await.unwrap();
    text.send(b"\x00\x13\xfe~~noise~~".to_vec()).await.unwrap();
    text.send(text_frame("OCC,ser-1,0,21.5,101")).await.unwrap();
    want.push(json!({"presence": 0, "temperature": 21.5, "seq": 101}));
    // 64 KiB without a newline, then the end of that line, then a good frame.
    text.send(vec![b'x'; 64 * 1024]).await.unwrap();
    text.send(b"\r\n".to_vec()).await.unwrap();
    text.send(text_frame("OCC,ser-1,1,22.0,102")).await.unwrap();
    want.push(json!({"presence": 1, "temperature": 22.0, "seq": 102}));

    // The JSON port is a bus with two devices, and sees invalid UTF-8 and junk between them.
    json_port
        .send(b"{\"device\":\"ser-j1\",\"presence\":true}\n\xff\xfe{\"device\":\"ser-j1\"}\n[1]\n{\"device\":\"ser-j2\",\"presence\":false}\n".to_vec())
        .await
        .unwrap();

    receiver
        .wait_until(LONG, "every good serial frame", |s| {
            s.readings_of("ser-1").len() >= want.len() && s.readings_of("ser-j2").len() == 1
        })
        .await;
    receiver.seen(|s| {
        assert_eq!(
            s.readings_of("ser-1"),
            want,
            "exactly the good frames, in order"
        );
        assert_eq!(s.readings_of("ser-j1"), [json!({"presence": true})]);
        assert_eq!(s.readings_of("ser-j2"), [json!({"presence": false})]);
        assert_eq!(s.bad_signatures, 0);
    });
    for (kind, want) in [
        ("bad_checksum", 1),
        ("garbage", 1),
        ("overlong", 1),
        ("not_utf8", 1),
        ("not_object", 1),
    ] {
        assert_eq!(
            daemon.metric(&format!(
                "edgehook_serial_frame_errors_total{{kind=\"{kind}\"}}"
            )),
            Some(want),
            "{kind}"
        );
    }
    let log = daemon.log();
    assert!(log.contains("skipping serial frame"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_marks_the_bus_offline_and_replug_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let mut line = SerialLink::plug(dir.path().join("ttyUSB-sim")).unwrap();
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, &ports(&line, None));
    daemon.start();
    wait_metric(&daemon, "edgehook_serial_ports_open", 1);

    let devices = ["ser-a", "ser-b"];
    for (i, id) in devices.iter().enumerate() {
        line.send(status_frame(SerialFraming::Text, id, true))
            .await
            .unwrap();
        line.send(text_frame(&format!("OCC,{id},1,20.{i},1")))
            .await
            .unwrap();
    }
    receiver
        .wait_until(LONG, "both devices' first reading", |s| {
            s.of_type("sensor.reading.updated").len() == 2
        })
        .await;

    line.unplug();
    receiver
        .wait_until(LONG, "both devices offline", |s| {
            s.of_type("device.offline").len() == 2
        })
        .await;
    wait_metric(&daemon, "edgehook_serial_ports_open", 0);
    tokio::time::sleep(Duration::from_millis(300)).await; // a few failed reopen attempts

    line.replug().unwrap();
    wait_metric(&daemon, "edgehook_serial_ports_open", 1);
    for (i, id) in devices.iter().enumerate() {
        line.send(text_frame(&format!("OCC,{id},0,21.{i},2")))
            .await
            .unwrap();
    }
    receiver
        .wait_until(LONG, "both devices back with a reading", |s| {
            s.of_type("sensor.reading.updated").len() == 4
        })
        .await;

    receiver.seen(|s| {
        for id in devices {
            let sequence: Vec<&str> = s
                .events
                .iter()
                .filter(|e| e["data"]["device_id"] == id)
                .map(|e| e["type"].as_str().unwrap())
                .collect();
            assert_eq!(
                sequence,
                [
                    "device.registered",
                    "device.online",
                    "sensor.reading.updated",
                    "device.offline",
                    "device.online",
                    "sensor.reading.updated"
                ],
                "{id}"
            );
        }
        let back: Vec<Value> = s.readings_of("ser-b");
        assert_eq!(
            back[1],
            json!({"presence": 0, "temperature": 21.1, "seq": 2})
        );
    });
    let log = daemon.log();
    assert!(log.contains("serial port lost"), "{log}");
    assert!(log.contains("serial port back"), "{log}");
}

/// A `calibrate` action for `device`.
fn submit(id: &str, device: &str, params: Value) -> Value {
    json!({"id": id, "device": device, "name": "calibrate", "params": params})
}

/// Two serial ports, one of text frames and one of JSON lines, each with a device on it that
/// has been heard, and a daemon whose class takes `identify` and `calibrate` actions.
struct LineRig {
    daemon: Daemon,
    api: common::Api,
    receiver: Receiver,
    text: SerialLink,
    json_port: SerialLink,
    text_commands: std::sync::mpsc::Receiver<String>,
    json_commands: std::sync::mpsc::Receiver<String>,
    _broker: Mosquitto,
    _dir: tempfile::TempDir,
}

impl LineRig {
    async fn start() -> LineRig {
        use firmware_sim::serial::reading_frame;
        let dir = tempfile::tempdir().unwrap();
        let broker = Mosquitto::start(dir.path());
        let receiver = Receiver::start().await;
        let mut text = SerialLink::plug(dir.path().join("ttyTEXT")).unwrap();
        let mut json_port = SerialLink::plug(dir.path().join("ttyJSON")).unwrap();
        let config = ports(&text, Some(&json_port)).replace(
            "debounce = \"300ms\"",
            "debounce = \"0s\"\nactions = [\"identify\", \"calibrate\"]\naction_timeout = \"5s\"",
        );
        let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, &config);
        daemon.start();
        wait_metric(&daemon, "edgehook_serial_ports_open", 2);
        let api = common::Api::with_token(&daemon);
        let text_commands = text.commands().unwrap();
        let json_commands = json_port.commands().unwrap();
        let reading = json!({"presence": true, "temperature": 21.0, "seq": 1});
        text.send(reading_frame(SerialFraming::Text, "ser-1", &reading))
            .await
            .unwrap();
        json_port
            .send(reading_frame(SerialFraming::JsonLines, "ser-j1", &reading))
            .await
            .unwrap();
        receiver
            .wait_until(LONG, "both serial devices online", |s| {
                s.of_type("device.online").len() == 2
            })
            .await;
        LineRig {
            daemon,
            api,
            receiver,
            text,
            json_port,
            text_commands,
            json_commands,
            _broker: broker,
            _dir: dir,
        }
    }
}

/// Actions to devices on serial lines (issue 19): written as a checksummed `$ACT` sentence or
/// a JSON line on the port the device is heard on, answered with result frames, told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_go_down_the_line_a_device_is_on_and_its_result_frames_come_back() {
    use firmware_sim::serial::{parse_command, result_frame};
    let mut rig = LineRig::start().await;
    let LineRig {
        receiver,
        daemon,
        api,
        text,
        json_port,
        text_commands,
        json_commands,
        ..
    } = &mut rig;
    let next = |rx: &std::sync::mpsc::Receiver<String>| {
        rx.recv_timeout(LONG).expect("a command on the line")
    };

    // Text: one checksummed sentence with the params as key=value, escaped.
    let a = api
        .call(
            "POST",
            "/v1/actions",
            "/v1/actions",
            Some(&submit(
                "s1",
                "ser-1",
                json!({"offset": -0.5, "note": "a,b"}),
            )),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let line = next(&text_commands);
    let (device, id, name, params) = parse_command(SerialFraming::Text, &line)
        .unwrap_or_else(|| panic!("not a command: {line}"));
    assert_eq!(
        (device.as_str(), id.as_str(), name.as_str()),
        ("ser-1", "s1", "calibrate")
    );
    assert_eq!(params, json!({"note": "a,b", "offset": "-0.5"}));
    text.send(result_frame(
        SerialFraming::Text,
        "ser-1",
        "s1",
        Err("sensor busy, retry"),
    ))
    .await
    .unwrap();
    // JSON lines, on the other port: the other device's action never goes down this one.
    api.call(
        "POST",
        "/v1/actions",
        "/v1/actions",
        Some(&submit("s2", "ser-j1", json!({"offset": 1}))),
    )
    .await;
    let line = next(&json_commands);
    let (device, id, _, params) = parse_command(SerialFraming::JsonLines, &line).unwrap();
    assert_eq!(
        (device.as_str(), id.as_str(), params),
        ("ser-j1", "s2", json!({"offset": 1}))
    );
    json_port
        .send(result_frame(
            SerialFraming::JsonLines,
            "ser-j1",
            "s2",
            Ok(&json!({"done": true})),
        ))
        .await
        .unwrap();
    receiver
        .wait_until(LONG, "s1 and s2 told", |s| {
            !s.told_of_action("s1").is_empty() && !s.told_of_action("s2").is_empty()
        })
        .await;
    receiver.seen(|s| {
        let s1 = &s.told_of_action("s1")[0];
        assert_eq!(
            (s1["status"].as_str(), s1["reason"].as_str()),
            (Some("failed"), Some("sensor busy, retry"))
        );
        let s2 = &s.told_of_action("s2")[0];
        assert_eq!(
            (s2["status"].as_str(), &s2["result"]),
            (Some("succeeded"), &json!({"done": true}))
        );
    });
    assert!(
        text_commands.try_recv().is_err() && json_commands.try_recv().is_err(),
        "one command each, each on its own port"
    );
    // A second answer is not a second event; garbage on the line is not a command's answer.
    text.send(result_frame(
        SerialFraming::Text,
        "ser-1",
        "s1",
        Ok(&Value::Null),
    ))
    .await
    .unwrap();
    text.send(text_frame("RES,ser-1,s1,perhaps")).await.unwrap();
    wait_metric(
        &daemon,
        "edgehook_serial_frame_errors_total{kind=\"malformed\"}",
        1,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    receiver.seen(|s| {
        assert_eq!(
            (s.told_of_action("s1").len(), s.told_of_action("s2").len()),
            (1, 1)
        )
    });
    assert_eq!(rig.daemon.terminate(), Some(0));
}

/// #43 (also): an action whose frame is longer than max_frame_bytes is not written (the
/// device reads lines no longer than that); it times out and is told so, and the next action
/// goes down the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_too_long_for_the_line_is_not_written_and_told_timed_out() {
    use firmware_sim::serial::parse_command;
    let mut rig = LineRig::start().await;
    let LineRig {
        receiver,
        daemon,
        api,
        text_commands,
        ..
    } = &mut rig;
    let a = api
        .call(
            "POST",
            "/v1/actions",
            "/v1/actions",
            Some(&submit("s3", "ser-1", json!({"note": "n".repeat(20_000)}))),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    api.call(
        "POST",
        "/v1/actions",
        "/v1/actions",
        Some(&submit("s4", "ser-1", json!({"offset": 2}))),
    )
    .await;
    let line = text_commands
        .recv_timeout(LONG)
        .expect("a command on the line");
    let (_, id, _, _) = parse_command(SerialFraming::Text, &line).unwrap();
    assert_eq!(id, "s4", "the overlong s3 was not written");
    receiver
        .wait_until(LONG, "s3 told timed out", |s| {
            !s.told_of_action("s3").is_empty()
        })
        .await;
    receiver.seen(|s| assert_eq!(s.told_of_action("s3")[0]["status"], "timed_out"));
    assert!(daemon.log().contains("longer than max_frame_bytes"));
    assert_eq!(daemon.terminate(), Some(0));
}

/// firmware-sim's serial bus (what `firmware-sim serial` runs) answers the actions written to
/// its line, as its sensors would: identify, reboot, calibrate; anything else fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_serial_bus_answers_its_sensors_actions() {
    use firmware_sim::serial::{run_serial_bus, SerialBusConfig};
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let link = dir.path().join("ttyBUS");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let bus = tokio::spawn(run_serial_bus(
        SerialBusConfig {
            link: link.clone(),
            sensors: 2,
            prefix: "ser-bus".into(),
            seed: 7,
            framing: SerialFraming::Text,
            interval: Duration::from_millis(100),
            readings: None,
            change_ratio: 0.3,
            fault_ratio: 0.0,
            unplug_every: None,
            unplug_for: Duration::ZERO,
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    common::until(Instant::now() + LONG, || link.exists(), || "no link".into()).await;
    let config = format!(
        "[[device_classes]]\nname = \"serial\"\nmatch = [\"ser-*\"]\ndebounce = \"0s\"\nactions = [\"identify\", \"reboot\"]\n\n[[serial_ports]]\npath = \"{}\"\nframing = \"text\"\n",
        link.display()
    );
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, &config);
    daemon.start();
    receiver
        .wait_until(LONG, "the bus's sensors online", |s| {
            s.of_type("device.online").len() == 2
        })
        .await;
    let api = common::Api::with_token(&daemon);
    for (id, name) in [("b1", "identify"), ("b2", "reboot")] {
        let body = json!({"id": id, "device": "ser-bus-2", "name": name});
        let r = api
            .call("POST", "/v1/actions", "/v1/actions", Some(&body))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    receiver
        .wait_until(LONG, "both actions told", |s| {
            s.of_type("device.action_completed").len() == 2
        })
        .await;
    receiver.seen(|s| {
        for e in s.of_type("device.action_completed") {
            assert_eq!(e["data"]["status"], "succeeded", "{e}");
            assert_eq!(e["data"]["device_id"], "ser-bus-2");
        }
    });
    assert_eq!(daemon.terminate(), Some(0));
    stop_tx.send(()).unwrap();
    let stats = bus.await.unwrap().unwrap();
    assert_eq!(stats.actions, 2);
}
