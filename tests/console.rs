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
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/console_check.py");
    let mut browser = Command::new("python3")
        .arg(script)
        .arg(&login_url)
        .arg(&shots)
        .arg(&crm.url)
        .arg(common::SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut to_browser = browser.stdin.take().unwrap();
    let (steps_tx, mut steps) = tokio::sync::mpsc::unbounded_channel();
    let stdout = browser.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if steps_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut occ = device(broker.port, "console-occ-1", DeviceClass::OccupancySensor).await;
    let mut disp = device(broker.port, "disp-1", DeviceClass::RoomDisplay).await;

    expect_step(&mut steps, "loaded", &mut browser, &daemon).await;
    publish(&mut occ, 2, 1.0).await;
    publish(&mut disp, 1, 1.0).await;
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "device", &mut browser, &daemon).await;
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "action", &mut browser, &daemon).await;
    // The display executed it, once, and the receiver was told it succeeded; its desired
    // value is the one set in the console.
    assert_eq!(disp.actions_executed(), 1);
    let desired = common::Api::with_token(&daemon)
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
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "desire-cleared", &mut browser, &daemon).await;
    let desired = common::Api::with_token(&daemon)
        .get("/v1/devices/{id}", "/v1/devices/disp-1")
        .await
        .json();
    assert_eq!(desired["desired"], serde_json::Value::Null, "{desired}");
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "forgotten", &mut browser, &daemon).await;
    let gone = common::Api::with_token(&daemon)
        .get("/v1/devices/{id}", "/v1/devices/disp-1")
        .await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    default
        .wait_until(LONG, "disp-1 unregistered", |s| {
            s.of_type("device.unregistered")
                .iter()
                .any(|e| e["data"]["device_id"] == "disp-1")
        })
        .await;
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "created", &mut browser, &daemon).await;
    let sent = publish(&mut occ, 1, 1.0).await;
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "delivered", &mut browser, &daemon).await;
    let api = common::Api::with_token(&daemon);
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "paused", &mut browser, &daemon).await;
    assert_eq!(endpoint_state(&api).await, "paused");
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
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "purged", &mut browser, &daemon).await;
    let endpoint = api
        .get("/v1/endpoints/{name}", "/v1/endpoints/console-crm")
        .await
        .json();
    assert_eq!(endpoint["pending"], 0, "purged: {endpoint}");
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "edited", &mut browser, &daemon).await;
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
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "resumed", &mut browser, &daemon).await;
    assert_eq!(endpoint_state(&api).await, "active");
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "tested", &mut browser, &daemon).await;
    // The test event reaches the endpoint's receiver.
    crm.wait_until(LONG, "the console's test event", |s| {
        s.events
            .iter()
            .any(|e| e["data"]["device_id"] == "sample-device")
    })
    .await;
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "deleted", &mut browser, &daemon).await;
    let gone = api
        .get("/v1/endpoints/{name}", "/v1/endpoints/console-crm")
        .await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "logged-out", &mut browser, &daemon).await;
    // Logged out, the action it tried was refused: nothing more was executed.
    assert_eq!(disp.actions_executed(), 1);
    writeln!(to_browser, "go").unwrap();
    // Logged in again by the pasted token, a change went through.
    expect_step(&mut steps, "logged-in", &mut browser, &daemon).await;
    let state = api
        .get("/v1/endpoints/{name}", "/v1/endpoints/default")
        .await
        .json()["state"]
        .clone();
    assert_eq!(state, "paused");
    writeln!(to_browser, "go").unwrap();
    expect_step(&mut steps, "phone", &mut browser, &daemon).await;
    let state = api
        .get("/v1/endpoints/{name}", "/v1/endpoints/default")
        .await
        .json()["state"]
        .clone();
    assert_eq!(state, "active", "resumed in the console");
    writeln!(to_browser, "go").unwrap();
    let status = browser.wait().unwrap();
    assert!(
        status.success(),
        "the browser check failed: {}",
        read_stderr(&mut browser)
    );
    crm.wait_until(LONG, "the console's endpoint's delivery", |s| {
        s.readings_of("console-occ-1").ends_with(&sent)
    })
    .await;
    assert_eq!(crm.seen(|s| s.bad_signatures), 0);
    for step in [
        "loaded",
        "device",
        "action",
        "desire-cleared",
        "forgotten",
        "created",
        "delivered",
        "paused",
        "purged",
        "edited",
        "resumed",
        "tested",
        "deleted",
        "logged-out",
        "logged-in",
        "phone",
    ] {
        assert!(
            shots.join(format!("{step}.png")).exists(),
            "no screenshot of {step}"
        );
    }
}

/// The console-made endpoint's state, as the API says.
async fn endpoint_state(api: &common::Api) -> serde_json::Value {
    api.get("/v1/endpoints/{name}", "/v1/endpoints/console-crm")
        .await
        .json()["state"]
        .clone()
}

/// Wait for the browser to report step `want`; otherwise fail with what it said.
async fn expect_step(
    steps: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    want: &str,
    browser: &mut std::process::Child,
    daemon: &Daemon,
) {
    match tokio::time::timeout(LONG, steps.recv()).await {
        Ok(Some(step)) if step == want => {}
        got => {
            let _ = browser.kill();
            let _ = browser.wait();
            panic!(
                "the browser did not report `{want}` (got {got:?}):\n{}\n{}",
                read_stderr(browser),
                daemon.log()
            );
        }
    }
}

fn read_stderr(child: &mut std::process::Child) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    text
}
