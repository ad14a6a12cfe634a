//! The web console in a real browser: headless Chromium (Debian's package), driven by
//! Playwright from `tests/python/console_check.py`, against the real daemon with mosquitto,
//! firmware-sim's devices and verifying receivers, at 1366x768 and at phone width. It logs in
//! with the URL `edgehook console` prints, sees the devices appear and opens one, sends an
//! action to a display and watches it succeed, creates an endpoint with the form and sees its
//! delivery in the live log, pauses, resumes, tests and deletes it, and logs out; after each
//! step this test checks the API and the receivers, not only the page. Any dialog, page or
//! console error, or sideways scrolling fails it. A screenshot of each step is kept in
//! `target/console-screenshots/`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{device, publish, Daemon, Receiver, Rig};
use firmware_sim::DeviceClass;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_device_creates_a_webhook_and_sees_its_delivery() {
    let (_dir, broker, default, daemon) = Rig::start(
        "[[workspaces]]\nid = \"room-1\"\nsensors = [\"console-occ-1\"]\n[[device_classes]]\nname = \"displays\"\nmatch = [\"disp-*\"]\nactions = [\"show_message\"]\n",
    ).await.parts();
    let crm = Receiver::start().await;
    // The URL an operator opens: `edgehook console` prints it, the token in its fragment.
    let (code, login_url, err) = daemon.cli(&["console"], &[]);
    assert_eq!(code, 0, "{err}");
    let login_url = login_url.trim().to_string();
    assert!(login_url.contains("/#token="), "{login_url}");
    let api = common::Api::with_token(&daemon);
    let mut browser = Browser::open("console_check.py", &[&login_url, &crm.url, common::SECRET]);
    let mut occ = device(broker.port, "console-occ-1", DeviceClass::OccupancySensor).await;
    let mut disp = device(broker.port, "disp-1", DeviceClass::RoomDisplay).await;

    browser.expect("loaded", &daemon).await;
    publish(&mut occ, 2, 1.0).await;
    publish(&mut disp, 1, 1.0).await;
    browser.next("device", &daemon).await;
    browser.next("action", &daemon).await;
    // The display executed it, once, and the receiver was told it succeeded; its desired
    // value is the one set in the console.
    assert_eq!(disp.actions_executed(), 1);
    let desired = api
        .get("/v1/devices/{id}", "/v1/devices/disp-1")
        .await
        .json();
    assert_eq!(desired["desired"], "v2.1", "{desired}");
    default
        .wait_until(LONG, "the console's action told", |s| {
            s.of_type("device.action_completed")
                .iter()
                .any(|e| e["data"]["status"] == "succeeded" && e["data"]["device_id"] == "disp-1")
        })
        .await;
    browser.next("desire-cleared", &daemon).await;
    let desired = api
        .get("/v1/devices/{id}", "/v1/devices/disp-1")
        .await
        .json();
    assert_eq!(desired["desired"], serde_json::Value::Null, "{desired}");
    browser.next("forgotten", &daemon).await;
    let gone = api.get("/v1/devices/{id}", "/v1/devices/disp-1").await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    default
        .wait_until(LONG, "disp-1 unregistered", |s| {
            s.of_type("device.unregistered")
                .iter()
                .any(|e| e["data"]["device_id"] == "disp-1")
        })
        .await;
    browser.next("created", &daemon).await;
    let sent = publish(&mut occ, 1, 1.0).await;
    browser.next("delivered", &daemon).await;
    browser.next("paused", &daemon).await;
    assert_eq!(endpoint_state(&api, "console-crm").await, "paused");
    // A reading while it is paused: it waits in the endpoint's queue.
    publish(&mut occ, 1, 1.0).await;
    common::until(
        std::time::Instant::now() + LONG,
        || {
            common::http_get(daemon.metrics_port, "/v1/endpoints/console-crm")
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|v| v["pending"].as_u64())
                .is_some_and(|n| n > 0)
        },
        || "no event pending for the paused endpoint".to_string(),
    )
    .await;
    browser.next("purged", &daemon).await;
    let endpoint = api
        .get("/v1/endpoints/{name}", "/v1/endpoints/console-crm")
        .await
        .json();
    assert_eq!(endpoint["pending"], 0, "purged: {endpoint}");
    browser.next("edited", &daemon).await;
    let endpoint = api
        .get("/v1/endpoints/{name}", "/v1/endpoints/console-crm")
        .await
        .json();
    assert_eq!(endpoint["description"], "edited in the console");
    assert_eq!(endpoint["state"], "paused", "an edit keeps the pause");
    assert_eq!(
        endpoint["secrets_set"], 1,
        "the secret unchanged: {endpoint}"
    );
    browser.next("resumed", &daemon).await;
    assert_eq!(endpoint_state(&api, "console-crm").await, "active");
    browser.next("tested", &daemon).await;
    // The test event reaches the endpoint's receiver.
    crm.wait_until(LONG, "the console's test event", |s| {
        s.events
            .iter()
            .any(|e| e["data"]["device_id"] == "sample-device")
    })
    .await;
    browser.next("deleted", &daemon).await;
    let gone = api
        .get("/v1/endpoints/{name}", "/v1/endpoints/console-crm")
        .await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    browser.next("logged-out", &daemon).await;
    // Logged out, the change it tried was refused: nothing changed.
    let occ_now = api
        .get("/v1/devices/{id}", "/v1/devices/console-occ-1")
        .await
        .json();
    assert_eq!(occ_now["desired"], serde_json::Value::Null, "{occ_now}");
    assert_eq!(disp.actions_executed(), 1);
    // Logged in again by the pasted token, a change went through.
    browser.next("logged-in", &daemon).await;
    assert_eq!(endpoint_state(&api, "default").await, "paused");
    browser.next("phone", &daemon).await;
    assert_eq!(
        endpoint_state(&api, "default").await,
        "paused",
        "paused at phone width"
    );
    browser.next("phone-resumed", &daemon).await;
    assert_eq!(
        endpoint_state(&api, "default").await,
        "active",
        "resumed at phone width"
    );
    browser.finish();
    crm.wait_until(LONG, "the console's endpoint's delivery", |s| {
        s.readings_of("console-occ-1").ends_with(&sent)
    })
    .await;
    assert_eq!(crm.seen(|s| s.bad_signatures), 0);
}

