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
