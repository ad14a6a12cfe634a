//! Commands from upstream (issue 19) through the real pipeline: pushed to the gateway's own
//! listener and pulled by long-polling a real HTTP upstream, both signed with Standard
//! Webhooks (checked here with the tests' own HMAC code); actions executed once by a simulated
//! display over mosquitto and told once to a verifying receiver; bookings that book a room
//! from their start to their end, on disk across `kill -9`.

mod common;

use std::time::Duration;

use common::{
    device, publish, publish_plain, push, push_signed, unix_now, Daemon, Mosquitto, Receiver,
    Upstream, UPSTREAM_SECRET,
};
use firmware_sim::DeviceClass;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// A display class that takes actions and bookings, and a room with a sensor and the display
/// (its own booking field is not used: the room's bookings here are upstream's).
const ROOM: &str = r#"
[[device_classes]]
name = "displays"
match = ["disp-*"]
debounce = "0s"
actions = ["show_message", "show_booking", "clear_booking"]
action_timeout = "5s"

[[workspaces]]
id = "room-1"
sensors = ["occ-1"]
display = "disp-1"
booking_field = "calendar"
hold = "1s"
"#;

fn upstream_section(extra: &str) -> String {
    format!("\n[upstream]\nsecrets = [\"{UPSTREAM_SECRET}\"]\ntolerance = \"5m\"\n{extra}")
}

fn action(id: &str, device: &str, name: &str) -> Value {
    json!({"type": "device.action_requested", "data": {"id": id, "device": device, "name": name, "params": {"text": "hello"}}})
}

fn rfc3339(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix_secs))
        .to_string()
}

/// The room's occupancy sensor, `occ-1`, reports whether anyone is there.
async fn presence(port: u16, present: bool) {
    let reading = format!(r#"{{"presence": {present}}}"#);
    publish_plain(port, "occ", &[("sensors/occ-1/reading", reading.as_str())]).await;
}

/// The daemon with [`ROOM`] and `[upstream]` with `extra`, started; the room's display
/// online and its sensor reporting nobody there (the room told Free).
async fn room(
    dir: &std::path::Path,
    broker: &Mosquitto,
    receiver: &Receiver,
    extra: &str,
) -> (Daemon, firmware_sim::SimDevice) {
    let config = format!("{ROOM}{}", upstream_section(extra));
    let mut daemon = Daemon::new(dir, broker.port, &receiver.url, &config);
    daemon.start();
    let mut disp = device(broker.port, "disp-1", DeviceClass::RoomDisplay).await;
    publish(&mut disp, 1, 1.0).await;
    presence(broker.port, false).await;
    receiver
        .wait_until(LONG, "the display online and the room free", |s| {
            !s.of_type("device.online").is_empty() && room_statuses(s) == ["Free"]
        })
        .await;
    (daemon, disp)
}

/// [`room`] with upstream's push listener: its directory, broker, receiver, daemon, the
/// listener's port and the display.
async fn pushed_room() -> (
    tempfile::TempDir,
    Mosquitto,
    Receiver,
    Daemon,
    u16,
    firmware_sim::SimDevice,
) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let port = common::free_port();
    let push = format!("[upstream.push]\nlisten = \"127.0.0.1:{port}\"\n");
    let (daemon, disp) = room(dir.path(), &broker, &receiver, &push).await;
    (dir, broker, receiver, daemon, port, disp)
}

