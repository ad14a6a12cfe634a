//! Delivery behaviour against a misbehaving receiver: per-device isolation, Retry-After,
//! timeouts. Real mosquitto, real daemon process, real HTTP.

mod common;

use std::time::{Duration, Instant};

use common::{device, publish, Daemon, Mosquitto, Receiver, Rig};
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
    let (_dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    receiver.fail_device(Some("t6-bad"));
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
    // The test config retries after 50 ms – 500 ms on its own; only Retry-After explains 2 s.
    let (_dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    receiver.fail_with(429);
    receiver.retry_after(Some("2"));
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
    let (_dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    receiver.delay(Duration::from_secs(5)); // the test config's request timeout is 2 s
    daemon.start();

    let sent = changes(broker.port, "t8-occ", 1).await;
    let deadline = Instant::now() + LONG;
    common::until(
        deadline,
        || {
            daemon
                .metric("edgehook_delivery_attempts_total{endpoint=\"default\",result=\"network_error\"}")
                .is_some_and(|n| n >= 1)
        },
        || format!("no timeout recorded:\n{}", daemon.log()),
    )
    .await;
    // Logged by the same attempt, just after it was counted.
    daemon.wait_logged("timed out").await;

    receiver.delay(Duration::ZERO);
    receiver
        .wait_until(LONG, "delivery once the receiver answers", |s| {
            s.readings_of("t8-occ") == sent
        })
        .await;
    common::until(
        deadline,
        || daemon.metric("edgehook_outbox_depth") == Some(0),
        || "outbox not drained".to_string(),
    )
    .await;
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
        .wait_until(LONG, "registered, online and offline as CloudEvents", |s| {
            s.events.len() >= 3
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
            ["device.registered", "device.online", "device.offline"],
            "readings filtered out"
        );
        for e in &s.events {
            assert_eq!(e["specversion"], "1.0");
            assert_eq!(e["source"], "urn:edgehook:gw-test");
            assert_eq!(e["subject"], "sw-occ-1");
        }
    });
    assert_eq!(daemon.metric("edgehook_events_unrouted_total"), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_until_outbox_enable_and_nothing_is_lost() {
    let (_dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    receiver.fail_with(410);
    daemon.start();
    let mut sensor = device(broker.port, "gone-occ-1", DeviceClass::OccupancySensor).await;
    let changes = publish(&mut sensor, 3, 1.0).await;
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || daemon.metric("edgehook_endpoint_disabled{endpoint=\"default\"}") == Some(1),
        || daemon.log(),
    )
    .await;
    let tried = receiver.seen(|s| s.requests);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.seen(|s| s.requests), tried, "nothing more is sent");
    let health = common::http_get(daemon.metrics_port, "/healthz").unwrap();
    assert!(health.contains("disabled"), "{health}");
    daemon.assert_logged("endpoint DISABLED");
    // While it runs, the outbox commands answer from it.
    let (code, out, err) = daemon.outbox_cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("from the running daemon"), "{err}");
    assert!(out.contains("DISABLED") && out.contains("410"), "{out}");

    assert_eq!(daemon.terminate(), Some(0));
    let (code, out, err) = daemon.outbox_cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("DISABLED") && out.contains("410"), "{out}");
    let pending = 2 + changes.len(); // device.registered, device.online + the readings
    assert!(out.contains(&format!("pending       {pending}")), "{out}");
    let (code, out, _) = daemon.outbox_cli(&["enable"]);
    assert_eq!(code, 0);
    assert!(out.contains("enabled again"), "{out}");

    receiver.fail_with(0);
    daemon.start();
    receiver
        .wait_until(LONG, "everything after re-enabling", |s| {
            s.events.len() >= pending
        })
        .await;
    assert_eq!(receiver.seen(|s| s.readings_of("gone-occ-1")), changes);
    assert_eq!(
        daemon.metric("edgehook_endpoint_disabled{endpoint=\"default\"}"),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_keeps_dead_letters_that_replay_delivers() {
    let (_dir, broker, receiver, mut daemon) = Rig::with_webhook(|url| format!(
        "[webhook]\nurl = \"{url}\"\nsecret = \"{}\"\ntimeout = \"2s\"\nmax_attempts = 3\n[webhook.retry]\ninitial = \"20ms\"\nmax = \"100ms\"\n",
        common::SECRET
    )).await.parts();
    receiver.fail_device(Some("dl-occ-bad"));
    daemon.start();
    let mut bad = device(broker.port, "dl-occ-bad", DeviceClass::OccupancySensor).await;
    let mut good = device(broker.port, "dl-occ-good", DeviceClass::OccupancySensor).await;
    let bad_changes = publish(&mut bad, 2, 1.0).await;
    let good_changes = publish(&mut good, 2, 1.0).await;
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        // registered, online and two readings
        || daemon.metric("edgehook_dead_letters_total{endpoint=\"default\"}") == Some(4),
        || {
            format!(
                "{:?}\n{}",
                daemon.metric("edgehook_dead_letters_total{endpoint=\"default\"}"),
                daemon.log()
            )
        },
    )
    .await;
    receiver
        .wait_until(LONG, "the healthy device's readings", |s| {
            s.readings_of("dl-occ-good") == good_changes
        })
        .await;
    receiver.seen(|s| {
        let tries: Vec<usize> = s
            .attempts
            .iter()
            .filter(|(id, _)| !s.ids.contains(*id))
            .map(|(_, a)| a.len())
            .collect();
        assert_eq!(tries, [3, 3, 3, 3], "three attempts each, then given up");
    });
    assert_eq!(
        daemon.metric("edgehook_outbox_depth"),
        Some(0),
        "nothing pending: all delivered or dead"
    );
    assert_eq!(daemon.terminate(), Some(0));

    let (code, out, err) = daemon.outbox_cli(&["list", "--dead"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.lines()
            .all(|l| l.contains("max_attempts") && l.contains("HTTP 503")),
        "{out}"
    );
    let (code, out, _) = daemon.outbox_cli(&["replay", "--all-dead"]);
    assert_eq!(code, 0);
    assert!(out.contains("4 dead letter(s) queued again"), "{out}");
    let (code, _, err) = daemon.outbox_cli(&["replay", "no-such-id"]);
    assert_eq!(code, 2);
    assert!(err.contains("no dead letter"), "{err}");

    receiver.fail_device(None);
    daemon.start();
    receiver
        .wait_until(LONG, "the replayed events", |s| {
            s.readings_of("dl-occ-bad").len() == bad_changes.len()
        })
        .await;
    receiver.seen(|s| {
        assert_eq!(
            s.readings_of("dl-occ-bad"),
            bad_changes,
            "in order, as published"
        );
        let first_tries: Vec<&String> = s.attempts.keys().collect();
        assert_eq!(
            s.ids.len(),
            first_tries.len(),
            "replayed under their original ids"
        );
    });
}

/// `[webhook]` to `all` (every event) and `[[endpoints]]` `ops` to `ops_url` (device.* only).
fn two_endpoints(all_url: &str, ops_url: &str) -> String {
    format!(
        r#"
[webhook]
url = "{all_url}"
secret = "{secret}"
timeout = "2s"
[webhook.retry]
initial = "50ms"
max = "500ms"

[[endpoints]]
name = "ops"
url = "{ops_url}"
secret = "{secret}"
events = ["device.*"]
timeout = "2s"
[endpoints.retry]
initial = "50ms"
max = "500ms"
"#,
        secret = common::SECRET
    )
}

/// A running daemon with [`two_endpoints`], the `ops` receiver answering 503.
async fn two_endpoints_ops_failing() -> (tempfile::TempDir, Mosquitto, Receiver, Receiver, Daemon) {
    let ops = Receiver::start().await;
    ops.fail_with(503);
    let (dir, broker, all, mut daemon) = Rig::with_webhook(|all| two_endpoints(all, &ops.url))
        .await
        .parts();
    daemon.start();
    (dir, broker, all, ops, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_never_delays_a_healthy_one() {
    let (_dir, broker, all, ops, mut daemon) = two_endpoints_ops_failing().await;

    let sent = changes(broker.port, "ep-occ-1", 20).await;
    // The healthy endpoint gets everything while the other refuses.
    all.wait_until(LONG, "every reading at the healthy endpoint", |s| {
        s.readings_of("ep-occ-1") == sent && !s.of_type("device.online").is_empty()
    })
    .await;
    ops.wait_until(LONG, "retries at the failing endpoint", |s| {
        s.failures_served >= 3
    })
    .await;
    let pending =
        |d: &Daemon, e: &str| d.metric(&format!("edgehook_endpoint_pending{{endpoint=\"{e}\"}}"));
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        // ops takes device.* only: device.registered and device.online
        || pending(&daemon, "default") == Some(0) && pending(&daemon, "ops") == Some(2),
        || {
            format!(
                "{:?} {:?}",
                pending(&daemon, "default"),
                pending(&daemon, "ops")
            )
        },
    )
    .await;
    // The failing endpoint keeps retrying meanwhile (its backoff may still be under way).
    daemon
        .wait_metric(
            "edgehook_delivery_attempts_total{endpoint=\"ops\",result=\"http_error\"}",
            3,
        )
        .await;
    assert!(
        daemon
            .metric("edgehook_delivery_attempts_total{endpoint=\"ops\",result=\"http_error\"}")
            .unwrap()
            >= 3
    );
    assert_eq!(
        daemon
            .metric("edgehook_delivery_attempts_total{endpoint=\"default\",result=\"http_error\"}"),
        Some(0)
    );
    assert_eq!(daemon.terminate(), Some(0));

    // The operator's view, per endpoint, and the delivery log of each attempt.
    let (code, out, err) = daemon.outbox_cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("endpoint default: active"), "{out}");
    assert!(out.contains("endpoint ops: active"), "{out}");
    let ops_section = out.split("endpoint ops:").nth(1).unwrap();
    assert!(ops_section.contains("pending       2 ("), "{out}");
    let (code, log, _) = daemon.outbox_cli(&["log", "--endpoint", "ops"]);
    assert_eq!(code, 0);
    assert!(log.lines().count() >= 3, "{log}");
    assert!(
        log.lines()
            .all(|l| l.contains(" ops ") && l.contains("503 failed")),
        "{log}"
    );
    let (_, log, _) = daemon.outbox_cli(&["log", "--endpoint", "default", "--limit", "5"]);
    assert_eq!(log.lines().count(), 5, "{log}");
    assert!(log.lines().all(|l| l.contains("200 ok")), "{log}");
    let (code, _, err) = daemon.outbox_cli(&["log", "--endpoint", "nosuch"]);
    assert_ne!(code, 0);
    assert!(err.contains("no endpoint `nosuch`"), "{err}");

    // The ops endpoint comes back: it gets its device event; nobody gets a duplicate.
    ops.fail_with(0);
    daemon.start();
    ops.wait_until(LONG, "the device events at the recovered endpoint", |s| {
        s.events.len() == 2
            && s.of_type("device.registered").len() == 1
            && s.of_type("device.online").len() == 1
    })
    .await;
    all.seen(|s| assert_eq!(s.duplicates, 0));
    ops.seen(|s| {
        assert!(
            s.readings_of("ep-occ-1").is_empty(),
            "ops takes device.* only"
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoints_queue_is_kept_until_purged() {
    let (_dir, broker, all, ops, mut daemon) = two_endpoints_ops_failing().await;
    let _ = changes(broker.port, "rm-occ-1", 1).await;
    ops.wait_until(LONG, "an attempt at ops", |s| s.failures_served >= 1)
        .await;
    assert_eq!(daemon.terminate(), Some(0));

    // Remove `ops` from the configuration: its undelivered event is kept, and said so.
    let only_all = two_endpoints(&all.url, &ops.url);
    let only_all = only_all.split("[[endpoints]]").next().unwrap();
    daemon.rewrite_webhook(broker.port, only_all);
    daemon.start();
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || daemon.log().contains("no longer configured"),
        || daemon.log(),
    )
    .await;
    // device.registered and device.online
    assert_eq!(
        daemon.metric("edgehook_endpoint_pending{endpoint=\"ops\"}"),
        Some(2)
    );
    assert_eq!(daemon.terminate(), Some(0));
    let (_, out, _) = daemon.outbox_cli(&["status"]);
    assert!(out.contains("endpoint ops: NOT CONFIGURED"), "{out}");
    let (code, _, err) = daemon.outbox_cli(&["purge", "--endpoint", "ops"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("deletes 2 pending events of endpoint ops"),
        "{err}"
    );
    let (code, out, _) = daemon.outbox_cli(&["purge", "--endpoint", "ops", "--yes"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("deleted 2 pending events of endpoint ops"),
        "{out}"
    );
    let (code, _, err) = daemon.outbox_cli(&["list", "--endpoint", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("no endpoint `nope`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_resets_the_connection_is_retried() {
    let (_dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    receiver.reset_connections(true);
    daemon.start();

    let sent = changes(broker.port, "rst-occ-1", 3).await;
    let wait = Instant::now() + LONG;
    common::until(wait, || receiver.resets() >= 3, || daemon.log()).await;
    let failed = daemon
        .metric("edgehook_delivery_attempts_total{endpoint=\"default\",result=\"network_error\"}")
        .unwrap();
    assert!(failed >= 1, "{}", daemon.log());
    receiver.seen(|s| assert!(s.events.is_empty()));

    receiver.reset_connections(false);
    receiver
        .wait_until(LONG, "every reading once connections are served", |s| {
            s.readings_of("rst-occ-1") == sent
        })
        .await;
    // The delivery log is readable while the daemon runs (it appends at least every second).
    let wait = Instant::now() + LONG;
    loop {
        let (code, log, err) = daemon.outbox_cli(&["log", "--limit", "1000"]);
        assert_eq!(code, 0, "{err}");
        // A reset shows as a failed request, or as a failed connection when it comes before
        // the connection was handed to the client (both seen on loopback).
        let reset = log.lines().any(|l| {
            l.contains("no answer")
                && (l.contains("request failed") || l.contains("connection failed"))
        });
        let delivered = log.lines().filter(|l| l.contains("200 ok")).count();
        if reset && delivered >= sent.len() {
            break;
        }
        assert!(
            Instant::now() < wait,
            "the resets and the deliveries are in the delivery log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(daemon.terminate(), Some(0));
}

/// Issue 16 #2: an SSO gateway in front of the receiver answers the POST with `302 Location:
/// /login` and the login page's GET with 200. A redirect is not a 2xx: the attempt failed, the
/// redirect is not followed (no signature or API key goes to the login page), it is logged with
/// its `Location`, and the events are delivered once the receiver answers 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_a_failed_attempt_and_is_never_followed() {
    let (dir, broker, receiver, mut daemon) = Rig::with_webhook(|url| {
        common::webhook_section(url, "headers = { \"X-Api-Key\" = \"key-123\" }")
    })
    .await
    .parts();
    receiver.redirect(Some("/login"));
    daemon.start();
    let changes = changes(broker.port, "redir-occ-1", 2).await;
    receiver
        .wait_until(LONG, "several redirected attempts", |s| s.requests >= 6)
        .await;
    receiver.seen(|s| {
        assert!(s.events.is_empty(), "nothing counts as received");
        assert_eq!(s.other_methods, 0, "the redirect was followed");
        assert_eq!(s.other_methods_with_secrets, 0);
    });
    assert!(
        daemon
            .metric("edgehook_delivery_responses_total{endpoint=\"default\",status=\"302\"}")
            .is_some_and(|n| n >= 1),
        "{}",
        common::http_get(daemon.metrics_port, "/metrics").unwrap_or_default()
    );
    assert_eq!(
        daemon.metric(
            "edgehook_events_delivered_total{endpoint=\"default\",type=\"sensor.reading.updated\"}"
        ),
        Some(0)
    );
    let log = || std::fs::read_to_string(dir.path().join("state/delivery.log")).unwrap_or_default();
    common::until(
        Instant::now() + LONG,
        || log().contains("302") && log().contains("/login"),
        || format!("the delivery log names the redirect: {}", log()),
    )
    .await;

    receiver.redirect(None);
    receiver
        .wait_until(LONG, "everything once the receiver answers 2xx", |s| {
            s.readings_of("redir-occ-1") == changes && s.of_type("device.online").len() == 1
        })
        .await;
    receiver.seen(|s| assert_eq!(s.other_methods, 0));
}

/// Issue 16 #3: a receiver that rejects one device it does not know (422) must not stall the
/// others. With `window = 16`, 20 events of `occ-bad` used to fill the window for ever and
/// `occ-good`'s events behind them never left the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rejected_device_never_stalls_the_others_even_past_the_window() {
    let (_dir, broker, receiver, mut daemon) =
        Rig::with_webhook(|url| common::webhook_section(url, "window = 16"))
            .await
            .parts();
    receiver.fail_device_with(Some("occ-bad"), 422);
    daemon.start();
    let bad = changes(broker.port, "occ-bad", 20).await;
    // Every bad event is in the outbox before the good device says anything.
    daemon
        .wait_metric(
            "edgehook_events_created_total{type=\"sensor.reading.updated\"}",
            20,
        )
        .await;
    let good = changes(broker.port, "occ-good", 3).await;
    receiver
        .wait_until(
            LONG,
            "the good device's events behind 20 rejected ones",
            |s| s.readings_of("occ-good") == good && !s.of_type("device.online").is_empty(),
        )
        .await;
    receiver.seen(|s| {
        assert!(s.readings_of("occ-bad").is_empty());
        assert!(s.failures_served >= 1, "the bad device was tried");
    });
    // Once the receiver learns the device, its events arrive, in order.
    receiver.fail_device(None);
    receiver
        .wait_until(LONG, "the rejected device's events, in order", |s| {
            s.readings_of("occ-bad") == bad
        })
        .await;
}

/// Issue 16 #4: an endpoint that cannot drain (here disabled by a 410) has its own share of
/// `outbox.max_size`; when that share fills, what it misses is dropped *for it only*, counted,
/// logged and shown by `outbox status`, while the healthy endpoint gets every event and MQTT
/// keeps being acknowledged. It used to fill the whole outbox and stop the gateway (530 of
/// 3,020 events delivered, then "outbox full" for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_endpoint_that_fills_its_share_never_stalls_the_others() {
    let ops = Receiver::start().await;
    ops.fail_with(410);
    let config = |all: &str| {
        format!(
            r#"
[webhook]
url = "{all}"
secret = "{secret}"
timeout = "2s"
[webhook.retry]
initial = "50ms"
max = "500ms"

[[endpoints]]
name = "ops"
url = "{ops}"
secret = "{secret}"
timeout = "2s"

[outbox]
max_size = "256KiB"
"#,
            ops = ops.url,
            secret = common::SECRET
        )
    };
    let (_dir, broker, all, mut daemon) = Rig::with_webhook(config).await.parts();
    daemon.start();
    let (_running, never) = tokio::sync::watch::channel(false);
    let published = common::publishers(broker.port, "share", 4, Some(750), Duration::ZERO, never)
        .await
        .unwrap();
    assert_eq!(published.len(), 3000);
    let wait = Instant::now() + Duration::from_secs(120);
    loop {
        let missing = all.seen(|s| published.difference(&s.reading_keys()).count());
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < wait,
            "{missing} of 3000 readings never reached the healthy endpoint\n{}\n{}",
            common::http_get(daemon.metrics_port, "/metrics").unwrap_or_default(),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        daemon.metric("edgehook_endpoint_disabled{endpoint=\"ops\"}"),
        Some(1)
    );
    let dropped = daemon
        .metric("edgehook_endpoint_dropped_total{endpoint=\"ops\"}")
        .unwrap();
    assert!(dropped > 0, "{}", daemon.log());
    assert_eq!(
        daemon.metric("edgehook_endpoint_dropped_total{endpoint=\"default\"}"),
        Some(0)
    );
    let pending_ops = daemon
        .metric("edgehook_endpoint_pending{endpoint=\"ops\"}")
        .unwrap();
    // 3000 readings, and each of the four devices' registration and online.
    assert_eq!(
        pending_ops + dropped,
        3008,
        "every event kept or counted as dropped"
    );
    let health = common::http_get(daemon.metrics_port, "/healthz").unwrap();
    assert!(!health.contains("outbox full"), "{health}");
    daemon.assert_logged("endpoint `ops` cannot drain");
    assert_eq!(daemon.terminate(), Some(0));
    let (code, out, err) = daemon.outbox_cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("dropped       {dropped}")), "{out}");
}

/// A receiver for each wire format, each verifying its platform's own signature, and the
/// `[webhook]` and `[[endpoints]]` sections that send to them.
struct Formats {
    generic: Receiver,
    roomz: Receiver,
    gospace: Receiver,
    spaceos: Receiver,
    roomz_v1: Receiver,
}

impl Formats {
    async fn start() -> (Formats, String) {
        let (generic, roomz, gospace) = (
            Receiver::start().await,
            Receiver::start().await,
            Receiver::start().await,
        );
        // SpaceOS's document: `createHmac('sha256', secret).update(rawBody).digest('hex')` equal
        // to `x-webhook-signature`; ROOMZ's first shape, signed the same way here.
        let (spaceos, roomz_v1) = (Receiver::start().await, Receiver::start().await);
        generic.expect_hmac(common::HmacCheck {
            header: "x-webhook-signature",
            sha512: false,
            base64: false,
            prefix: "sha256=",
            secret: common::SECRET.into(),
            content_type: "application/json",
            required_header: Some(("x-api-key", "key-9")),
        });
        roomz.expect_hmac(common::HmacCheck {
            header: "roomz-signature",
            sha512: true,
            base64: true,
            prefix: "",
            secret: "roomz-secret".into(),
            content_type: "application/json",
            required_header: None,
        });
        gospace.expect_hmac(common::HmacCheck {
            header: "x-gospace-signature",
            sha512: false,
            base64: false,
            prefix: "",
            secret: "gospace-key".into(),
            content_type: "application/json",
            required_header: None,
        });
        let config = format!(
            r#"
    [webhook]
    url = "{generic}"
    secret = "{secret}"
    format = "generic"
    signature_prefix = "sha256="
    compress_above = 64
    headers = {{ "X-Api-Key" = "key-9" }}

    [[endpoints]]
    name = "roomz"
    url = "{roomz}"
    secret = "roomz-secret"
    format = "roomz-presence"
    events = ["workspace.*"]

    [[endpoints]]
    name = "gospace"
    url = "{gospace}"
    secret = "gospace-key"
    format = "gospace"
    events = ["workspace.status.updated"]

    [[endpoints]]
    name = "spaceos"
    url = "{spaceos}"
    secret = "{secret}"
    format = "spaceos"

    [[endpoints]]
    name = "roomz-v1"
    url = "{roomz_v1}"
    secret = "{secret}"
    format = "roomz"
    events = ["workspace.*"]

    [[workspaces]]
    id = "room-1"
    sensors = ["fmt-occ-1"]
    hold = "100ms"
    "#,
            generic = generic.url,
            roomz = roomz.url,
            gospace = gospace.url,
            spaceos = spaceos.url,
            roomz_v1 = roomz_v1.url,
            secret = common::SECRET,
        );
        let formats = Formats {
            generic,
            roomz,
            gospace,
            spaceos,
            roomz_v1,
        };
        (formats, config)
    }
}

/// Issue 21: every receiver's wire format through the real pipeline, each verified by a test
/// receiver written from that platform's public text (`common::HmacCheck`): ROOMZ's current
/// API (base64 HMAC-SHA512 in `Roomz-Signature`, `workspace.presence.changed`, Unknown not
/// sent), gospace (hex HMAC-SHA256 in `x-gospace-signature`, `SPACE_UPDATED`), and the generic
/// `{event_time, event_type, current_context, data}` shape with an API key, a `sha256=`
/// prefix and gzip above 64 bytes (signed before compression); SpaceOS's
/// `{event, timestamp, data}` and ROOMZ's first shape as their documents give them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wire_format_is_verified_by_its_receivers_own_rules() {
    let (formats, config) = Formats::start().await;
    let Formats {
        generic,
        roomz,
        gospace,
        spaceos,
        roomz_v1,
    } = &formats;
    let (_dir, broker, _, mut daemon) = Rig::with_webhook(|_| config).await.parts();
    daemon.start();
    let topic = "sensors/fmt-occ-1/reading";
    common::publish_plain(
        broker.port,
        "fmt-1",
        &[(topic, r#"{"presence":true,"seq":1}"#)],
    )
    .await;
    roomz
        .wait_until(LONG, "busy", |s| s.events.len() == 1)
        .await;
    common::publish_plain(
        broker.port,
        "fmt-2",
        &[(topic, r#"{"presence":false,"seq":2}"#)],
    )
    .await;
    roomz
        .wait_until(LONG, "free", |s| s.events.len() == 2)
        .await;
    common::publish_plain(
        broker.port,
        "fmt-3",
        &[("devices/fmt-occ-1/status", "offline")],
    )
    .await;
    gospace
        .wait_until(LONG, "Occupied, Free, Unknown", |s| s.events.len() == 3)
        .await;
    daemon
        .wait_metric("edgehook_events_filtered_total{endpoint=\"roomz\"}", 1)
        .await;

    roomz.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        let presence: Vec<&Value> = s
            .events
            .iter()
            .map(|e| &e["data"]["presenceStatus"])
            .collect();
        assert_eq!(presence, ["busy", "free"], "Unknown is not sent to ROOMZ");
        for e in &s.events {
            assert_eq!(e["type"], "workspace.presence.changed");
            assert_eq!(e["apiVersion"], "1.0");
            assert_eq!(e["data"]["workspaceId"], "room-1");
            assert!(e["id"].as_str().is_some_and(|id| id.len() == 36), "{e}");
            assert!(e["timestamp"].is_string());
        }
    });
    gospace.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        let statuses: Vec<&Value> = s.events.iter().map(|e| &e["data"]["status"]).collect();
        assert_eq!(statuses, ["Occupied", "Free", "Unknown"]);
        for e in &s.events {
            assert_eq!(e["topic"], "SPACE_UPDATED");
            assert_eq!(e["data"]["_id"], "room-1");
        }
    });
    generic
        .wait_until(LONG, "the device and workspace events", |s| {
            s.events.iter().any(|e| e["event_type"] == "device.offline")
        })
        .await;
    generic.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        assert_eq!(
            s.gzipped as usize, s.requests as usize,
            "every body is over 64 bytes"
        );
        for e in &s.events {
            assert!(
                e["event_time"].is_string() && e["event_type"].is_string(),
                "{e}"
            );
            assert_eq!(e["current_context"]["gateway"], "gw-test");
            assert!(e["current_context"]["event_id"].is_string());
        }
        let readings: Vec<&Value> = s
            .events
            .iter()
            .filter(|e| e["event_type"] == "sensor.reading.updated")
            .map(|e| &e["data"]["fields"]["presence"])
            .collect();
        assert_eq!(readings, [true, false]);
        let workspace = s
            .events
            .iter()
            .find(|e| e["event_type"] == "workspace.status.updated")
            .unwrap();
        assert_eq!(workspace["current_context"]["workspace_id"], "room-1");
    });
    spaceos
        .wait_until(LONG, "every event as SpaceOS", |s| {
            s.events.iter().any(|e| e["event"] == "device.offline")
        })
        .await;
    spaceos.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        for e in &s.events {
            let mut keys: Vec<&String> = e.as_object().unwrap().keys().collect();
            keys.sort();
            assert_eq!(keys, ["data", "event", "timestamp"], "{e}");
        }
    });
    roomz_v1
        .wait_until(LONG, "Occupied, Free, Unknown", |s| s.events.len() == 3)
        .await;
    roomz_v1.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        for e in &s.events {
            assert_eq!(e["type"], "workspace.status.updated");
            assert_eq!(e["workspaceId"], "room-1");
        }
    });
    assert_eq!(daemon.terminate(), Some(0));
}

/// Issue 21: a template shapes the body (jq, over the envelope), checked at start against every
/// event type; one that fails on a real event makes that event a dead letter with the error
/// at once, and the device's next events go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_shapes_the_body_and_an_event_it_fails_on_is_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let config = format!(
        r#"
[webhook]
url = "{url}"
secret = "{secret}"
events = ["sensor.*"]
template = '''
if .data.fields.seq == 2 then error("seq 2 is refused by this template")
else {{kind: .type, device: .data.device_id, presence: .data.fields.presence, seq: .data.fields.seq}}
end'''
"#,
        url = receiver.url,
        secret = common::SECRET,
    );
    let mut daemon = Daemon::new_with_webhook(dir.path(), broker.port, &config);
    daemon.start();
    let topic = "sensors/tpl-occ-1/reading";
    common::publish_plain(
        broker.port,
        "tpl-1",
        &[
            (topic, r#"{"presence":true,"seq":1}"#),
            (topic, r#"{"presence":false,"seq":2}"#),
            (topic, r#"{"presence":true,"seq":3}"#),
        ],
    )
    .await;
    receiver
        .wait_until(LONG, "readings 1 and 3", |s| s.events.len() == 2)
        .await;
    daemon
        .wait_metric("edgehook_dead_letters_total{endpoint=\"default\"}", 1)
        .await;
    receiver.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        assert_eq!(
            s.events,
            [
                serde_json::json!({"kind": "sensor.reading.updated", "device": "tpl-occ-1", "presence": true, "seq": 1}),
                serde_json::json!({"kind": "sensor.reading.updated", "device": "tpl-occ-1", "presence": true, "seq": 3}),
            ]
        );
    });
    assert_eq!(daemon.terminate(), Some(0));
    let (code, out, err) = daemon.outbox_cli(&["list", "--dead"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("seq 2 is refused"), "{out}");
}

/// Issue 21: `batch_max_events` sends the ready events of several devices in one request (a
/// JSON array, keyed by the batch's id; each event keeps its own id). A batch the receiver
/// refuses with a 4xx is split, so the device it refuses holds up no other; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_carry_many_devices_and_one_refused_device_holds_up_none() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    receiver.fail_with(503);
    let config = format!(
        r#"
[webhook]
url = "{url}"
secret = "{secret}"
batch_max_events = 20
timeout = "2s"
[webhook.retry]
initial = "50ms"
max = "200ms"
"#,
        url = receiver.url,
        secret = common::SECRET,
    );
    let mut daemon = Daemon::new_with_webhook(dir.path(), broker.port, &config);
    daemon.start();
    // A backlog of six devices while the receiver is down (each: its birth and 3 readings).
    let mut sent = Vec::new();
    for i in 0..6 {
        let id = if i == 0 {
            "bat-bad".to_string()
        } else {
            format!("bat-{i}")
        };
        sent.push((id.clone(), changes(broker.port, &id, 3).await));
    }
    daemon.wait_metric("edgehook_outbox_depth", 24).await;
    assert_eq!(daemon.terminate(), Some(0));

    receiver.fail_with(0);
    receiver.fail_device_with(Some("bat-bad"), 422);
    daemon.start();
    receiver
        .wait_until(LONG, "every healthy device's readings", |s| {
            sent[1..].iter().all(|(id, c)| &s.readings_of(id) == c)
        })
        .await;
    receiver.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        assert!(
            s.batches.iter().any(|&n| n > 1),
            "the backlog went in batches: {:?}",
            s.batches
        );
        assert!(
            s.readings_of("bat-bad").is_empty(),
            "refused, retried, not lost"
        );
    });
    receiver.fail_device(None);
    receiver
        .wait_until(LONG, "the refused device once accepted", |s| {
            s.readings_of("bat-bad") == sent[0].1
        })
        .await;
    receiver.seen(|s| assert_eq!(s.duplicates, 0, "a split never resends what was accepted"));
    assert_eq!(daemon.terminate(), Some(0));
}

