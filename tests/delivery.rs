//! Delivery behaviour against a misbehaving receiver: per-device isolation, Retry-After,
//! timeouts. Real mosquitto, real daemon process, real HTTP.

mod common;

use std::time::{Duration, Instant};

use common::{device, publish, Daemon, Mosquitto, Receiver};
use firmware_sim::DeviceClass;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// `n` readings from a new sensor `id`, every one a change.
async fn changes(port: u16, id: &str, n: usize) -> Vec<Value> {
    publish(
        &mut device(port, id, DeviceClass::OccupancySensor).await,
        n,
        1.0,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_device_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    receiver.fail_device(Some("t6-bad"));
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, "");
    daemon.start();

    let bad = changes(broker.port, "t6-bad", 5).await;
    let good = changes(broker.port, "t6-good", 5).await;
    receiver
        .wait_until(LONG, "the healthy device's readings", |s| {
            s.readings_of("t6-good") == good
        })
        .await;
    receiver.seen(|s| {
        assert!(s.readings_of("t6-bad").is_empty());
        assert!(s.failures_served >= 1);
    });

    receiver.fail_device(None);
    receiver
        .wait_until(LONG, "the failing device's readings, in order", |s| {
            s.readings_of("t6-bad") == bad
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    receiver.fail_with(429);
    receiver.retry_after(Some("2"));
    // The test config retries after 50 ms – 500 ms on its own; only Retry-After explains 2 s.
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, "");
    daemon.start();

    let sent = changes(broker.port, "t7-occ", 1).await;
    receiver
        .wait_until(LONG, "a second attempt", |s| {
            s.attempts.values().any(|a| a.len() >= 2)
        })
        .await;
    let gap = receiver.seen(|s| {
        let a = s.attempts.values().find(|a| a.len() >= 2).unwrap();
        a[1] - a[0]
    });
    assert!(
        gap >= Duration::from_millis(1900),
        "second attempt after {gap:?}, Retry-After was 2 s"
    );

    receiver.fail_with(0);
    receiver.retry_after(None);
    receiver
        .wait_until(LONG, "delivery once accepted", |s| {
            s.readings_of("t7-occ") == sent
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_is_timed_out_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_secs(5)); // the test config's request timeout is 2 s
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, "");
    daemon.start();

    let sent = changes(broker.port, "t8-occ", 1).await;
    let deadline = Instant::now() + LONG;
    while daemon
        .metric("edgehook_delivery_attempts_total{result=\"network_error\"}")
        .unwrap_or(0)
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "no timeout recorded:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(daemon.log().contains("timed out"), "{}", daemon.log());

    receiver.delay(Duration::ZERO);
    receiver
        .wait_until(LONG, "delivery once the receiver answers", |s| {
            s.readings_of("t8-occ") == sent
        })
        .await;
    while daemon.metric("edgehook_outbox_depth") != Some(0) {
        assert!(Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_with_rotation_cloudevents_filters_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    // The receiver still knows only the old secret: rotation must keep it verifying.
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let new = "whsec_dGhpcyBpcyBhIG5ldyAzMi1ieXRlIHNlY3JldCEhIQ==";
    receiver.expect_standard(common::StandardCheck {
        secret: old.into(),
        content_type: "application/cloudevents+json".into(),
        required_header: Some(("x-api-key".into(), "key-123".into())),
    });
    let extra = format!(
        r#"
[webhook]
url = "{url}"
secret = ""
secrets = ["{new}", "{old}"]
signature = "standard-webhooks"
format = "cloudevents"
events = ["device.*", "workspace.*"]
headers = {{ "X-Api-Key" = "key-123" }}
timeout = "2s"
[webhook.retry]
initial = "50ms"
max = "500ms"
"#,
        url = receiver.url
    );
    let mut daemon = common::Daemon::new_with_webhook(dir.path(), broker.port, &extra);
    daemon.start();
    let mut sensor = device(broker.port, "sw-occ-1", DeviceClass::OccupancySensor).await;
    publish(&mut sensor, 5, 1.0).await;
    sensor.shut_down().await.unwrap();
    receiver
        .wait_until(LONG, "online and offline as CloudEvents", |s| {
            s.events.len() >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.seen(|s| {
        assert_eq!(
            s.bad_signatures, 0,
            "every request verified with the old secret"
        );
        let types: Vec<&str> = s
            .events
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["device.online", "device.offline"],
            "readings filtered out"
        );
        for e in &s.events {
            assert_eq!(e["specversion"], "1.0");
            assert_eq!(e["source"], "urn:edgehook:gw-test");
            assert_eq!(e["subject"], "sw-occ-1");
        }
    });
    assert_eq!(daemon.metric("edgehook_events_filtered_total"), Some(5));
}