/// The workspace statuses told for room-1, in order.
fn room_statuses(s: &common::Seen) -> Vec<String> {
    s.of_type("workspace.status.updated")
        .into_iter()
        .filter(|e| e["data"]["workspace_id"] == "room-1")
        .map(|e| e["data"]["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pushed_by_upstream_are_verified_taken_once_and_told() {
    let (_dir, _broker, receiver, mut daemon, port, _disp) = pushed_room().await;

    // Not signed, signed wrongly, too old, or from the future: 401, and nothing is taken.
    let a1 = action("a1", "disp-1", "show_message");
    let body = a1.to_string();
    let unsigned = common::raw(port, "POST", "/v1/commands", &[], Some(&body)).await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    let wrong = "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC0xMjM0NQ==";
    let bad = push_signed(port, &a1, wrong, "m-bad", unix_now()).await;
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("does not verify"), "{}", bad.body);
    let stale = push_signed(port, &a1, UPSTREAM_SECRET, "m-old", unix_now() - 301).await;
    assert_eq!(stale.status, 401);
    assert!(stale.body.contains("tolerance"), "{}", stale.body);
    let future = push_signed(port, &a1, UPSTREAM_SECRET, "m-future", unix_now() + 400).await;
    assert_eq!(future.status, 401);
    let metric = |reason: &str| {
        daemon.metric(&format!(
            "edgehook_upstream_refused_total{{via=\"push\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(
        (metric("unsigned"), metric("bad_signature"), metric("stale")),
        (Some(1), Some(1), Some(2))
    );
    assert!(daemon.log().contains("refused a command from upstream"));
    // Only POST /v1/commands is served.
    let other = common::raw(port, "GET", "/v1/devices", &[], None).await;
    assert_eq!(other.status, 404);
    let get = common::raw(port, "GET", "/v1/commands", &[], None).await;
    assert_eq!(get.status, 405);

    // Signed: taken (202), executed, told.
    let taken = push(port, &a1, "m-1").await;
    assert_eq!(taken.status, 202, "{}", taken.body);
    assert!(
        ["waiting", "sent"].contains(&taken.json()["status"].as_str().unwrap()),
        "{}",
        taken.body
    );
    receiver
        .wait_until(LONG, "a1 told", |s| !s.told_of_action("a1").is_empty())
        .await;
    // The same request replayed: 401. The same action in a new request: known (200), and
    // the device does not execute it again.
    let replayed = push(port, &a1, "m-1").await;
    assert_eq!(replayed.status, 401);
    assert!(replayed.body.contains("taken already"), "{}", replayed.body);
    let again = push(port, &a1, "m-2").await;
    assert_eq!(
        (again.status, again.json()["status"].as_str()),
        (200, Some("succeeded"))
    );

    // Malformed, unknown device, action not allowed.
    let no_device =
        json!({"type": "device.action_requested", "data": {"id": "a2", "name": "show_message"}});
    let r = push(port, &no_device, "m-3").await;
    assert_eq!(
        (r.status, r.json()["field"].as_str()),
        (400, Some("data.device"))
    );
    // A request not taken does not use up its id: fixed and sent again, it is taken.
    let fixed = action("a2", "disp-1", "show_message");
    assert_eq!(push(port, &fixed, "m-3").await.status, 202);
    let r = common::raw(port, "POST", "/v1/commands", &[], Some("{not json")).await;
    assert_eq!(
        r.status, 401,
        "the signature is checked before the body is read as JSON"
    );
    let unknown = push(port, &action("a3", "disp-9", "show_message"), "m-4").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    // The sender retries it (same webhook-id): answered again (the rejection is known), not
    // refused as a replay.
    let retried = push(port, &action("a3", "disp-9", "show_message"), "m-4").await;
    assert_eq!(
        (retried.status, retried.json()["status"].as_str()),
        (200, Some("rejected")),
        "{}",
        retried.body
    );
    let refused = push(port, &action("a4", "disp-1", "self_destruct"), "m-5").await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    receiver
        .wait_until(LONG, "a2 done, a3 and a4 rejected", |s| {
            !s.told_of_action("a2").is_empty()
                && s.told_of_action("a3")
                    .first()
                    .is_some_and(|e| e["status"] == "rejected")
                && s.told_of_action("a4")
                    .first()
                    .is_some_and(|e| e["status"] == "rejected")
        })
        .await;

    // Each action told once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in ["a1", "a2", "a3", "a4"] {
        assert_eq!(receiver.seen(|s| s.told_of_action(id).len()), 1, "{id}");
    }
    receiver.seen(|s| assert_eq!(s.bad_signatures, 0));
    assert_eq!(daemon.terminate(), Some(0));
}

/// A booking pushed by upstream holds its room (Booked, shown on the display) but for
/// presence, is kept across a `kill -9`, and frees the room when it ends; a booking for a
/// room nobody knows is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookings_pushed_by_upstream_hold_the_room_across_a_kill_9_until_they_end() {
    let (_dir, broker, receiver, mut daemon, port, _disp) = pushed_room().await;
    // A booking in force: Booked (the display's own field says nothing), shown on the display.
    let now = unix_now();
    let start = json!({"event": "booking.start", "data": {"booking_id": "bk-1", "meeting_space_id": "room-1", "title": "Standup", "start_time": rfc3339(now - 60), "end_time": rfc3339(now + 3600)}});
    let booked = push(port, &start, "m-6").await;
    assert_eq!(booked.status, 202, "{}", booked.body);
    receiver
        .wait_until(LONG, "room-1 booked, the booking shown", |s| {
            room_statuses(s).last().map(String::as_str) == Some("Booked")
                && s.of_type("device.action_completed").iter().any(|e| {
                    e["data"]["name"] == "show_booking" && e["data"]["status"] == "succeeded"
                })
        })
        .await;
    // Presence wins; when it ends (after the 1 s hold), the booking holds the room again.
    presence(broker.port, true).await;
    presence(broker.port, false).await;
    receiver
        .wait_until(LONG, "occupied, then booked again", |s| {
            room_statuses(s).ends_with(&["Occupied".into(), "Booked".into()])
        })
        .await;
    // An unknown room: 404.
    let elsewhere = json!({"type": "booking.start", "data": {"booking_id": "bk-2", "workspace_id": "room-9", "start": rfc3339(now), "end": rfc3339(now + 60)}});
    assert_eq!(push(port, &elsewhere, "m-7").await.status, 404);

    // Kept on disk: after kill -9 the room is still booked, and booking.end frees it.
    daemon.kill9();
    daemon.start();
    let end =
        json!({"type": "booking.end", "data": {"booking_id": "bk-1", "workspace_id": "room-1"}});
    assert_eq!(push(port, &end, "m-8").await.status, 202);
    receiver
        .wait_until(LONG, "room-1 free after booking.end", |s| {
            room_statuses(s).last().map(String::as_str) == Some("Free")
                && s.of_type("device.action_completed")
                    .iter()
                    .any(|e| e["data"]["name"] == "clear_booking")
        })
        .await;
    receiver.seen(|s| {
        let statuses = room_statuses(s);
        let freed = statuses.iter().rposition(|x| x == "Free").unwrap();
        assert_eq!(
            statuses[freed - 1],
            "Booked",
            "booked until booking.end: {statuses:?}"
        );
    });
    assert_eq!(
        daemon.metric("edgehook_upstream_commands_total{via=\"push\",status=\"202\"}"),
        Some(1),
        "counted since the restart"
    );
    receiver.seen(|s| assert_eq!(s.bad_signatures, 0));
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pulled_from_upstream_are_taken_in_order_and_the_cursor_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let upstream = Upstream::start().await;
    let pull = format!(
        "[upstream.pull]\nurl = \"{}\"\nwait = \"2s\"\n",
        upstream.url
    );
    let (mut daemon, disp) = room(dir.path(), &broker, &receiver, &pull).await;
    // The first poll, signed (the upstream verifies it with its own code), has no cursor.
    let first = upstream.wait_poll(LONG, "at all", |_| true).await;
    assert_eq!(first["gateway_id"], "gw-test");
    assert_eq!(first["cursor"], Value::Null);
    assert_eq!(first["wait"], 2);

    // Two commands: taken in order, reported in the next poll with the new cursor.
    let now = unix_now();
    upstream.queue_all([
        json!({"id": "cmd-1", "type": "device.action_requested", "data": {"id": "p1", "device": "disp-1", "name": "show_message"}}),
        json!({"id": "cmd-2", "type": "booking.start", "data": {"booking_id": "bk-1", "workspace_id": "room-1", "start": rfc3339(now - 10), "end": rfc3339(now + 3600)}}),
    ]);
    let acked = upstream
        .wait_poll(LONG, "with cursor c-2", |p| p["cursor"] == "c-2")
        .await;
    assert_eq!(
        acked["taken"],
        json!([{"id": "cmd-1", "status": 202}, {"id": "cmd-2", "status": 202}])
    );
    receiver
        .wait_until(LONG, "p1 done, the room booked, the booking shown", |s| {
            s.told_of_action("p1")
                .first()
                .is_some_and(|e| e["status"] == "succeeded")
                && room_statuses(s).last().map(String::as_str) == Some("Booked")
                && s.of_type("device.action_completed")
                    .iter()
                    .any(|e| e["data"]["name"] == "show_booking")
        })
        .await;

    // An answer not signed with the gateway's secret is refused: nothing in it is taken.
    upstream.answer_with(Some("whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC0xMjM0NQ=="));
    upstream.queue_all([
        json!({"id": "cmd-3", "type": "device.action_requested", "data": {"id": "p2", "device": "disp-1", "name": "show_message"}}),
        json!({"id": "cmd-4", "type": "booking.start", "data": {"booking_id": "bk-2", "workspace_id": "room-1"}}),
    ]);
    daemon
        .wait_metric(
            "edgehook_upstream_refused_total{via=\"pull\",reason=\"bad_signature\"}",
            1,
        )
        .await;
    assert!(
        daemon
            .metric("edgehook_upstream_poll_failures_total")
            .unwrap()
            >= 1
    );
    assert_eq!(disp.actions_executed(), 2, "p1 and show_booking only");
    // Signed again: taken after the backoff; a malformed command (cmd-4) is reported, not
    // retried.
    upstream.answer_with(None);
    let acked = upstream
        .wait_poll(LONG, "with cursor c-4", |p| p["cursor"] == "c-4")
        .await;
    assert_eq!(acked["taken"][0], json!({"id": "cmd-3", "status": 202}));
    assert_eq!(acked["taken"][1]["status"], 400);
    assert!(acked["taken"][1]["error"].as_str().is_some());
    receiver
        .wait_until(LONG, "p2 done", |s| !s.told_of_action("p2").is_empty())
        .await;

    // kill -9: the cursor was kept, so the next start polls from c-4 and takes nothing twice;
    // the booking is still in force.
    daemon.kill9();
    let polls_before = upstream.polls().len();
    daemon.start();
    let after = upstream
        .wait_poll(LONG, "after the restart", |_| {
            upstream.polls().len() > polls_before
        })
        .await;
    let restarted = &upstream.polls()[polls_before];
    assert_eq!(restarted["cursor"], "c-4", "{after}");
    upstream.queue(json!({"id": "cmd-5", "type": "booking.end", "data": {"booking_id": "bk-1", "workspace_id": "room-1"}}));
    receiver
        .wait_until(LONG, "freed by the pulled booking.end", |s| {
            room_statuses(s).last().map(String::as_str) == Some("Free")
        })
        .await;
    receiver.seen(|s| {
        let statuses = room_statuses(s);
        assert_eq!(
            statuses,
            ["Free", "Booked", "Free"],
            "booked until booking.end"
        );
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in ["p1", "p2"] {
        assert_eq!(receiver.seen(|s| s.told_of_action(id).len()), 1, "{id}");
    }
    assert_eq!(upstream.bad_polls(), 0, "every poll signed");
    assert_eq!(daemon.terminate(), Some(0));
}

/// #43.16: one malformed pulled command (a numeric or missing `id`) blocked the whole answer:
/// the cursor never moved, the valid command beside it was never taken and upstream was never
/// told. And an upstream that answers at once with nothing was polled ~40 times a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_pulled_command_is_refused_alone_and_polls_are_paced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let upstream = Upstream::start().await;
    // `wait = "0s"`: this upstream answers every poll at once.
    let pull = format!(
        "[upstream.pull]\nurl = \"{}\"\nwait = \"0s\"\n",
        upstream.url
    );
    let (mut daemon, _disp) = room(dir.path(), &broker, &receiver, &pull).await;
    upstream.queue_all([
        json!({"id": 42, "type": "device.action_requested", "data": {"id": "bad", "device": "disp-1", "name": "show_message"}}),
        json!({"type": "device.action_requested", "data": {"id": "bad-2", "device": "disp-1", "name": "show_message"}}),
        json!({"id": "cmd-ok", "type": "device.action_requested", "data": {"id": "p9", "device": "disp-1", "name": "show_message"}}),
    ]);
    let acked = upstream
        .wait_poll(LONG, "with cursor c-3", |p| p["cursor"] == "c-3")
        .await;
    let taken: Vec<(Value, Value)> = acked["taken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].clone(), t["status"].clone()))
        .collect();
    assert_eq!(
        taken,
        [
            (json!("42"), json!(400)),
            (json!("#2"), json!(400)),
            (json!("cmd-ok"), json!(202))
        ]
    );
    receiver
        .wait_until(LONG, "p9 done", |s| !s.told_of_action("p9").is_empty())
        .await;
    assert!(receiver.seen(|s| s.told_of_action("bad").is_empty()));
    // Paced: about one poll a second while upstream has nothing (before: dozens).
    let before = upstream.polls().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polls = upstream.polls().len() - before;
    assert!(polls <= 6, "{polls} polls in 3 s");
    assert!(polls >= 1, "still polling");
    assert_eq!(daemon.terminate(), Some(0));
}