/// The recovery work in the console (tests/python/console_recover.py): upstream's booking shown
/// on its workspace; a dead letter replayed; its delivery opened, the body shown exactly as the
/// receiver got it; every dead letter replayed at once; an endpoint a 410 disabled enabled
/// again; a paused endpoint deleted with its pending reading purged. Before each step the receiver refuses, before each click it accepts, and after each
/// this test checks the API and the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_replays_dead_letters_opens_a_delivery_and_enables_a_gone_endpoint() {
    let push_port = common::free_port();
    let extra = format!(
        "[[workspaces]]\nid = \"room-1\"\nsensors = [\"rec-occ-1\"]\n[upstream]\nsecrets = [\"{}\"]\n[upstream.push]\nlisten = \"127.0.0.1:{push_port}\"\n",
        common::UPSTREAM_SECRET
    );
    let (_dir, broker, _default, daemon) = Rig::start(&extra).await.parts();
    let api = common::Api::with_token(&daemon);
    let flaky = Receiver::start().await;
    flaky.say("{\"note\":\"<b>room</b> unknown\"}");
    flaky.fail_with(422);
    let settings = serde_json::json!({
        "name": "flaky", "url": flaky.url, "secret": common::SECRET, "events": ["sensor.*"],
        "max_attempts": 1, "retry": {"initial": "50ms", "max": "200ms"},
    });
    let created = api
        .call("POST", "/v1/endpoints", "/v1/endpoints", Some(&settings))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let (code, login_url, err) = daemon.cli(&["console"], &[]);
    assert_eq!(code, 0, "{err}");
    let mut browser = Browser::open("console_recover.py", &[login_url.trim()]);
    browser.expect("loaded", &daemon).await;

    let now = common::unix_now();
    let at = common::rfc3339_at;
    let booking = serde_json::json!({"type": "booking.start", "data": {"booking_id": "bk-console",
        "workspace_id": "room-1", "title": "Review", "start": at(now + 600), "end": at(now + 4200)}});
    let taken = common::push(push_port, &booking, "console-bk-1").await;
    assert!(taken.status < 300, "{}", taken.body);
    browser.next("booked", &daemon).await;

    let mut occ = device(broker.port, "rec-occ-1", DeviceClass::OccupancySensor).await;
    let first = publish(&mut occ, 1, 1.0).await;
    browser.next("dead", &daemon).await;
    assert_eq!(dead_letters(&api).await, 1);
    flaky.fail_with(0);
    browser.next("replayed", &daemon).await;
    flaky
        .wait_until(LONG, "the replayed reading", |s| {
            s.readings_of("rec-occ-1") == first
        })
        .await;
    assert_eq!(dead_letters(&api).await, 0);

    browser.next("opened", &daemon).await;
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    let event = std::fs::read_to_string(shots.join("delivery-event.txt")).unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shots.join("delivery-request.txt")).unwrap())
            .unwrap();
    let got = flaky.seen(|s| s.events.iter().find(|e| e["id"] == event.as_str()).cloned());
    assert_eq!(
        Some(shown),
        got,
        "the body shown is the body the receiver got"
    );

    flaky.fail_with(422);
    let more = publish(&mut occ, 2, 1.0).await;
    browser.next("dead-two", &daemon).await;
    assert_eq!(dead_letters(&api).await, 2);
    flaky.fail_with(0);
    browser.next("replayed-all", &daemon).await;
    flaky
        .wait_until(LONG, "both replayed readings", |s| {
            s.readings_of("rec-occ-1").ends_with(&more)
        })
        .await;

    flaky.fail_with(410);
    let last = publish(&mut occ, 1, 1.0).await;
    browser.next("disabled", &daemon).await;
    assert_eq!(endpoint_state(&api, "flaky").await, "disabled");
    flaky.fail_with(0);
    browser.next("enabled", &daemon).await;
    assert_eq!(endpoint_state(&api, "flaky").await, "active");
    flaky
        .wait_until(LONG, "the reading held while it was disabled", |s| {
            s.readings_of("rec-occ-1").ends_with(&last)
        })
        .await;

    let paused = api
        .call(
            "POST",
            "/v1/endpoints/{name}/pause",
            "/v1/endpoints/flaky/pause",
            None,
        )
        .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    publish(&mut occ, 1, 1.0).await;
    common::until(
        std::time::Instant::now() + LONG,
        || {
            common::http_get(daemon.metrics_port, "/v1/endpoints/flaky")
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["pending"] == 1)
        },
        || "no reading pending for the paused endpoint".to_string(),
    )
    .await;
    browser.next("deleted-purged", &daemon).await;
    let gone = api.get("/v1/endpoints/{name}", "/v1/endpoints/flaky").await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    let outbox = api.get("/v1/outbox", "/v1/outbox").await.json();
    assert!(
        !outbox["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["endpoint"] == "flaky"),
        "its queue went with it: {outbox}"
    );
    assert!(
        flaky.seen(|s| s.readings_of("rec-occ-1").ends_with(&last)),
        "the purged reading was never sent"
    );
    browser.finish();
    assert_eq!(flaky.seen(|s| s.bad_signatures), 0);
    api.check_answers(_dir.path()).await;
}