/// A body damaged on the card (a bit rotted in a segment of `outbox.bodies`) is never sent and
/// holds up nothing: at the next start the event is kept as a dead letter with why (reason
/// `damaged`), every other event is delivered, and a replay of every dead letter passes over
/// it. Before: the altered body was signed and sent as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_damaged_on_the_card_is_kept_as_a_dead_letter_and_the_rest_are_delivered() {
    let (dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    receiver.fail_device(Some("rot-occ"));
    daemon.start();
    let readings = changes(broker.port, "rot-occ", 3).await;
    // Refused (its lane waits behind its first event), each reading stays in the outbox.
    daemon
        .wait_metric("edgehook_outbox_depth", readings.len() as u64 + 1)
        .await;
    // Stopped, the daemon's checkpoint puts the undelivered bodies in a segment.
    assert_eq!(daemon.terminate(), Some(0));
    let segments: Vec<_> = std::fs::read_dir(dir.path().join("state/outbox.bodies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let (path, mut bytes, at) = segments
        .iter()
        .find_map(|p| {
            let bytes = std::fs::read(p).unwrap();
            let at = bytes.windows(7).rposition(|w| w == b"rot-occ")?;
            Some((p, bytes, at))
        })
        .expect("the device's bodies in a segment");
    bytes[at] = b'R'; // the last reading now names another device
    std::fs::write(path, bytes).unwrap();

    receiver.fail_device(None);
    daemon.start();
    receiver
        .wait_until(LONG, "the two readings whose bodies are whole", |s| {
            s.readings_of("rot-occ") == readings[..2]
        })
        .await;
    daemon.wait_metric("edgehook_dead_letters", 1).await;
    daemon.assert_logged("damaged on disk");
    assert_eq!(daemon.terminate(), Some(0));
    receiver.seen(|s| {
        assert_eq!(s.readings_of("Rot-occ"), Vec::<Value>::new(), "never sent");
        assert_eq!(s.bad_signatures, 0);
    });
    let (code, out, err) = daemon.outbox_cli(&["list", "--dead"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("damaged") && out.contains("checksum"), "{out}");
    let (code, out, err) = daemon.outbox_cli(&["replay", "--all-dead"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("0 dead letter(s) queued again") && out.contains("1 left"),
        "{out}"
    );
}

/// #45.4: stopping while a receiver hangs took as long as the webhook timeout (31 s with 30 s),
/// logging nothing after "waiting for in-flight deliveries", while the unit gives a stop 30 s:
/// systemd would kill it. A stop waits at most `stop_timeout` for deliveries in flight, says
/// what it lets go, exits cleanly, and the event is delivered after the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_a_hanging_receiver_ends_within_stop_timeout_and_loses_nothing() {
    let (_dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    receiver.delay(Duration::from_secs(300)); // it reads the request and never answers
    daemon
        .env
        .push(("EDGEHOOK_WEBHOOK__TIMEOUT".into(), "60s".into()));
    daemon
        .env
        .push(("EDGEHOOK_STOP_TIMEOUT".into(), "2s".into()));
    daemon.start();
    common::publish_plain(
        broker.port,
        "hang",
        &[("sensors/hang-1/reading", r#"{"presence":true}"#)],
    )
    .await;
    common::until(
        Instant::now() + Duration::from_secs(30),
        || receiver.served() > 0,
        || "the receiver never got the request".to_string(),
    )
    .await;
    daemon.signal(15);
    // Well inside the webhook timeout (60 s) and the unit's TimeoutStopSec (30 s).
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("stop_timeout reached"), "{log}");
    assert!(
        log.contains("waiting for the deliveries in flight"),
        "{log}"
    );
    // The receiver answers again: everything is delivered after the next start.
    receiver.delay(Duration::ZERO);
    daemon.start();
    receiver
        .wait_until(
            Duration::from_secs(30),
            "hang-1's events after the restart",
            |s| {
                s.events.iter().any(|e| {
                    e["data"]["device_id"] == "hang-1" && e["type"] == "sensor.reading.updated"
                })
            },
        )
        .await;
    assert_eq!(daemon.terminate(), Some(0));
}
