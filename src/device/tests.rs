use super::*;
use serde_json::json;

fn reading(v: Value) -> InboundBody {
    InboundBody::Reading {
        fields: v.as_object().unwrap().clone(),
        metadata: Arc::from(vec!["seq".to_string(), "ts".to_string()]),
    }
}

const ONLINE: InboundBody = InboundBody::Status { online: true };
const OFFLINE: InboundBody = InboundBody::Status { online: false };

fn kinds(a: &Applied) -> Vec<&'static str> {
    a.events.iter().map(|e| e.kind.as_str()).collect()
}

fn ws(id: &str, sensors: &[&str], display: Option<&str>) -> WorkspaceConfig {
    WorkspaceConfig {
        id: id.into(),
        sensors: sensors.iter().map(|s| s.to_string()).collect(),
        presence_field: "presence".into(),
        display: display.map(str::to_owned),
        booking_field: "booked".into(),
        hold: Duration::from_secs(60),
    }
}

fn class(name: &str, matches: &str) -> DeviceClassConfig {
    DeviceClassConfig {
        name: name.into(),
        matches: vec![matches.into()],
        heartbeat: Some(Duration::from_secs(10)),
        lost_after: 3.0,
        debounce: Duration::ZERO,
        ..Default::default()
    }
}

/// (workspace status, previous) of each workspace event.
fn statuses(a: &Applied) -> Vec<(Value, Value)> {
    a.events
        .iter()
        .filter(|e| e.kind == EventType::WorkspaceStatusUpdated)
        .map(|e| (e.data["status"].clone(), e.data["previous_status"].clone()))
        .collect()
}

#[test]
fn first_reading_is_a_change_and_brings_the_device_online() {
    let mut r = Registry::new(&[], &[], [], [], 0);
    let a = r.apply("t1", &reading(json!({"temp": 21.5, "seq": 1})), 1);
    assert_eq!(
        kinds(&a),
        [
            "device.registered",
            "device.online",
            "sensor.reading.updated"
        ]
    );
    assert_eq!(a.events[2].data["changed"], json!(["temp"]));
    assert_eq!(a.events[2].data["fields"], json!({"temp": 21.5, "seq": 1}));
    assert_eq!(a.changes.devices[0].1.health, Health::Online);
    // unchanged, in a class that does not watch silence: nothing to write at all
    assert!(r
        .apply("t1", &reading(json!({"temp": 21.5, "seq": 2})), 100_000)
        .is_empty());
}

#[test]
fn classes_match_by_pattern_first_wins_and_default_catches_the_rest() {
    let r = Registry::new(
        &[class("occ", "occ-*"), class("any-1", "*-1")],
        &[],
        [],
        [],
        0,
    );
    assert_eq!(r.class_name("occ-1"), "occ");
    assert_eq!(r.class_name("disp-1"), "any-1");
    assert_eq!(r.class_name("disp-2"), "default");
}

#[test]
fn default_class_debounces_offline() {
    let mut r = Registry::new(&[], &[], [], [], 0);
    assert_eq!(
        kinds(&r.apply("d", &ONLINE, 0)),
        ["device.registered", "device.online"]
    );
    assert!(r.apply("d", &OFFLINE, 1_000).events.is_empty());
    assert_eq!(r.next_deadline(), Some(6_000), "5 s default debounce");
    assert!(r.tick(5_999).events.is_empty());
    let a = r.tick(6_000);
    assert_eq!(kinds(&a), ["device.offline"]);
    assert_eq!(a.events[0].data["since"], "1970-01-01T00:00:01.000Z");
    assert_eq!(
        kinds(&r.apply("d", &reading(json!({"x": 1})), 7_000)),
        ["device.online", "sensor.reading.updated"]
    );
}

#[test]
fn lost_communication_and_recovery_with_messages_in_between() {
    let mut r = Registry::new(&[class("occ", "occ-*")], &[], [], [], 0);
    r.apply("occ-1", &ONLINE, 0);
    for t in [10_000, 20_000, 30_000] {
        assert!(
            r.apply("occ-1", &reading(json!({"presence": false})), t)
                .events
                .len()
                <= 1
        );
    }
    assert!(r.tick(59_999).events.is_empty());
    let a = r.tick(60_000);
    assert_eq!(kinds(&a), ["device.lost_communication"]);
    assert_eq!(a.events[0].data["last_seen"], "1970-01-01T00:00:30.000Z");
    assert_eq!(r.device("occ-1").unwrap().health, Health::Lost);
    assert_eq!(r.next_deadline(), None);
    assert_eq!(kinds(&r.apply("occ-1", &ONLINE, 70_000)), ["device.online"]);
}

/// A retained message (the broker's copy, at every subscribe) is heard from the device only
/// when that is news: it brings a device never heard from, or offline, online; it neither
/// brings a lost device back nor puts off an online one's silence. Its reading is still taken.
#[test]
fn a_retained_message_is_heard_only_when_it_is_news() {
    let mut r = Registry::new(&[class("occ", "occ-*")], &[], [], [], 0);
    // Never heard from: the broker's word is how it is first known.
    let a = r.apply_retained("occ-1", &ONLINE, 0);
    assert_eq!(kinds(&a), ["device.registered", "device.online"]);
    // Online: the copy again (a reconnect) does not count as hearing from it.
    assert!(r.apply_retained("occ-1", &ONLINE, 20_000).events.is_empty());
    assert_eq!(r.device("occ-1").unwrap().last_seen, 0);
    assert_eq!(kinds(&r.tick(30_000)), ["device.lost_communication"]);
    // Lost: the old birth does not bring it back; a retained reading is still a reading.
    assert!(r.apply_retained("occ-1", &ONLINE, 40_000).events.is_empty());
    let a = r.apply_retained("occ-1", &reading(json!({"presence": true})), 41_000);
    assert_eq!(kinds(&a), ["sensor.reading.updated"]);
    assert_eq!(r.device("occ-1").unwrap().health, Health::Lost);
    // Its next real message does.
    assert_eq!(kinds(&r.apply("occ-1", &ONLINE, 50_000)), ["device.online"]);
    // Offline (its will): a retained online replaced the will, so it came back.
    assert_eq!(
        kinds(&r.apply("occ-1", &OFFLINE, 60_000)),
        ["device.offline"]
    );
    let a = r.apply_retained("occ-1", &ONLINE, 70_000);
    assert_eq!(kinds(&a), ["device.online"]);
}

#[test]
fn seen_times_are_persisted_coarsely_for_watched_classes() {
    let mut r = Registry::new(&[class("occ", "occ-*")], &[], [], [], 0);
    assert_eq!(
        r.apply("occ-1", &reading(json!({"t": 1})), 1_000)
            .changes
            .devices
            .len(),
        1
    );
    assert!(r
        .apply("occ-1", &reading(json!({"t": 1})), 2_000)
        .changes
        .devices
        .is_empty());
    assert!(r
        .apply("occ-1", &reading(json!({"t": 1})), 30_999)
        .changes
        .devices
        .is_empty());
    let a = r.apply("occ-1", &reading(json!({"t": 1})), 31_000);
    assert!(a.events.is_empty());
    assert_eq!(a.changes.devices[0].1.last_seen, 31_000);
}

