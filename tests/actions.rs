//! Actions down to devices through the real pipeline (issue 19): submitted through the
//! control API, published over mosquitto to a simulated display once durable, answered by
//! it, and told once as `device.action_completed` to a verifying receiver — across a
//! `kill -9` before the device could take it and one after it was sent but not answered.

mod common;

use std::time::{Duration, Instant};

use common::{device, publish, Api, Receiver, Rig};
use firmware_sim::{ActionBehaviour, DeviceClass};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// Every `device.action_completed` the receiver was told of action `id`.
fn told(r: &Receiver, id: &str) -> Vec<Value> {
    r.seen(|s| s.told_of_action(id))
}

/// `POST /v1/actions`: action `id`, `name`, for disp-1.
async fn submit(api: &Api, id: &str, name: &str) -> common::Answer {
    let body = json!({"id": id, "device": "disp-1", "name": name, "params": {"text": "Welcome"}});
    api.call("POST", "/v1/actions", "/v1/actions", Some(&body))
        .await
}

/// Wait until `id` is told; the first `device.action_completed` of it.
async fn completion(r: &Receiver, id: &str) -> Value {
    r.wait_until(LONG, &format!("{id} told"), |s| {
        !s.told_of_action(id).is_empty()
    })
    .await;
    told(r, id).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_are_executed_once_and_told_once_across_kill_9() {
    let class = r#"
[[device_classes]]
name = "displays"
match = ["disp-*"]
debounce = "0s"
actions = ["show_message", "show_booking"]
action_timeout = "2s"
"#;
    let (_dir, broker, receiver, mut daemon) = Rig::start(class).await.parts();
    let api = Api::with_token(&daemon);
    let mut disp = device(broker.port, "disp-1", DeviceClass::RoomDisplay).await;
    publish(&mut disp, 1, 1.0).await;
    receiver
        .wait_until(LONG, "the display online", |s| {
            !s.of_type("device.online").is_empty()
        })
        .await;
    // Online: accepted once durable, executed, told.
    let a1 = submit(&api, "a1", "show_message").await;
    assert_eq!(a1.status, 202, "{}", a1.body);
    let a1_done = completion(&receiver, "a1").await;
    assert_eq!(a1_done["status"], "succeeded");
    assert_eq!(a1_done["result"], json!({"showing": "Welcome"}));
    // The same id again: what became of it, nothing executed again.
    let again = submit(&api, "a1", "show_message").await;
    assert_eq!(
        (again.status, again.json()["status"].as_str()),
        (200, Some("succeeded"))
    );
    // Not an action of its class: rejected and told; 422.
    let bad = submit(&api, "a0", "reboot").await;
    assert_eq!(bad.status, 422, "{}", bad.body);

    // A device that answers twice: one event. One that fails: failed, with its reason.
    disp.answer_actions(ActionBehaviour::Twice);
    submit(&api, "a2", "show_booking").await;
    let a2_done = completion(&receiver, "a2").await;
    assert_eq!(a2_done["status"], "succeeded");
    daemon
        .wait_metric("edgehook_action_answers_ignored_total{reason=\"late\"}", 1)
        .await;
    disp.answer_actions(ActionBehaviour::Fails);
    submit(&api, "a3", "show_message").await;
    let a3_done = completion(&receiver, "a3").await;
    assert_eq!(a3_done["status"], "failed");
    assert_eq!(a3_done["reason"], "the device could not do it");
    // One that never answers: timed out after the class's 2 s.
    disp.answer_actions(ActionBehaviour::Silent);
    submit(&api, "a4", "show_message").await;
    let a4_done = completion(&receiver, "a4").await;
    assert_eq!(a4_done["status"], "timed_out");

    // Sent, unanswered, and the daemon killed: sent again after the restart; the device has
    // executed it already and answers again without executing it a second time.
    submit(&api, "a5", "show_message").await;
    let wait = Instant::now() + LONG;
    common::until(
        wait,
        || disp.actions_executed() == 5,
        || format!("executed {}", disp.actions_executed()),
    )
    .await;
    daemon.kill9();
    disp.answer_actions(ActionBehaviour::Succeeds);
    daemon.start();
    let a5_done = completion(&receiver, "a5").await;
    assert_eq!(a5_done["status"], "succeeded");
    assert_eq!(disp.actions_executed(), 5, "a1..a5, each once");

    // Accepted while the device is offline, and the daemon killed before it could be sent:
    // it waits on disk and runs once the device is back.
    disp.shut_down().await.unwrap();
    receiver
        .wait_until(LONG, "the display offline", |s| {
            !s.of_type("device.offline").is_empty()
        })
        .await;
    let a6 = submit(&api, "a6", "show_message").await;
    assert_eq!(a6.status, 202);
    assert_eq!(
        api.get("/v1/actions/{id}", "/v1/actions/a6").await.json()["status"],
        "waiting"
    );
    daemon.kill9();
    daemon.start();
    let disp = device(broker.port, "disp-1", DeviceClass::RoomDisplay).await;
    let a6_done = completion(&receiver, "a6").await;
    assert_eq!(a6_done["status"], "succeeded");
    assert_eq!(disp.actions_executed(), 1);

    // Exactly one event per action, whatever the device did.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in ["a0", "a1", "a2", "a3", "a4", "a5", "a6"] {
        assert_eq!(
            told(&receiver, id).len(),
            1,
            "{id}: {:?}",
            told(&receiver, id)
        );
    }
    receiver.seen(|s| assert_eq!(s.bad_signatures, 0));
    assert_eq!(daemon.terminate(), Some(0));
}