/// `flaky`'s dead letters, as the API says.
async fn dead_letters(api: &common::Api) -> u64 {
    api.get("/v1/endpoints/{name}", "/v1/endpoints/flaky")
        .await
        .json()["dead_letters"]
        .as_u64()
        .unwrap()
}

/// An endpoint's state, as the API says.
async fn endpoint_state(api: &common::Api, name: &str) -> serde_json::Value {
    api.get("/v1/endpoints/{name}", &format!("/v1/endpoints/{name}"))
        .await
        .json()["state"]
        .clone()
}

/// The browser check (tests/python/console_check.py): Chromium driven by Playwright through
/// the console, one step each time it is told to go on, reporting each step done and keeping
/// a screenshot of it.
struct Browser {
    child: std::process::Child,
    to: std::process::ChildStdin,
    steps: tokio::sync::mpsc::UnboundedReceiver<String>,
    shots: std::path::PathBuf,
    done: Vec<String>,
}

impl Browser {
    /// The console opened by `script` (in tests/python) with its arguments: the login URL,
    /// then the screenshots' directory, then the rest of `args`.
    fn open(script: &str, args: &[&str]) -> Browser {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let shots = root.join("target/console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let mut child = Command::new("python3")
            .arg(root.join("tests/python").join(script))
            .arg(args[0])
            .arg(&shots)
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let to = child.stdin.take().unwrap();
        let (steps_tx, steps) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if steps_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Browser {
            child,
            to,
            steps,
            shots,
            done: Vec::new(),
        }
    }

    /// On to the next step, which must be `want`.
    async fn next(&mut self, want: &str, daemon: &Daemon) {
        writeln!(self.to, "go").unwrap();
        self.expect(want, daemon).await;
    }

    /// Wait for the browser to report step `want`; otherwise fail with what it said.
    async fn expect(&mut self, want: &str, daemon: &Daemon) {
        match tokio::time::timeout(LONG, self.steps.recv()).await {
            Ok(Some(step)) if step == want => self.done.push(step),
            got => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the browser did not report `{want}` (got {got:?}):\n{}\n{}",
                    self.stderr(),
                    daemon.log()
                );
            }
        }
    }

    /// The last go: the check ends cleanly, with a screenshot of every step.
    fn finish(mut self) {
        writeln!(self.to, "go").unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the browser check failed: {}",
            self.stderr()
        );
        for step in &self.done {
            let shot = self.shots.join(format!("{step}.png"));
            assert!(shot.exists(), "no screenshot of {step}");
        }
    }

    fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        text
    }
}