/// Issue 16 #1: what an acknowledgement must wait for. Anything that changes what will be
/// reported is synced even without an event; a `last_seen` refresh alone is not.
#[test]
fn what_must_be_on_disk_before_the_ack() {
    let mut held = class("held", "held-*");
    held.min_interval = Duration::from_secs(5);
    held.heartbeat = Some(Duration::from_secs(60));
    let mut slow = class("slow", "slow-*");
    slow.debounce = Duration::from_secs(5);
    slow.heartbeat = Some(Duration::from_secs(60));
    let mut r = Registry::new(&[held, slow], &[], [], [], 0);
    // (device, message, at, events, states to write, sync); `None`: the clock alone
    type Case = (&'static str, Option<InboundBody>, Millis, usize, bool, bool);
    let cases: &[Case] = &[
        // registered, online, the reading
        (
            "held-1",
            Some(reading(json!({"presence": true}))),
            1_000,
            3,
            true,
            true,
        ),
        // B inside min_interval: held back, no event, but what is held must survive
        (
            "held-1",
            Some(reading(json!({"presence": false}))),
            1_300,
            0,
            true,
            true,
        ),
        // an exact repeat of the held values changes nothing
        (
            "held-1",
            Some(reading(json!({"presence": false}))),
            1_400,
            0,
            false,
            false,
        ),
        // the held report goes out when min_interval ends
        ("held-1", None, 6_000, 1, true, true),
        ("slow-1", Some(ONLINE), 7_000, 2, true, true),
        // an offline report inside its debounce window: no event yet, synced
        ("slow-1", Some(OFFLINE), 8_000, 0, true, true),
        ("slow-1", Some(ONLINE), 8_500, 0, true, true),
        // unchanged, 30 s on, in a class that watches silence: a lazy checkpoint
        ("slow-1", Some(reading(json!({}))), 40_000, 0, true, false),
        ("slow-1", Some(reading(json!({}))), 41_000, 0, false, false),
    ];
    for (i, (device, body, at, events, states, sync)) in cases.iter().enumerate() {
        let a = match body {
            Some(body) => r.apply(device, body, *at),
            None => r.tick(*at),
        };
        let case = format!("case {i}: {device} at {at}: {a:?}");
        assert_eq!(a.events.len(), *events, "{case}");
        assert_eq!(!a.changes.devices.is_empty(), *states, "{case}");
        assert_eq!(a.sync, *sync, "{case}");
    }
}

/// #43.5: 1,500 made-up ids each sending one 60 KB reading (under `max_devices` and
/// `max_payload_bytes`) left 186 MB resident and took 183 MB to start again. What is kept of a
/// device is bounded in bytes: a reading whose values would take it past `max_state_bytes`
/// is skipped, and the device keeps what it had.
#[test]
fn what_is_kept_of_a_device_is_bounded_in_bytes() {
    let limits = DevicesConfig {
        max_state_bytes: 256,
        ..Default::default()
    };
    let mut r = Registry::new(&[], &[], [], [], 0).with_limits(limits);
    let big = "x".repeat(300);
    let half = "y".repeat(150);
    let cases: &[(&str, Value, Option<OverLimit>)] = &[
        ("b1", json!({"t": 21.5}), None),
        ("b1", json!({"blob": big}), Some(OverLimit::MaxStateBytes)),
        ("b1", json!({"a": half}), None),
        // With `a` kept, another 150 bytes is past 256.
        ("b1", json!({"b": half}), Some(OverLimit::MaxStateBytes)),
        // Replacing `a` with a value as large is not growth.
        ("b1", json!({"a": "z".repeat(150)}), None),
        (
            "new-1",
            json!({"blob": big}),
            Some(OverLimit::MaxStateBytes),
        ),
    ];
    for (i, (device, fields, refused)) in cases.iter().enumerate() {
        let a = r.apply(device, &reading(fields.clone()), 1_000 + i as Millis);
        assert_eq!(a.refused, *refused, "case {i}");
    }
    let kept = &r.device("b1").unwrap().values;
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(r.device("new-1").is_none_or(|d| d.values.is_empty()));
}

/// Issue 16 #6: the registry's bounds, as a table of messages and what each does.
#[test]
fn the_registry_is_bounded_in_devices_and_field_names() {
    let limits = DevicesConfig {
        max_devices: 2,
        max_fields: 3,
        ..Default::default()
    };
    let mut r = Registry::new(&[], &[], [], [], 0).with_limits(limits);
    let cases: &[(&str, Value, Option<OverLimit>)] = &[
        ("a1", json!({"x": 1}), None),
        ("a2", json!({"x": 1}), None),
        ("a3", json!({"x": 1}), Some(OverLimit::MaxDevices)),
        ("a1", json!({"x": 2, "y": 1, "z": 1}), None),
        ("a1", json!({"w": 1}), Some(OverLimit::MaxFields)),
        ("a1", json!({"x": 3}), None),
        (
            "a2",
            json!({"p": 1, "q": 1, "r": 1}),
            Some(OverLimit::MaxFields),
        ),
    ];
    for (i, (device, fields, refused)) in cases.iter().enumerate() {
        let a = r.apply(device, &reading(fields.clone()), 1_000 + i as Millis);
        assert_eq!(a.refused, *refused, "case {i}");
        if refused.is_some() {
            assert!(
                a.events.is_empty() && a.changes.devices.is_empty(),
                "case {i}: {a:?}"
            );
        } else {
            assert!(!a.events.is_empty(), "case {i}");
        }
    }
    assert_eq!(r.len(), 2);
    assert!(r.device("a3").is_none());
    // A status from a known device still counts; from a new one it is refused too.
    assert_eq!(r.apply("a2", &OFFLINE, 2_000).refused, None);
    assert_eq!(
        r.apply("a9", &ONLINE, 2_000).refused,
        Some(OverLimit::MaxDevices)
    );
}

/// Issue 16 #7: state written while the clock was a day ahead, then a restart with the
/// right clock. A remembered time from the future is taken as now, so a change is reported
/// at once (with `min_interval = 0` it used to wait a day), and timers run from now.
#[test]
fn times_remembered_from_the_future_are_taken_as_now() {
    let day = 86_400_000;
    let c = class("occ", "occ-*");
    let mut ahead = Registry::new(std::slice::from_ref(&c), &[], [], [], day);
    let saved = ahead
        .apply("occ-1", &reading(json!({"presence": true})), day + 1_000)
        .changes
        .devices;
    let mut r = Registry::new(std::slice::from_ref(&c), &[], saved, [], 5_000);
    let a = r.apply("occ-1", &reading(json!({"presence": false})), 6_000);
    assert_eq!(kinds(&a), ["sensor.reading.updated"]);
    assert!(r.device("occ-1").unwrap().last_seen <= 6_000);
    // lost after 3 heartbeats of 10 s from the last message, not a day later
    assert!(r.tick(35_999).events.is_empty());
    assert_eq!(kinds(&r.tick(36_000)), ["device.lost_communication"]);
}

/// Issue 16 #7: a step while running moves every remembered time with the clock: a held
/// report still waits out exactly `min_interval`, an offline its debounce, a hold its time.
#[test]
fn a_clock_step_keeps_every_duration_and_moves_every_time() {
    let mut c = class("occ", "occ-*");
    c.min_interval = Duration::from_secs(10);
    c.debounce = Duration::from_secs(5);
    c.heartbeat = None;
    let ws = [ws("room", &["occ-1"], None)];
    let mut r = Registry::new(std::slice::from_ref(&c), &ws, [], [], 0);
    r.apply("occ-1", &reading(json!({"presence": true})), 1_000);
    r.apply("occ-1", &reading(json!({"presence": false})), 2_000); // held until 11 s
    r.apply("occ-2", &OFFLINE, 2_000);
    r.apply("occ-3", &ONLINE, 2_500);
    r.apply("occ-3", &OFFLINE, 3_000); // offline at 8 s
    for step in [3_600_000i64, -500] {
        let mut r2 = Registry::new(
            std::slice::from_ref(&c),
            &ws,
            r.devices.iter().map(|(k, d)| (k.clone(), d.state.clone())),
            r.workspaces
                .iter()
                .map(|w| (w.config.id.clone(), w.state.clone())),
            3_000,
        );
        let shifted = r2.shift(step);
        assert_eq!(shifted.changes.devices.len(), 3);
        assert!(!shifted.sync, "moved times are written lazily");
        let at = |t: i64| (t + step) as Millis;
        assert_eq!(r2.device("occ-1").unwrap().last_report, at(1_000));
        assert!(r2.tick(at(7_999)).events.is_empty(), "step {step}");
        assert_eq!(
            kinds(&r2.tick(at(8_000))),
            ["device.offline"],
            "step {step}"
        );
        assert!(r2.tick(at(10_999)).events.is_empty(), "step {step}");
        let a = r2.tick(at(11_000));
        assert_eq!(kinds(&a)[0], "sensor.reading.updated", "step {step}");
        // the workspace's hold (60 s) runs from when presence ended (2 s), moved too
        assert!(r2.tick(at(61_999)).events.is_empty(), "step {step}");
        assert_eq!(
            statuses(&r2.tick(at(62_000))),
            [(json!("Free"), json!("Occupied"))]
        );
    }
}

#[test]
fn restart_neither_reannounces_nor_forgets_silence() {
    let mut before = Registry::new(&[class("occ", "occ-*")], &[], [], [], 0);
    let mut saved: HashMap<String, DeviceState> = HashMap::new();
    for id in ["occ-1", "occ-2"] {
        for (k, s) in before
            .apply(id, &reading(json!({"presence": true})), 1_000)
            .changes
            .devices
        {
            saved.insert(k, s);
        }
    }
    // restarted at t=100 s: occ-1 still talks, occ-2 went silent while we were down
    let mut r = Registry::new(&[class("occ", "occ-*")], &[], saved, [], 100_000);
    assert!(
        r.apply("occ-1", &ONLINE, 100_500).events.is_empty(),
        "no online burst"
    );
    assert!(r
        .apply("occ-1", &reading(json!({"presence": true})), 101_000)
        .events
        .is_empty());
    assert!(
        r.tick(109_999).events.is_empty(),
        "one heartbeat of grace after the start"
    );
    let a = r.tick(110_000);
    assert_eq!(kinds(&a), ["device.lost_communication"]);
    assert_eq!(a.events[0].data["device_id"], "occ-2");
}

/// Issue 20: `device.app_updated` when the class's version field changes, old → new; the
/// first version is remembered, not reported; a restart neither repeats nor misses one.
#[test]
fn a_new_firmware_version_is_told_once_across_restarts() {
    let mut c = class("occ", "occ-*");
    c.version_field = "firmware".into();
    let mut r = Registry::new(std::slice::from_ref(&c), &[], [], [], 0);
    let a = r.apply(
        "occ-1",
        &reading(json!({"presence": true, "firmware": "1.0"})),
        1_000,
    );
    assert_eq!(
        kinds(&a),
        [
            "device.registered",
            "device.online",
            "sensor.reading.updated"
        ]
    );
    let saved = a.changes.devices;
    // restarted; meanwhile the device was updated
    let mut r = Registry::new(std::slice::from_ref(&c), &[], saved, [], 5_000);
    let a = r.apply(
        "occ-1",
        &reading(json!({"presence": true, "firmware": "1.1"})),
        6_000,
    );
    let updates: Vec<&Event> = a
        .events
        .iter()
        .filter(|e| e.kind == EventType::DeviceAppUpdated)
        .collect();
    assert_eq!(updates.len(), 1, "{:?}", kinds(&a));
    assert_eq!(
        updates[0].data,
        json!({"device_id": "occ-1", "field": "firmware", "previous": "1.0", "version": "1.1"})
    );
    let saved = a.changes.devices;
    let mut r = Registry::new(std::slice::from_ref(&c), &[], saved, [], 7_000);
    let a = r.apply(
        "occ-1",
        &reading(json!({"presence": false, "firmware": "1.1"})),
        8_000,
    );
    assert!(!kinds(&a).contains(&"device.app_updated"), "not again");
}

#[test]
fn held_reports_survive_a_restart() {
    let mut c = class("occ", "occ-*");
    c.min_interval = Duration::from_secs(10);
    let mut r = Registry::new(std::slice::from_ref(&c), &[], [], [], 0);
    r.apply("occ-1", &reading(json!({"t": 1})), 1_000);
    let a = r.apply("occ-1", &reading(json!({"t": 2})), 2_000);
    assert!(a.events.is_empty());
    let saved = a.changes.devices; // persisted with the message's ack
    let mut r = Registry::new(std::slice::from_ref(&c), &[], saved, [], 5_000);
    let a = r.tick(11_000);
    assert_eq!(kinds(&a), ["sensor.reading.updated"]);
    assert_eq!(a.events[0].data["fields"], json!({"t": 2}));
}

#[test]
fn workspace_follows_sensors_display_hold_and_health() {
    let classes = [class("occ", "occ-*"), class("disp", "disp-*")];
    let mut r = Registry::new(
        &classes,
        &[ws("room", &["occ-a", "occ-b"], Some("disp-1"))],
        [],
        [],
        0,
    );
    // one sensor absent, the other never heard: Free (only usable sensors vote)
    assert_eq!(
        statuses(&r.apply("occ-a", &reading(json!({"presence": false})), 1_000)),
        [(json!("Free"), Value::Null)]
    );
    // the display reports a booking: Booked
    let a = r.apply("disp-1", &reading(json!({"booked": true})), 2_000);
    assert_eq!(statuses(&a), [(json!("Booked"), json!("Free"))]);
    assert_eq!(a.events.last().unwrap().data["device_id"], "disp-1");
    // presence anywhere: Occupied at once
    assert_eq!(
        statuses(&r.apply("occ-b", &reading(json!({"presence": "occupied"})), 3_000)),
        [(json!("Occupied"), json!("Booked"))]
    );
    // presence ends: held for 60 s
    assert!(statuses(&r.apply("occ-b", &reading(json!({"presence": false})), 4_000)).is_empty());
    assert_eq!(
        r.next_deadline(),
        Some(31_000),
        "occ-a's lost deadline comes first"
    );
    for t in [30_000, 55_000] {
        r.apply("occ-a", &reading(json!({"presence": false})), t);
        r.apply("occ-b", &reading(json!({"presence": false})), t);
        r.apply("disp-1", &reading(json!({"booked": true})), t);
    }
    assert!(statuses(&r.tick(63_999)).is_empty());
    let a = r.tick(64_000);
    assert_eq!(statuses(&a), [(json!("Booked"), json!("Occupied"))]);
    assert_eq!(
        a.events[0].data["device_id"],
        Value::Null,
        "the hold ended, no device"
    );
    assert_eq!(r.workspace_status("room"), Some(WorkspaceStatus::Booked));
    // everything goes silent. The display first (timers of one instant run in id order):
    // no booking without it, so Free; then both sensors: Unknown.
    let a = r.tick(90_000);
    assert_eq!(
        kinds(&a),
        [
            "device.lost_communication",
            "workspace.status.updated",
            "device.lost_communication",
            "device.lost_communication",
            "workspace.status.updated"
        ]
    );
    assert_eq!(
        statuses(&a),
        [
            (json!("Free"), json!("Booked")),
            (json!("Unknown"), json!("Free"))
        ]
    );
    // a sensor comes back absent: Free (the display is lost, so no booking)
    let a = r.apply("occ-a", &reading(json!({"presence": false})), 95_000);
    assert_eq!(statuses(&a), [(json!("Free"), json!("Unknown"))]);
    assert_eq!(a.changes.workspaces.last().unwrap().0, "room");
}

#[test]
fn reconfigure_reclassifies_devices_and_binds_new_workspaces() {
    let mut r = Registry::new(&[], &[], [], [], 0);
    r.apply("occ-1", &reading(json!({"presence": true})), 1_000);
    assert_eq!(r.class_name("occ-1"), "default");
    let rules = Rules {
        classes: vec![class("occ", "occ-*")],
        workspaces: vec![ws("desk", &["occ-1"], None)],
        groups: Vec::new(),
    };
    let a = r.reconfigure(&rules, 2_000);
    assert_eq!(r.class_name("occ-1"), "occ");
    assert_eq!(statuses(&a), [(json!("Occupied"), Value::Null)]);
    assert_eq!(
        r.next_deadline(),
        Some(31_000),
        "the new class's heartbeat applies"
    );
    // the new class has no debounce: offline at once
    assert_eq!(
        kinds(&r.apply("occ-1", &OFFLINE, 3_000)),
        ["device.offline", "workspace.status.updated"]
    );
}

#[test]
fn workspace_state_survives_a_restart_mid_hold() {
    let w = [ws("desk", &["occ-a"], None)];
    let mut r = Registry::new(&[], &w, [], [], 0);
    r.apply("occ-a", &reading(json!({"presence": true})), 1_000);
    let a = r.apply("occ-a", &reading(json!({"presence": false})), 2_000);
    let (devices, workspaces) = (a.changes.devices, a.changes.workspaces);
    assert_eq!(workspaces[0].1.vacated_at, Some(2_000));
    let mut r = Registry::new(&[], &w, devices, workspaces, 10_000);
    assert!(r
        .apply("occ-a", &reading(json!({"presence": false})), 20_000)
        .events
        .is_empty());
    assert_eq!(
        statuses(&r.tick(62_000)),
        [(json!("Free"), json!("Occupied"))]
    );
}

/// Issue 20: `device.registered` the first time a device is ever seen, with its class and the
/// identity fields its class names — not for a device already in the store (an older release
/// wrote it), not for one refused past the registry's bounds, and again after it was
/// forgotten (`forget_after` of silence, or by an operator): `device.unregistered`, its state
/// deleted.
#[test]
fn devices_are_registered_once_and_forgotten_after_silence_or_by_an_operator() {
    let mut c = class("occ", "occ-*");
    c.heartbeat = None;
    c.identity_fields = vec!["model".into(), "firmware".into()];
    c.forget_after = Some(Duration::from_secs(3600));
    let mut r =
        Registry::new(std::slice::from_ref(&c), &[], [], [], 0).with_limits(DevicesConfig {
            max_devices: 2,
            ..Default::default()
        });
    let a = r.apply(
        "occ-1",
        &reading(json!({"presence": true, "model": "OCC-200", "firmware": "1.2"})),
        1_000,
    );
    assert_eq!(
        kinds(&a),
        [
            "device.registered",
            "device.online",
            "sensor.reading.updated"
        ]
    );
    assert_eq!(
        a.events[0].data,
        json!({"device_id": "occ-1", "class": "occ", "identity": {"model": "OCC-200", "firmware": "1.2"}})
    );
    assert!(a.sync, "the registration is durable before the ack");
    // A status first: no identity to tell.
    let a = r.apply("occ-2", &ONLINE, 1_500);
    assert_eq!(kinds(&a), ["device.registered", "device.online"]);
    assert_eq!(a.events[0].data["identity"], json!({}));
    // Past the bound: refused, no event.
    let a = r.apply("occ-3", &ONLINE, 1_600);
    assert!(a.refused.is_some() && a.events.is_empty());
    // Known devices are not registered again, nor after a restart.
    assert!(
        !kinds(&r.apply("occ-1", &reading(json!({"presence": false})), 2_000))
            .contains(&"device.registered")
    );
    let saved: Vec<(String, DeviceState)> = ["occ-1", "occ-2"]
        .iter()
        .map(|id| (id.to_string(), r.device(id).unwrap().clone()))
        .collect();
    let mut r = Registry::new(std::slice::from_ref(&c), &[], saved, [], 10_000);
    let a = r.apply("occ-1", &reading(json!({"presence": true})), 11_000);
    assert!(!kinds(&a).contains(&"device.registered"), "{:?}", kinds(&a));
    // An hour of silence forgets occ-2 (last heard at 1.5 s; occ-1 spoke at 11 s).
    assert!(r.tick(3_601_499).events.is_empty());
    let a = r.tick(3_601_500);
    assert_eq!(kinds(&a), ["device.unregistered"]);
    assert_eq!(
        a.events[0].data,
        json!({"device_id": "occ-2", "class": "occ", "last_seen": "1970-01-01T00:00:01.500Z", "reason": "forget_after"})
    );
    assert_eq!(a.changes.forgotten, ["occ-2"]);
    assert!(r.device("occ-2").is_none());
    // Heard from again: registered anew.
    let a = r.apply("occ-2", &reading(json!({"presence": false})), 3_605_000);
    assert_eq!(kinds(&a)[0], "device.registered");
    // Forgotten by an operator; an unknown device is not.
    assert!(r.forget("nope", 3_606_000).is_none());
    let a = r.forget("occ-1", 3_606_000).unwrap();
    assert_eq!(kinds(&a), ["device.unregistered"]);
    assert_eq!(a.events[0].data["reason"], "operator");
    assert_eq!(a.changes.forgotten, ["occ-1"]);
    assert_eq!(r.len(), 1);
}

/// Issue 20: a forgotten sensor no longer votes on its workspace.
#[test]
fn a_forgotten_sensor_leaves_its_workspace() {
    let mut c = class("occ", "occ-*");
    c.heartbeat = None;
    let mut r = Registry::new(
        std::slice::from_ref(&c),
        &[ws("room", &["occ-1", "occ-2"], None)],
        [],
        [],
        0,
    );
    r.apply("occ-1", &reading(json!({"presence": true})), 1_000);
    r.apply("occ-2", &reading(json!({"presence": false})), 1_000);
    let a = r.forget("occ-1", 2_000).unwrap();
    assert_eq!(kinds(&a)[0], "device.unregistered");
    // occ-1 no longer says present; the workspace holds, then is free.
    let a = r.tick(2_000 + 60_000);
    assert_eq!(statuses(&a), [(json!("Free"), json!("Occupied"))]);
}

/// Issue 20: state fields (battery, tamper) are kept apart from readings: their changes are
/// `sensor.state.updated` with their own deadbands, never a reading's change, and a message of
/// state fields alone is no reading.
#[test]
fn state_fields_are_reported_apart_from_readings() {
    let mut c = class("occ", "occ-*");
    c.state_fields = vec!["battery".into(), "tamper".into()];
    c.state_deadband = [("battery".to_string(), 5.0)].into();
    let mut r = Registry::new(std::slice::from_ref(&c), &[], [], [], 0);
    let a = r.apply(
        "occ-1",
        &reading(json!({"presence": true, "battery": 90, "tamper": false})),
        1_000,
    );
    assert_eq!(
        kinds(&a),
        [
            "device.registered",
            "device.online",
            "sensor.state.updated",
            "sensor.reading.updated"
        ]
    );
    assert_eq!(
        a.events[2].data,
        json!({"device_id": "occ-1", "state": {"battery": 90, "tamper": false}, "changed": ["battery", "tamper"]})
    );
    assert_eq!(a.events[3].data["fields"], json!({"presence": true}));
    // The battery drains within its deadband: nothing.
    let a = r.apply(
        "occ-1",
        &reading(json!({"presence": true, "battery": 87})),
        2_000,
    );
    assert!(a.events.is_empty(), "{:?}", kinds(&a));
    // State alone, beyond the deadband: a state event, no reading, the reading time kept.
    let a = r.apply("occ-1", &reading(json!({"battery": 84})), 3_000);
    assert_eq!(kinds(&a), ["sensor.state.updated"]);
    assert_eq!(a.events[0].data["changed"], json!(["battery"]));
    assert_eq!(r.device("occ-1").unwrap().last_reading, 2_000);
    // Tamper: a change of its own; the reading's change is a reading.
    let a = r.apply(
        "occ-1",
        &reading(json!({"presence": false, "tamper": true})),
        4_000,
    );
    assert_eq!(
        kinds(&a),
        ["sensor.state.updated", "sensor.reading.updated"]
    );
    assert_eq!(r.device("occ-1").unwrap().condition["tamper"], json!(true));
}

/// Issue 20: out of sync once the reported configuration has differed from the desired one
/// for the grace period, in sync when it matches again; the desired value may be set for one
/// device alone (the API), and the state survives a restart.
#[test]
fn sync_is_told_after_its_grace_and_survives_a_restart() {
    let mut c = class("disp", "disp-*");
    c.heartbeat = None;
    c.sync_field = "config".into();
    c.desired = Some(json!("v12"));
    c.sync_grace = Duration::from_secs(60);
    let mut r = Registry::new(std::slice::from_ref(&c), &[], [], [], 0);
    let a = r.apply(
        "disp-1",
        &reading(json!({"config": "v11", "booked": false})),
        1_000,
    );
    assert!(!kinds(&a).iter().any(|k| k.contains("sync")));
    assert_eq!(r.next_deadline(), Some(61_000));
    let saved = vec![("disp-1".to_string(), r.device("disp-1").unwrap().clone())];
    // Restarted within the grace: the grace still runs from when it began.
    let mut r = Registry::new(std::slice::from_ref(&c), &[], saved, [], 30_000);
    let a = r.tick(61_000);
    assert_eq!(kinds(&a), ["device.out_of_sync"]);
    assert_eq!(
        a.events[0].data,
        json!({"device_id": "disp-1", "field": "config", "reported": "v11", "desired": "v12", "since": "1970-01-01T00:00:01.000Z"})
    );
    // The operator wants v11 for this one: in sync at once.
    let a = r.desire("disp-1", Some(json!("v11")), 70_000).unwrap();
    assert_eq!(kinds(&a), ["device.in_sync"]);
    assert_eq!(a.changes.devices[0].1.desired, Some(json!("v11")));
    // Cleared: the class's v12 again, differing; told after the grace.
    let a = r.desire("disp-1", None, 80_000).unwrap();
    assert!(a.events.is_empty());
    assert_eq!(kinds(&r.tick(140_000)), ["device.out_of_sync"]);
    // The device takes v12.
    let a = r.apply(
        "disp-1",
        &reading(json!({"config": "v12", "booked": false})),
        150_000,
    );
    assert_eq!(kinds(&a), ["device.in_sync", "sensor.reading.updated"]);
    assert!(r.desire("nope", None, 0).is_none());
}

fn floor(members: &[&str]) -> GroupConfig {
    GroupConfig {
        id: "floor-2".into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        workspace: None,
        presence_field: "presence".into(),
        aggregates: [("temperature".to_string(), group::Aggregate::Mean)].into(),
        state_aggregates: [("battery".to_string(), group::Aggregate::Min)].into(),
        deadband: [("temperature".to_string(), 0.5)].into(),
        min_interval: Duration::ZERO,
        stale_after: Some(Duration::from_secs(60)),
    }
}

/// Issue 20: a group of sensors reported as one: only usable members count (a member gone
/// offline leaves the occupancy), state aggregates at once, stale when every member is silent,
/// and a restart neither repeats nor forgets a report.
#[test]
fn a_group_reports_its_usable_members_as_one_across_restarts() {
    let mut c = class("occ", "occ-2*");
    c.heartbeat = None;
    c.debounce = Duration::ZERO;
    c.state_fields = vec!["battery".into()];
    let g = floor(&["occ-2*"]);
    let mut r = Registry::new(std::slice::from_ref(&c), &[], [], [], 0)
        .with_groups(std::slice::from_ref(&g), []);
    let group_events = |a: &Applied, kind: &str| -> Vec<Value> {
        a.events
            .iter()
            .filter(|e| e.kind.as_str() == kind)
            .map(|e| e.data.clone())
            .collect()
    };
    let a = r.apply(
        "occ-2a",
        &reading(json!({"presence": true, "temperature": 21.0, "battery": 90})),
        1_000,
    );
    let reading_of = group_events(&a, "sensor.group.reading.updated");
    assert_eq!(reading_of.len(), 1, "{:?}", kinds(&a));
    assert_eq!(
        reading_of[0],
        json!({"group_id": "floor-2", "members": 1, "usable": 1, "present": 1, "occupancy": 1.0, "temperature": 21.0, "changed": ["members", "occupancy", "present", "temperature", "usable"]})
    );
    assert_eq!(
        a.events
            .iter()
            .find(|e| e.kind.as_str() == "sensor.group.reading.updated")
            .unwrap()
            .lane,
        "group:floor-2"
    );
    assert_eq!(
        group_events(&a, "sensor.group.state.updated")[0]["battery"],
        json!(90.0)
    );
    assert!(
        a.changes.groups.len() == 1 && a.sync,
        "persisted with the events"
    );
    // A second member, absent: half the floor is occupied.
    let a = r.apply(
        "occ-2b",
        &reading(json!({"presence": false, "temperature": 22.0, "battery": 40})),
        2_000,
    );
    let g1 = &group_events(&a, "sensor.group.reading.updated")[0];
    assert_eq!(
        (g1["occupancy"].clone(), g1["temperature"].clone()),
        (json!(0.5), json!(21.5))
    );
    assert_eq!(
        group_events(&a, "sensor.group.state.updated")[0]["battery"],
        json!(40.0)
    );
    // The occupied one goes offline: only occ-2b is usable.
    let a = r.apply("occ-2a", &OFFLINE, 3_000);
    let g2 = &group_events(&a, "sensor.group.reading.updated")[0];
    assert_eq!(
        (g2["usable"].clone(), g2["occupancy"].clone()),
        (json!(1), json!(0.0))
    );
    // Within the deadband: nothing.
    let a = r.apply(
        "occ-2b",
        &reading(json!({"presence": false, "temperature": 22.3})),
        4_000,
    );
    assert!(group_events(&a, "sensor.group.reading.updated").is_empty());
    // Restarted: nothing repeated; the silence is still measured from the last reading.
    let devices: Vec<(String, DeviceState)> = ["occ-2a", "occ-2b"]
        .iter()
        .map(|id| (id.to_string(), r.device(id).unwrap().clone()))
        .collect();
    let groups: Vec<(String, group::GroupState)> = r
        .groups
        .iter()
        .map(|g| (g.config.id.clone(), g.state.clone()))
        .collect();
    let mut r = Registry::new(std::slice::from_ref(&c), &[], devices, [], 10_000)
        .with_groups(std::slice::from_ref(&g), groups);
    let a = r.apply(
        "occ-2b",
        &reading(json!({"presence": false, "temperature": 22.3})),
        11_000,
    );
    assert!(
        group_events(&a, "sensor.group.reading.updated").is_empty(),
        "{:?}",
        kinds(&a)
    );
    let a = r.tick(11_000 + 60_000);
    assert_eq!(
        group_events(&a, "sensor.group.reading.stale"),
        [json!({"group_id": "floor-2", "last_reading": "1970-01-01T00:00:11.000Z"})]
    );
    // The next reading is reported whatever it says.
    let a = r.apply(
        "occ-2b",
        &reading(json!({"presence": false, "temperature": 22.3})),
        80_000,
    );
    assert_eq!(group_events(&a, "sensor.group.reading.updated").len(), 1);
}

/// Issue 20: a group may be a workspace's sensors; a forgotten member leaves it.
#[test]
fn a_workspace_can_be_a_group_and_a_forgotten_member_leaves_it() {
    let mut c = class("occ", "occ-*");
    c.heartbeat = None;
    let mut g = floor(&[]);
    g.id = "room-g".into();
    g.workspace = Some("room".into());
    let mut r = Registry::new(
        std::slice::from_ref(&c),
        &[ws("room", &["occ-1", "occ-2"], None)],
        [],
        [],
        0,
    )
    .with_groups(std::slice::from_ref(&g), []);
    r.apply("occ-1", &reading(json!({"presence": true})), 1_000);
    r.apply("occ-2", &reading(json!({"presence": true})), 1_000);
    r.apply("occ-3", &reading(json!({"presence": true})), 1_000); // not the room's
    let a = r.forget("occ-1", 2_000).unwrap();
    let e = a
        .events
        .iter()
        .find(|e| e.kind.as_str() == "sensor.group.reading.updated")
        .unwrap();
    assert_eq!(
        (e.data["members"].clone(), e.data["present"].clone()),
        (json!(1), json!(1))
    );
}

/// Issue 20: a reload that moves a device to another class or group keeps its history: its
/// state (nothing registered again), and the groups that stay keep what they last reported.
#[test]
fn a_reload_that_moves_a_device_keeps_its_history() {
    let mut c = class("occ", "occ-*");
    c.heartbeat = None;
    let g = floor(&["occ-1", "occ-2"]);
    let mut r = Registry::new(std::slice::from_ref(&c), &[], [], [], 0)
        .with_groups(std::slice::from_ref(&g), []);
    r.apply(
        "occ-1",
        &reading(json!({"presence": true, "temperature": 21.0})),
        1_000,
    );
    r.apply(
        "occ-2",
        &reading(json!({"presence": false, "temperature": 21.0})),
        1_000,
    );
    let mut other = class("desk", "occ-2");
    other.heartbeat = None;
    let mut east = floor(&["occ-2"]);
    east.id = "east".into();
    let rules = Rules {
        classes: vec![other, c],
        workspaces: Vec::new(),
        groups: vec![floor(&["occ-1"]), east],
    };
    let a = r.reconfigure(&rules, 2_000);
    assert!(!kinds(&a).contains(&"device.registered"), "{:?}", kinds(&a));
    assert_eq!(r.class_name("occ-2"), "desk");
    assert_eq!(r.device("occ-2").unwrap().values["presence"], json!(false));
    // floor-2 kept its last report: the next reading that changes nothing of it sends nothing.
    let a = r.apply(
        "occ-1",
        &reading(json!({"presence": true, "temperature": 21.1})),
        3_000,
    );
    let floor_reports: Vec<&Event> = a
        .events
        .iter()
        .filter(|e| e.lane == "group:floor-2")
        .collect();
    assert!(
        floor_reports.iter().all(|e| e.data["members"] == 1),
        "only a membership change is news: {floor_reports:?}"
    );
}

fn act(id: &str, device: &str, name: &str) -> ActionRequest {
    ActionRequest {
        id: id.into(),
        device: device.into(),
        name: name.into(),
        params: json!({"text": "hi"}),
        deadline: None,
    }
}

fn result(id: &str, succeeded: bool) -> InboundBody {
    InboundBody::ActionResult {
        id: id.into(),
        succeeded,
        reason: (!succeeded).then(|| "no display".to_string()),
        result: None,
    }
}

/// Issue 19: actions one at a time per device, in order, sent only to an online device, once
/// per answer; a late or second answer changes nothing; a timeout, an expiry, a rejection and
/// the bounds; what a restart finds sent and unanswered is sent again.
#[test]
fn actions_go_one_at_a_time_to_online_devices_and_end_once() {
    let mut c = class("disp", "disp-*");
    c.heartbeat = None;
    c.debounce = Duration::ZERO;
    c.actions = vec!["show_message".into()];
    c.action_timeout = Duration::from_secs(30);
    let limits = DevicesConfig {
        max_actions_per_device: 2,
        action_deadline: Duration::from_secs(600),
        ..Default::default()
    };
    let mut r = Registry::new(std::slice::from_ref(&c), &[], [], [], 0).with_limits(limits);
    let completed = |a: &Applied| -> Vec<(String, String)> {
        a.events
            .iter()
            .filter(|e| e.kind.as_str() == "device.action_completed")
            .map(|e| {
                (
                    e.data["action_id"].as_str().unwrap().to_string(),
                    e.data["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // Unknown device and an action its class does not allow: rejected and told.
    match r.submit(act("a0", "disp-9", "show_message"), 1_000) {
        Submit::Rejected(a, ActionRefusal::UnknownDevice) => {
            assert_eq!(completed(&a), [("a0".into(), "rejected".into())])
        }
        other => panic!("{other:?}"),
    }
    r.apply("disp-1", &ONLINE, 1_000);
    assert!(matches!(
        r.submit(act("a00", "disp-1", "reboot"), 1_000),
        Submit::Rejected(_, ActionRefusal::NotAllowed)
    ));
    // Online: the first goes out at once, the second waits behind it; a third is too many.
    let Submit::Accepted(a) = r.submit(act("a1", "disp-1", "show_message"), 2_000) else {
        panic!()
    };
    assert_eq!(a.outgoing.len(), 1);
    assert_eq!(a.outgoing[0].topic, "devices/disp-1/actions");
    let sent: Value = a.outgoing[0].message.clone();
    assert_eq!(
        (sent["id"].clone(), sent["name"].clone()),
        (json!("a1"), json!("show_message"))
    );
    assert!(
        a.sync && a.changes.actions.iter().any(|x| x.id == "a1"),
        "sent is durable before it goes"
    );
    let Submit::Accepted(a) = r.submit(act("a2", "disp-1", "show_message"), 2_100) else {
        panic!()
    };
    assert!(a.outgoing.is_empty(), "one at a time");
    assert!(matches!(
        r.submit(act("a3", "disp-1", "show_message"), 2_200),
        Submit::Refused(ActionRefusal::TooMany)
    ));
    // The same id again: known, nothing done again.
    assert!(matches!(
        r.submit(act("a1", "disp-1", "show_message"), 2_300),
        Submit::Known(_)
    ));
    // The answer ends a1 and sends a2; a second answer to a1 changes nothing.
    let a = r.apply("disp-1", &result("a1", true), 3_000);
    assert_eq!(completed(&a), [("a1".into(), "succeeded".into())]);
    assert_eq!(a.outgoing.len(), 1);
    let a = r.apply("disp-1", &result("a1", false), 3_100);
    assert!(completed(&a).is_empty() && a.outgoing.is_empty());
    // a2 is never answered: timed out after 30 s.
    let a = r.tick(3_000 + 30_000);
    assert_eq!(completed(&a), [("a2".into(), "timed_out".into())]);
    // Offline: a4 waits; its deadline passes: expired.
    r.apply("disp-1", &OFFLINE, 40_000);
    r.tick(40_000);
    let Submit::Accepted(a) = r.submit(act("a4", "disp-1", "show_message"), 41_000) else {
        panic!()
    };
    assert!(a.outgoing.is_empty(), "the device is offline");
    let a = r.tick(41_000 + 600_000);
    assert_eq!(completed(&a), [("a4".into(), "expired".into())]);
    // a5 waits while offline, and goes when the device is back.
    let Submit::Accepted(_) = r.submit(act("a5", "disp-1", "show_message"), 700_000) else {
        panic!()
    };
    let a = r.apply("disp-1", &ONLINE, 701_000);
    assert_eq!(a.outgoing.len(), 1);
    // Restarted with a5 sent and unanswered: it is sent again.
    let devices = vec![("disp-1".to_string(), r.device("disp-1").unwrap().clone())];
    let actions: Vec<action::Action> = r.actions.values().cloned().collect();
    let mut r = Registry::new(std::slice::from_ref(&c), &[], devices, [], 800_000)
        .with_limits(limits_again())
        .with_actions(actions);
    let a = r.tick(800_000);
    assert_eq!(a.outgoing.len(), 1, "sent again after the restart");
    let a = r.apply("disp-1", &result("a5", true), 800_500);
    assert_eq!(completed(&a), [("a5".into(), "succeeded".into())]);
    assert_eq!(a.ignored_answer, None);
    // A second answer, and an answer to nothing this device was asked: no event, counted.
    let a = r.apply("disp-1", &result("a5", true), 800_600);
    assert!(completed(&a).is_empty());
    assert_eq!(a.ignored_answer, Some(IgnoredAnswer::Late));
    let a = r.apply("disp-1", &result("never-asked", false), 800_700);
    assert_eq!(a.ignored_answer, Some(IgnoredAnswer::Unknown));
    // Done actions are remembered until their deadlines, then forgotten.
    assert!(r.action("a5").is_some());
    let a = r.tick(700_000 + 600_000);
    assert!(
        a.changes.forgotten_actions.contains(&"a5".to_string()),
        "{:?}",
        a.changes.forgotten_actions
    );
    assert!(r.action("a5").is_none());
}

fn limits_again() -> DevicesConfig {
    DevicesConfig {
        max_actions_per_device: 2,
        action_deadline: Duration::from_secs(600),
        ..Default::default()
    }
}

/// Issue 19: done actions are remembered at most ten times `max_actions` in all; a flood of
/// rejected submissions forgets the oldest early instead of growing without bound.
#[test]
fn remembered_actions_are_bounded() {
    let limits = DevicesConfig {
        max_actions: 3,
        ..Default::default()
    };
    let mut r = Registry::new(&[], &[], [], [], 0).with_limits(limits);
    let mut forgotten = Vec::new();
    for i in 0..100 {
        match r.submit(act(&format!("x{i}"), "nobody", "identify"), 1_000 + i) {
            Submit::Rejected(a, ActionRefusal::UnknownDevice) => {
                forgotten.extend(a.changes.forgotten_actions)
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(r.actions.len(), 30, "ten times max_actions");
    assert_eq!(forgotten.len(), 70);
    assert_eq!(forgotten[0], "x0", "the oldest first");
    assert!(r.action("x99").is_some() && r.action("x69").is_none());
}

fn booking(id: &str, workspace: &str, start: Millis, end: Millis) -> booking::Booking {
    booking::Booking {
        id: id.into(),
        workspace: workspace.into(),
        start,
        end,
        details: json!({"title": "Standup"}),
        ended: None,
    }
}

#[test]
fn upstream_bookings_book_a_room_from_start_to_end_presence_wins_and_they_survive_a_restart() {
    let mut disp = class("disp", "disp-*");
    disp.actions = vec!["show_booking".into(), "clear_booking".into()];
    let classes = [class("occ", "occ-*"), disp];
    let rooms = [
        ws("room", &["occ-a"], Some("disp-1")),
        ws("desk", &["occ-d"], None),
    ];
    let mut r = Registry::new(&classes, &rooms, [], [], 0);
    r.apply("disp-1", &ONLINE, 500);
    assert_eq!(
        statuses(&r.apply("occ-a", &reading(json!({"presence": false})), 1_000)),
        [(json!("Free"), Value::Null)]
    );
    r.apply("occ-d", &reading(json!({"presence": false})), 1_000);
    assert!(r
        .book(booking("bk", "nowhere", 10_000, 20_000), 2_000)
        .is_none());
    // The early notice (T-15) books nothing yet, and goes to the display as an action.
    let a = r
        .book(booking("bk", "room", 10_000, 20_000), 2_000)
        .unwrap()
        .unwrap();
    assert!(statuses(&a).is_empty(), "not booked before start");
    assert_eq!(a.changes.bookings.len(), 1);
    assert!(a.sync);
    assert_eq!(a.outgoing.len(), 1, "shown on the display");
    let shown: Value = a.outgoing[0].message.clone();
    assert_eq!(shown["name"], "show_booking");
    assert_eq!(shown["params"]["booking_id"], "bk");
    assert_eq!(shown["params"]["details"]["title"], "Standup");
    // The T-0 notice, the same booking: nothing new, not shown twice.
    let a = r
        .book(booking("bk", "room", 10_000, 20_000), 9_000)
        .unwrap()
        .unwrap();
    assert!(a.is_empty() && a.outgoing.is_empty());
    // A desk without a display is booked too; nothing is sent.
    let a = r
        .book(booking("bk-d", "desk", 5_000, 100_000), 3_000)
        .unwrap()
        .unwrap();
    assert!(a.outgoing.is_empty());
    let a = r.tick(5_000);
    assert_eq!(statuses(&a), [(json!("Booked"), json!("Free"))]);
    assert_eq!(r.workspace_status("desk"), Some(WorkspaceStatus::Booked));
    assert_eq!(r.next_deadline().map(|t| t <= 10_000), Some(true));
    let a = r.tick(10_000);
    assert_eq!(
        statuses(&a),
        [(json!("Booked"), json!("Free"))],
        "booked at start"
    );
    // Presence wins, and the hold ends in Booked while the booking lasts.
    let a = r.apply("occ-a", &reading(json!({"presence": true})), 11_000);
    assert_eq!(statuses(&a), [(json!("Occupied"), json!("Booked"))]);
    r.apply("occ-a", &reading(json!({"presence": false})), 12_000);
    let a = r.tick(72_000);
    assert!(
        statuses(&a).contains(&(json!("Free"), json!("Occupied"))),
        "the room's booking ended at 20 s: {:?}",
        statuses(&a)
    );
    assert!(
        a.changes
            .bookings
            .iter()
            .any(|(id, b)| id == "bk" && b.as_ref().is_some_and(|b| b.ended == Some(72_000))),
        "ended when over: {:?}",
        a.changes.bookings
    );
    // A restart finds the desk's booking and keeps it until its end.
    let kept: Vec<_> = r.bookings().cloned().collect();
    assert_eq!(kept, vec![booking("bk-d", "desk", 5_000, 100_000)]);
    let kept: Vec<_> = kept.into_iter().chain(r.ended.values().cloned()).collect();
    let saved_ws: Vec<_> = rooms
        .iter()
        .map(|w| {
            let state = r.workspaces.iter().find(|x| x.config.id == w.id).unwrap();
            (w.id.clone(), state.state.clone())
        })
        .collect();
    let mut r = Registry::new(&classes, &rooms, [], saved_ws, 25_000).with_bookings(kept);
    r.apply("occ-d", &reading(json!({"presence": false})), 25_000);
    assert_eq!(r.workspace_status("desk"), Some(WorkspaceStatus::Booked));
    // booking.end before its end: Free at once; an unknown booking is no change.
    let a = r.unbook("bk-d", "desk", 26_000).unwrap();
    assert_eq!(statuses(&a), [(json!("Free"), json!("Booked"))]);
    let ended = booking::Booking {
        details: Value::Null,
        ended: Some(26_000),
        ..booking("bk-d", "desk", 5_000, 100_000)
    };
    assert_eq!(a.changes.bookings, vec![("bk-d".to_string(), Some(ended))]);
    assert!(r.unbook("bk-d", "desk", 26_500).unwrap().is_empty());
    assert!(r.unbook("bk-d", "nowhere", 26_500).is_none());
}

/// #43.10: `booking.end` forgot the id, so the same `booking.start` (resent, replayed within
/// the signature tolerance after a restart, pulled again by a cursor that went back) booked
/// the freed room again. An ended booking's id is remembered, across a restart, for
/// `REMEMBER_ENDED`, and at most `MAX_ENDED` of them.
#[test]
fn a_booking_ended_is_not_booked_again_by_a_replay() {
    let rooms = [ws("room", &["occ-a"], None)];
    let mut r = Registry::new(&[], &rooms, [], [], 0);
    r.apply("occ-a", &reading(json!({"presence": false})), 100);
    let start = booking("bk", "room", 1_000, 60_000);
    r.book(start.clone(), 500).unwrap().unwrap();
    r.tick(1_000);
    assert_eq!(r.workspace_status("room"), Some(WorkspaceStatus::Booked));
    let a = r.unbook("bk", "room", 2_000).unwrap();
    assert_eq!(statuses(&a), [(json!("Free"), json!("Booked"))]);
    // The same start again: no change, nothing to write.
    let a = r.book(start.clone(), 3_000).unwrap().unwrap();
    assert!(a.is_empty() && a.outgoing.is_empty(), "{a:?}");
    r.tick(3_000);
    assert_eq!(r.workspace_status("room"), Some(WorkspaceStatus::Free));
    // After a restart, from what was written.
    let stored: Vec<_> = r.ended.values().cloned().collect();
    assert_eq!(stored.len(), 1);
    let mut r = Registry::new(&[], &rooms, [], [], 4_000).with_bookings(stored.clone());
    r.apply("occ-a", &reading(json!({"presence": false})), 4_000);
    assert!(
        r.bookings().next().is_none(),
        "an ended booking is not listed"
    );
    assert!(r.book(start.clone(), 4_000).unwrap().unwrap().is_empty());
    r.tick(4_000);
    assert_eq!(r.workspace_status("room"), Some(WorkspaceStatus::Free));
    // One ended by its end is remembered too.
    let short = booking("bk-short", "room", 5_000, 6_000);
    r.book(short.clone(), 5_000).unwrap().unwrap();
    r.tick(6_000);
    assert!(r.book(short, 6_500).unwrap().unwrap().is_empty());
    // Past the window the id is forgotten (at the next end), and may be booked again.
    let later = booking::REMEMBER_ENDED + 10_000;
    r.book(booking("bk-2", "room", later, later + 1), later - 1)
        .unwrap()
        .unwrap();
    let a = r.tick(later + 1);
    assert!(
        a.changes.bookings.contains(&("bk".to_string(), None)),
        "{:?}",
        a.changes.bookings
    );
    assert!(!r.ended.contains_key("bk"));
    let again = booking("bk", "room", later + 100, later + 200);
    assert!(!r.book(again, later + 2).unwrap().unwrap().is_empty());
}

#[test]
fn ended_bookings_remembered_are_bounded() {
    let mut r = Registry::new(&[], &[ws("room", &["occ-a"], None)], [], [], 0);
    for i in 0..booking::MAX_ENDED + 10 {
        let b = booking(&format!("b{i}"), "room", 100_000, 200_000);
        r.book(b, i as Millis).unwrap().unwrap();
        r.unbook(&format!("b{i}"), "room", i as Millis).unwrap();
    }
    assert_eq!(r.ended.len(), booking::MAX_ENDED);
    assert!(!r.ended.contains_key("b0") && r.ended.contains_key("b10"));
}

#[test]
fn a_workspace_keeps_a_bounded_number_of_bookings() {
    let mut r = Registry::new(&[], &[ws("room", &["occ-a"], None)], [], [], 0);
    for i in 0..registry::MAX_BOOKINGS_PER_WORKSPACE {
        let b = booking(&format!("b{i}"), "room", 10_000, 20_000);
        assert!(r.book(b, 1_000).unwrap().is_ok());
    }
    let b = booking("one-more", "room", 10_000, 20_000);
    assert!(r.book(b, 1_000).unwrap().is_err());
    // a known one may still change
    let b = booking("b0", "room", 10_000, 25_000);
    assert!(r.book(b, 1_000).unwrap().is_ok());
}

/// Found by tests/actions.rs: the daemon takes the stored actions, then the stored bookings,
/// and taking the bookings rescheduled every timer, forgetting the dispatch of the actions
/// that were sent but not answered before the restart: they waited for ever.
#[test]
fn actions_pending_at_a_restart_are_sent_whatever_is_loaded_after_them() {
    let mut c = class("disp", "disp-*");
    c.actions = vec!["show_message".into()];
    let mut r = Registry::new(std::slice::from_ref(&c), &[], [], [], 0);
    r.apply("disp-1", &ONLINE, 1_000);
    let Submit::Accepted(a) = r.submit(act("a1", "disp-1", "show_message"), 2_000) else {
        panic!()
    };
    assert_eq!(a.outgoing.len(), 1);
    let devices = vec![("disp-1".to_string(), r.device("disp-1").unwrap().clone())];
    let actions: Vec<action::Action> = r.actions.values().cloned().collect();
    let mut r = Registry::new(std::slice::from_ref(&c), &[], devices, [], 3_000)
        .with_actions(actions)
        .with_bookings([]);
    let a = r.tick(3_000);
    assert_eq!(a.outgoing.len(), 1, "sent again after the restart");
    // A clock step reschedules everything too: a dispatch still due is kept.
    let devices = vec![("disp-1".to_string(), r.device("disp-1").unwrap().clone())];
    let actions: Vec<action::Action> = r.actions.values().cloned().collect();
    let mut r =
        Registry::new(std::slice::from_ref(&c), &[], devices, [], 4_000).with_actions(actions);
    r.shift(10_000);
    assert_eq!(r.tick(14_000).outgoing.len(), 1, "sent after the step");
}

/// A page of the registry's devices stops at its limit or before the device that would take
/// it past `PAGE_BYTES` (always one), and says whether more follow.
#[test]
fn a_page_stops_at_its_limit_or_its_size() {
    let ids: Vec<String> = (0..5).map(|i| format!("d{i}")).collect();
    let third = PAGE_BYTES / 3 - VIEW_BYTES;
    let size = |id: &String| match id.as_str() {
        "d3" => PAGE_BYTES * 2,
        "d4" => 10,
        _ => third,
    };
    let cases: [(Option<&str>, usize, &str, bool); 7] = [
        (None, 1000, "d0,d1,d2", true),
        (None, 2, "d0,d1", true),
        (Some("d1"), 1000, "d2", true),
        (Some("d2"), 1000, "d3", true),
        (Some("d3"), 1000, "d4", false),
        (Some("d4"), 1000, "", false),
        (None, 5, "d0,d1,d2", true),
    ];
    for (after, limit, want, more) in cases {
        let selection = Selection::Page {
            after: after.map(str::to_string),
            limit,
        };
        // The registry's ids come in no order.
        let (picked, more_found) = selection.pick(ids.iter().rev(), size);
        let picked: Vec<&str> = picked.into_iter().map(String::as_str).collect();
        assert_eq!(
            (picked.join(","), more_found),
            (want.to_string(), more),
            "after {after:?}, limit {limit}"
        );
    }
    let (one, more) = Selection::One("d2".into()).pick(ids.iter(), size);
    assert_eq!((one, more), (vec![&ids[2]], false));
}

/// How a bound sensor votes: (health, awaiting a presence reading since its return, its last
/// presence) → its vote. Back from offline or lost, the presence it reported before the outage
/// does not count until a new one comes.
#[test]
fn a_sensor_votes_only_what_is_current() {
    use super::workspace::Vote::*;
    let cases = [
        (Health::Online, false, Some(true), Present),
        (Health::Online, false, Some(false), Absent),
        (Health::Online, false, None, Silent),
        (Health::Unknown, false, Some(true), Present),
        (Health::Online, true, Some(true), Unavailable),
        (Health::Online, true, Some(false), Unavailable),
        (Health::Online, true, None, Unavailable),
        (Health::Offline, false, Some(true), Unavailable),
        (Health::Lost, false, Some(false), Unavailable),
    ];
    for (health, awaiting, presence, want) in cases {
        let mut state = DeviceState {
            health,
            awaiting_presence: awaiting,
            ..Default::default()
        };
        if let Some(p) = presence {
            state.values.insert("presence".into(), json!(p));
        }
        assert_eq!(
            registry::vote(Some(&state), "presence"),
            want,
            "{health:?}, awaiting {awaiting}, presence {presence:?}"
        );
    }
    assert_eq!(registry::vote(None, "presence"), Silent);
}

/// #46.4: a workspace went Unknown (its sensor offline); the sensor's birth made it Free at
/// once from the `presence=false` it reported before the outage. It stays Unknown until the
/// sensor reports presence again; a birth that carries presence counts at once.
#[test]
fn a_sensor_back_from_an_outage_votes_only_after_a_new_presence_reading() {
    let mut r = Registry::new(
        &[class("occ", "occ-*")],
        &[ws("room", &["occ-a"], None)],
        [],
        [],
        0,
    );
    let a = r.apply("occ-a", &reading(json!({"presence": false})), 1_000);
    assert_eq!(statuses(&a), [(json!("Free"), Value::Null)]);
    let a = r.apply("occ-a", &OFFLINE, 2_000);
    assert_eq!(kinds(&a), ["device.offline", "workspace.status.updated"]);
    assert_eq!(r.workspace_status("room"), Some(WorkspaceStatus::Unknown));
    // Its birth: online, but the room's status waits for a presence reading.
    let a = r.apply("occ-a", &ONLINE, 3_000);
    assert_eq!(kinds(&a), ["device.online"]);
    assert_eq!(r.workspace_status("room"), Some(WorkspaceStatus::Unknown));
    // A reading without presence is no evidence either.
    let a = r.apply("occ-a", &reading(json!({"temperature": 21})), 3_500);
    assert!(statuses(&a).is_empty());
    // Presence again: it votes.
    let a = r.apply("occ-a", &reading(json!({"presence": false})), 4_000);
    assert_eq!(statuses(&a), [(json!("Free"), json!("Unknown"))]);
    // Offline again; back with a reading that carries presence: counted at once.
    r.apply("occ-a", &OFFLINE, 5_000);
    assert_eq!(r.workspace_status("room"), Some(WorkspaceStatus::Unknown));
    let a = r.apply("occ-a", &reading(json!({"presence": true})), 6_000);
    assert_eq!(kinds(&a)[0], "device.online");
    assert_eq!(r.workspace_status("room"), Some(WorkspaceStatus::Occupied));
}

/// #46.3: Zigbee2MQTT publishes availability retained, so every start meets
/// `{"state":"offline"}` for devices never heard before: `device.registered` came without
/// `device.offline` while the API showed the device offline. It is told once.
#[test]
fn a_device_first_heard_offline_is_reported_offline_once() {
    let mut r = Registry::new(&[class("occ", "occ-*")], &[], [], [], 0);
    let a = r.apply_retained("occ-1", &OFFLINE, 1_000);
    assert_eq!(kinds(&a), ["device.registered", "device.offline"]);
    assert_eq!(r.device("occ-1").unwrap().health, Health::Offline);
    assert!(r.apply_retained("occ-1", &OFFLINE, 2_000).events.is_empty());
    assert!(r.tick(100_000).events.is_empty());
    assert_eq!(
        kinds(&r.apply("occ-1", &ONLINE, 200_000)),
        ["device.online"]
    );
}