/// firmware-sim's sensors identify, reboot and calibrate; an action for a sensor that stays
/// offline past its deadline is `expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_identify_reboot_and_calibrate_and_an_offline_ones_action_expires() {
    let class = r#"
[[device_classes]]
name = "sensors"
match = ["occ-*"]
debounce = "0s"
actions = ["identify", "reboot", "calibrate"]
action_timeout = "5s"
"#;
    let (_dir, broker, receiver, mut daemon) = Rig::start(class).await.parts();
    let api = Api::with_token(&daemon);
    let mut occ = device(broker.port, "occ-1", DeviceClass::OccupancySensor).await;
    publish(&mut occ, 1, 1.0).await;
    let mut quiet = device(broker.port, "occ-2", DeviceClass::OccupancySensor).await;
    publish(&mut quiet, 1, 1.0).await;
    quiet.shut_down().await.unwrap();
    receiver
        .wait_until(LONG, "occ-1 online, occ-2 offline", |s| {
            !s.of_type("device.online").is_empty() && !s.of_type("device.offline").is_empty()
        })
        .await;
    let deadline =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(2))
            .to_string();
    for (id, device, name, params) in [
        ("s1", "occ-1", "identify", json!({"seconds": 3})),
        ("s2", "occ-1", "calibrate", json!({"offset": -0.5})),
        ("s3", "occ-1", "reboot", Value::Null),
        ("s4", "occ-2", "identify", Value::Null),
    ] {
        let mut body = json!({"id": id, "device": device, "name": name, "params": params});
        if device == "occ-2" {
            body["deadline"] = json!(deadline);
        }
        let r = api
            .call("POST", "/v1/actions", "/v1/actions", Some(&body))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    for (id, status, result) in [
        ("s1", "succeeded", json!({"blinked_seconds": 3})),
        ("s2", "succeeded", json!({"offset": -0.5})),
        ("s3", "succeeded", json!({"uptime_seconds": 0})),
        ("s4", "expired", Value::Null),
    ] {
        let done = completion(&receiver, id).await;
        assert_eq!(
            (done["status"].as_str(), &done["result"]),
            (Some(status), &result),
            "{id}"
        );
    }
    assert_eq!(occ.actions_executed(), 3);

    // The commands: submit, show; and with the daemon stopped, a clear refusal.
    let (code, out, err) = daemon.cli(
        &[
            "actions",
            "submit",
            "occ-1",
            "identify",
            "--id",
            "c1",
            "--params",
            r#"{"seconds": 2}"#,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("action     c1") && out.contains("identify"),
        "{out}"
    );
    let done = completion(&receiver, "c1").await;
    assert_eq!(done["result"], json!({"blinked_seconds": 2}));
    let (code, out, err) = daemon.cli(&["actions", "show", "c1", "--json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (shown["status"].as_str(), shown["device"].as_str()),
        (Some("succeeded"), Some("occ-1"))
    );
    let (code, _, err) = daemon.cli(&["actions", "submit", "occ-1", "self_destruct"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("does not take"), "{err}");
    let (code, out, err) = daemon.cli(&["bookings"], &[]);
    assert_eq!(
        (code, out.trim()),
        (0, "no bookings from upstream"),
        "{err}"
    );
    assert_eq!(daemon.terminate(), Some(0));
    let (code, out, err) = daemon.cli(&["actions", "submit", "occ-1", "identify"], &[]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("not running"), "{err}");
}
