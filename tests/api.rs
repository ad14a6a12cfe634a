//! The control API against the real daemon, with mosquitto and verifying receivers: an
//! endpoint created, delivering, edited, paused (across a `kill -9`), resumed, tested and
//! deleted, with nothing lost; every route's answers checked against the OpenAPI document the
//! daemon serves, by Python's OpenAPI validators (not edgehook's code).

mod common;

use std::time::{Duration, Instant};

use common::{device, publish, raw, until, Api, Daemon, Mosquitto, Receiver, Rig, SECRET};
use firmware_sim::DeviceClass;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// What the endpoint tests share: a daemon with a workspace and upstream's push listener, the
/// file's receiver (`default`), a second receiver (`crm`) for endpoints made through the API,
/// an occupancy sensor, and the API with the daemon's token.
struct Story {
    daemon: Daemon,
    api: Api,
    occ: firmware_sim::SimDevice,
    push_port: u16,
    crm: Receiver,
    default: Receiver,
    _broker: Mosquitto,
    dir: tempfile::TempDir,
}

/// The endpoint the tests make: `crm`, with a secret and a header never to be shown.
fn crm_settings(url: &str) -> Value {
    json!({
        "name": "crm",
        "description": "the CRM's webhook",
        "url": url,
        "secret": SECRET,
        "events": ["sensor.*", "device.online"],
        "headers": {"X-Api-Key": "k-123"},
        "retry": {"initial": "50ms", "max": "500ms"},
    })
}

impl Story {
    async fn begin() -> Story {
        let push_port = common::free_port();
        let extra = format!(
            "[[workspaces]]\nid = \"room-1\"\nsensors = [\"api-occ-1\"]\n[upstream]\nsecrets = [\"{}\"]\n[upstream.push]\nlisten = \"127.0.0.1:{push_port}\"\n",
            common::UPSTREAM_SECRET
        );
        let (dir, broker, default, daemon) = Rig::start(&extra).await.parts();
        let crm = Receiver::start().await;
        let api = Api::with_token(&daemon);
        let occ = device(broker.port, "api-occ-1", DeviceClass::OccupancySensor).await;
        Story {
            dir,
            _broker: broker,
            default,
            crm,
            daemon,
            api,
            occ,
            push_port,
        }
    }

    /// Wait until `crm` has had exactly `readings` of the sensor, in order.
    async fn crm_got(&self, what: &str, readings: &[Value]) {
        self.crm
            .wait_until(LONG, what, |s| s.readings_of("api-occ-1") == readings)
            .await;
    }

    fn settings(&self) -> Value {
        crm_settings(&self.crm.url)
    }

    /// `crm` made through the API (with the daemon's token): its answer.
    async fn create_crm(&self) -> common::Answer {
        let settings = self.settings();
        let created = self
            .api
            .call("POST", "/v1/endpoints", "/v1/endpoints", Some(&settings))
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        created
    }

    /// `crm` deleted through the API, its pending events and dead letters with it.
    async fn purge_crm(&self) {
        let path = "/v1/endpoints/crm?pending=purge";
        let gone = self
            .api
            .call("DELETE", "/v1/endpoints/{name}", path, None)
            .await;
        assert_eq!(gone.status, 204, "{}", gone.body);
    }

    /// `crm` made through the API, and its first readings delivered.
    async fn with_crm() -> (Story, Vec<Value>) {
        let mut story = Self::begin().await;
        story.create_crm().await;
        let first = publish(&mut story.occ, 3, 1.0).await;
        story
            .crm_got("the new endpoint's first readings", &first)
            .await;
        (story, first)
    }

    async fn endpoint_post(&self, name: &str, what: &str) -> common::Answer {
        let path = format!("/v1/endpoints/{name}/{what}");
        let template = format!("/v1/endpoints/{{name}}/{what}");
        self.api.call("POST", &template, &path, None).await
    }

    /// Every answer as the OpenAPI document says, no secret in the log, and the daemon stops
    /// cleanly.
    async fn end(mut self) {
        self.api.check_answers(self.dir.path()).await;
        let log = self.daemon.log();
        assert!(
            !log.contains(SECRET) && !log.contains("k-123"),
            "a secret in the log"
        );
        assert_eq!(self.daemon.terminate(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_no_token_on_loopback_and_a_change_needs_the_daemons_token() {
    let story = Story::begin().await;
    let anonymous = Api::new(story.api.port);
    let doc = anonymous.get("/v1/openapi.json", "/v1/openapi.json").await;
    assert_eq!(doc.status, 200);
    let gateway = anonymous.get("/v1/gateway", "/v1/gateway").await.json();
    assert_eq!(
        (
            gateway["id"].as_str(),
            gateway["mqtt"]["connected"].as_bool()
        ),
        (Some("gw-test"), Some(true))
    );
    let refused = anonymous
        .call(
            "POST",
            "/v1/endpoints",
            "/v1/endpoints",
            Some(&story.settings()),
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    anonymous.check_answers(story.dir.path()).await;
    // The token the daemon made in its state directory (`story.api` calls with it) is taken.
    story.create_crm().await;
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoint_settings_name_the_field_and_change_nothing() {
    let story = Story::begin().await;
    let api = &story.api;
    let mut insecure = story.settings();
    insecure["url"] = json!("http://crm.example.com/hooks");
    let bad = api
        .call("POST", "/v1/endpoints", "/v1/endpoints", Some(&insecure))
        .await;
    assert_eq!(
        (bad.status, bad.json()["field"].as_str()),
        (400, Some("url")),
        "{}",
        bad.body
    );
    let mut unknown = story.settings();
    unknown["events"] = json!(["devise.*"]);
    let bad = api
        .call("POST", "/v1/endpoints", "/v1/endpoints", Some(&unknown))
        .await;
    assert_eq!(
        (bad.status, bad.json()["field"].as_str()),
        (400, Some("events")),
        "{}",
        bad.body
    );
    assert!(bad.body.contains("devise.*"), "{}", bad.body);
    let mut taken = story.settings();
    taken["name"] = json!("default");
    let clash = api
        .call("POST", "/v1/endpoints", "/v1/endpoints", Some(&taken))
        .await;
    assert_eq!(clash.status, 409, "{}", clash.body);
    let list = api.get("/v1/endpoints", "/v1/endpoints").await.json();
    assert_eq!(list["endpoints"].as_array().unwrap().len(), 1, "{list}");
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_made_through_the_api_delivers_at_once_and_never_shows_its_secrets() {
    let mut story = Story::begin().await;
    let created = story.create_crm().await;
    let view = created.json();
    assert_eq!(
        (view["source"].as_str(), view["state"].as_str()),
        (Some("api"), Some("active"))
    );
    assert!(
        !created.body.contains(SECRET) && !created.body.contains("k-123"),
        "{}",
        created.body
    );
    assert_eq!(view["headers"], json!(["X-Api-Key"]));

    let first = publish(&mut story.occ, 3, 1.0).await;
    story
        .crm_got("the new endpoint's first readings", &first)
        .await;
    assert_eq!(story.crm.seen(|s| s.bad_signatures), 0);
    // The file's endpoint goes on as before.
    story
        .default
        .wait_until(LONG, "the file endpoint's readings", |s| {
            s.readings_of("api-occ-1") == first
        })
        .await;
    story.daemon.assert_logged("control API: endpoint created");
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_workspaces_are_read_one_or_all() {
    let (story, _) = Story::with_crm().await;
    let api = &story.api;
    let devices = api.get("/v1/devices", "/v1/devices").await.json();
    assert!(
        devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == "api-occ-1"),
        "{devices}"
    );
    let one = api.get("/v1/devices/{id}", "/v1/devices/api-occ-1").await;
    assert_eq!(
        (one.status, one.json()["health"].as_str()),
        (200, Some("online")),
        "{}",
        one.body
    );
    assert_eq!(
        api.get("/v1/devices/{id}", "/v1/devices/nobody")
            .await
            .status,
        404
    );
    let board = api.get("/v1/workspaces", "/v1/workspaces").await.json();
    assert_eq!(board["workspaces"][0]["sensors"], json!(["api-occ-1"]));
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_endpoint_keeps_its_queue_and_its_secret() {
    let (mut story, first) = Story::with_crm().await;
    let api = &story.api;
    let patched = api
        .call(
            "PATCH",
            "/v1/endpoints/{name}",
            "/v1/endpoints/crm",
            Some(&json!({"description": "CRM, patched"})),
        )
        .await;
    assert_eq!(
        (patched.status, patched.json()["description"].as_str()),
        (200, Some("CRM, patched")),
        "{}",
        patched.body
    );
    let replaced = api
        .call(
            "PUT",
            "/v1/endpoints/{name}",
            "/v1/endpoints/crm",
            Some(&story.settings()),
        )
        .await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    let renamed = api
        .call(
            "PATCH",
            "/v1/endpoints/{name}",
            "/v1/endpoints/crm",
            Some(&json!({"name": "crm2"})),
        )
        .await;
    assert_eq!(renamed.status, 400);
    let file_one = api
        .call(
            "PATCH",
            "/v1/endpoints/{name}",
            "/v1/endpoints/default",
            Some(&json!({"active": false})),
        )
        .await;
    assert_eq!(
        file_one.status, 409,
        "the file's endpoint is edited in the file"
    );
    let second = publish(&mut story.occ, 2, 1.0).await;
    let sent: Vec<Value> = first.iter().chain(&second).cloned().collect();
    story.crm_got("readings after the edits", &sent).await;
    assert_eq!(story.crm.seen(|s| s.bad_signatures), 0);
    story.daemon.assert_logged("changed=description");
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_endpoint_holds_its_events_through_a_kill_9_and_delivers_them_in_order_when_resumed(
) {
    let (mut story, mut sent) = Story::with_crm().await;
    let paused = story.endpoint_post("crm", "pause").await;
    assert_eq!(paused.json()["state"], "paused", "{}", paused.body);
    let held = publish(&mut story.occ, 3, 1.0).await;
    let expected = sent.len() + held.len();
    story
        .default
        .wait_until(LONG, "the file endpoint gets what crm holds", |s| {
            s.readings_of("api-occ-1").len() == expected
        })
        .await;
    let pending = story
        .api
        .get("/v1/endpoints/{name}", "/v1/endpoints/crm")
        .await
        .json();
    assert_eq!(pending["pending"], held.len(), "{pending}");
    assert_eq!(
        story.crm.seen(|s| s.readings_of("api-occ-1")),
        sent,
        "nothing sent while paused"
    );
    story.daemon.kill9();
    story.daemon.start();
    let after = story
        .api
        .get("/v1/endpoints/{name}", "/v1/endpoints/crm")
        .await
        .json();
    assert_eq!(
        (after["state"].as_str(), after["pending"].as_u64()),
        (Some("paused"), Some(held.len() as u64)),
        "{after}"
    );
    let queued = story
        .api
        .get(
            "/v1/outbox/events",
            "/v1/outbox/events?endpoint=crm&type=sensor.*",
        )
        .await
        .json();
    assert_eq!(
        queued["events"].as_array().unwrap().len(),
        held.len(),
        "{queued}"
    );

    let resumed = story.endpoint_post("crm", "resume").await;
    assert_eq!(resumed.json()["state"], "active", "{}", resumed.body);
    sent.extend(held);
    story.crm_got("what was held while paused", &sent).await;
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_of_deliveries_shows_the_next_one() {
    let (mut story, mut sent) = Story::with_crm().await;
    let port = story.api.port;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let req = format!(
            "GET /v1/deliveries/stream?endpoint=crm HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
    }
    let streamed = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains("event: delivery") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // the stream is subscribed
    let last = publish(&mut story.occ, 1, 1.0).await;
    sent.extend(last);
    let text = tokio::time::timeout(LONG, streamed)
        .await
        .expect("a delivery streamed")
        .unwrap();
    assert!(
        text.contains("text/event-stream") && text.contains("\"endpoint\":\"crm\""),
        "{text}"
    );
    story.crm_got("the streamed reading", &sent).await;
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_is_answered_with_the_receivers_status_and_an_endpoint_is_enabled() {
    let (story, _) = Story::with_crm().await;
    let test = story.endpoint_post("crm", "test").await.json();
    assert_eq!(
        (test["delivered"].as_bool(), test["status"].as_u64()),
        (Some(true), Some(200)),
        "{test}"
    );
    assert_eq!(story.crm.seen(|s| s.bad_signatures), 0);
    let enabled = story.endpoint_post("crm", "enable").await;
    assert_eq!(enabled.status, 200);
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_and_the_delivery_log_answer_and_refuse_what_they_cannot_do() {
    let (story, sent) = Story::with_crm().await;
    let api = &story.api;
    let outbox = api.get("/v1/outbox", "/v1/outbox").await.json();
    assert!(
        outbox["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["endpoint"] == "crm"),
        "{outbox}"
    );
    api.get("/v1/outbox/events", "/v1/outbox/events?dead=true")
        .await;
    let bad_limit = api
        .get("/v1/outbox/events", "/v1/outbox/events?limit=0")
        .await;
    assert_eq!(
        (bad_limit.status, bad_limit.json()["field"].as_str()),
        (400, Some("limit"))
    );
    // The log is written just after the receiver answers.
    let logged = || {
        common::http_get(api.port, "/v1/deliveries?endpoint=crm&status=ok&limit=500")
            .is_some_and(|b| b.matches("\"ok\":true").count() >= sent.len())
    };
    until(Instant::now() + LONG, logged, || {
        "the deliveries logged".into()
    })
    .await;
    let log = api
        .get(
            "/v1/deliveries",
            "/v1/deliveries?endpoint=crm&status=ok&limit=500",
        )
        .await
        .json();
    let delivered: Vec<&Value> = log["deliveries"].as_array().unwrap().iter().collect();
    assert!(
        delivered.len() >= sent.len()
            && delivered
                .iter()
                .all(|d| d["ok"] == true && d["endpoint"] == "crm"),
        "{log}"
    );
    assert_eq!(
        api.get("/v1/deliveries", "/v1/deliveries?status=maybe")
            .await
            .status,
        400
    );
    let none = api
        .call(
            "POST",
            "/v1/outbox/replay",
            "/v1/outbox/replay",
            Some(&json!({"event_id": "nope"})),
        )
        .await;
    assert_eq!(none.status, 404);
    let unnamed = api
        .call(
            "POST",
            "/v1/outbox/purge",
            "/v1/outbox/purge",
            Some(&json!({"dead": true})),
        )
        .await;
    assert_eq!(
        (unnamed.status, unnamed.json()["field"].as_str()),
        (400, Some("endpoint"))
    );
    let purged = api
        .call(
            "POST",
            "/v1/outbox/purge",
            "/v1/outbox/purge",
            Some(&json!({"endpoint": "crm", "dead": true})),
        )
        .await;
    assert_eq!(purged.status, 200);
    story.end().await;
}

/// A deleted endpoint leaves nothing behind: its empty queue is no longer listed, and one made
/// again with its name starts as new (not paused as the deleted one was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_endpoint_leaves_nothing_behind_for_one_made_again_with_its_name() {
    let (story, _) = Story::with_crm().await;
    let paused = story.endpoint_post("crm", "pause").await;
    assert_eq!(paused.json()["state"], "paused");
    story.purge_crm().await;
    let queues = |outbox: Value| -> Vec<Value> {
        outbox["queues"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| q["endpoint"] == "crm")
            .cloned()
            .collect()
    };
    let outbox = story.api.get("/v1/outbox", "/v1/outbox").await.json();
    assert_eq!(
        queues(outbox),
        Vec::<Value>::new(),
        "its empty queue is not listed"
    );
    story.create_crm().await;
    let again = story
        .api
        .get("/v1/endpoints/{name}", "/v1/endpoints/crm")
        .await
        .json();
    assert_eq!(again["state"], "active", "{again}");
    assert_eq!(again["paused_since"], Value::Null, "{again}");
    let outbox = story.api.get("/v1/outbox", "/v1/outbox").await.json();
    let listed = queues(outbox);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "active", "{listed:?}");
    story.end().await;
}

/// Opened, a delivery shows its event's type and device, the body exactly as the receiver got
/// it and what the receiver answered, accepted or refused; the log is filtered by device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_delivery_shows_the_body_sent_and_the_receivers_answer() {
    let mut story = Story::begin().await;
    story.crm.say("{\"accepted\":true}");
    story.create_crm().await;
    let sent = publish(&mut story.occ, 1, 1.0).await;
    story.crm_got("the reading", &sent).await;
    let got = story.crm.seen(|s| {
        s.events
            .iter()
            .find(|e| e["type"] == "sensor.reading.updated")
            .cloned()
            .unwrap()
    });
    let id = got["id"].as_str().unwrap().to_string();
    let detail = |id: String| {
        let api = &story.api;
        async move {
            let path = format!("/v1/deliveries/{id}?endpoint=crm");
            api.get("/v1/deliveries/{event_id}", &path).await
        }
    };
    let opened = detail(id.clone()).await.json();
    let x = &opened["exchange"];
    let body: Value = serde_json::from_str(x["request"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, got, "the body as the receiver got it: {opened}");
    assert_eq!(x["request"]["truncated"], false);
    assert_eq!(x["request"]["content_type"], "application/json");
    assert_eq!(
        (
            x["response"]["status"].as_u64(),
            x["response"]["body"].as_str()
        ),
        (Some(200), Some("{\"accepted\":true}")),
        "{opened}"
    );
    // Its attempt, once logged, names its type and device.
    let logged = || {
        common::http_get(story.api.port, &format!("/v1/deliveries?event={id}"))
            .is_some_and(|b| b.contains("\"ok\":true"))
    };
    until(Instant::now() + LONG, logged, || {
        "the attempt logged".into()
    })
    .await;
    let opened = detail(id.clone()).await.json();
    let attempt = &opened["attempts"][0];
    assert_eq!(
        (attempt["type"].as_str(), attempt["lane"].as_str()),
        (Some("sensor.reading.updated"), Some("device:api-occ-1")),
        "{opened}"
    );
    let by_device = story
        .api
        .get(
            "/v1/deliveries",
            "/v1/deliveries?device=api-occ-1&endpoint=crm",
        )
        .await
        .json();
    let by_device = by_device["deliveries"].as_array().unwrap();
    assert!(
        !by_device.is_empty() && by_device.iter().all(|d| d["lane"] == "device:api-occ-1"),
        "{by_device:?}"
    );
    let other = story
        .api
        .get("/v1/deliveries", "/v1/deliveries?device=nobody")
        .await
        .json();
    assert_eq!(other["deliveries"], json!([]));

    // Refused: the receiver's answer is there, whole, as it said it.
    story
        .crm
        .say("{\"error\":\"room <b>unknown</b>\",\"code\":\"E42\"}");
    story.crm.fail_with(422);
    publish(&mut story.occ, 1, 1.0).await;
    let mut refused = None;
    until(
        Instant::now() + LONG,
        || {
            let Some(log) =
                common::http_get(story.api.port, "/v1/deliveries?endpoint=crm&status=422")
            else {
                return false;
            };
            let log: Value = serde_json::from_str(&log).unwrap();
            refused = log["deliveries"][0]["event_id"]
                .as_str()
                .map(str::to_string);
            refused.is_some()
        },
        || "a refused attempt logged".into(),
    )
    .await;
    let opened = detail(refused.unwrap()).await.json();
    assert_eq!(
        (
            opened["exchange"]["response"]["status"].as_u64(),
            opened["exchange"]["response"]["body"].as_str()
        ),
        (
            Some(422),
            Some("{\"error\":\"room <b>unknown</b>\",\"code\":\"E42\"}")
        ),
        "{opened}"
    );
    assert_eq!(opened["attempts"][0]["ok"], false);
    let unknown = detail("no-such-event".into()).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    story.crm.fail_with(0);
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_events_waiting_is_deleted_only_by_draining_or_purging_them() {
    let (mut story, mut sent) = Story::with_crm().await;
    story.endpoint_post("crm", "pause").await;
    let waiting = publish(&mut story.occ, 2, 1.0).await;
    // Every reading queued for crm before the drain begins (a drain takes nothing new).
    let port = story.api.port;
    until(
        Instant::now() + LONG,
        || daemon_pending(&port) >= waiting.len() as u64,
        || format!("{} events wait for crm", waiting.len()),
    )
    .await;
    let api = &story.api;
    let refused = api
        .call("DELETE", "/v1/endpoints/{name}", "/v1/endpoints/crm", None)
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("pending=drain"), "{}", refused.body);
    let draining = api
        .call(
            "DELETE",
            "/v1/endpoints/{name}",
            "/v1/endpoints/crm?pending=drain",
            None,
        )
        .await;
    assert_eq!(
        (draining.status, draining.json()["state"].as_str()),
        (202, Some("draining")),
        "{}",
        draining.body
    );
    story.endpoint_post("crm", "resume").await;
    sent.extend(waiting);
    story
        .crm_got("what waited, delivered before the delete", &sent)
        .await;
    until(
        Instant::now() + LONG,
        || common::http_get(port, "/v1/endpoints/crm").is_some_and(|b| b.contains("no endpoint")),
        || "the drained endpoint goes".into(),
    )
    .await;
    let api = &story.api;
    api.get("/v1/endpoints/{name}", "/v1/endpoints/crm").await;
    assert_eq!(story.crm.seen(|s| s.duplicates), 0);

    // The same from scratch with a purge; then the list as it is.
    story.create_crm().await;
    story.purge_crm().await;
    let list = api.get("/v1/endpoints", "/v1/endpoints").await.json();
    let names: Vec<&str> = list["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["default"]);
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_desired_value_is_set_and_a_device_is_forgotten_with_its_event_told() {
    let mut story = Story::begin().await;
    publish(&mut story.occ, 1, 1.0).await;
    let api = &story.api;
    until(
        Instant::now() + LONG,
        || {
            common::http_get(api.port, "/v1/devices/api-occ-1")
                .is_some_and(|b| b.contains("online"))
        },
        || "the device is known".into(),
    )
    .await;
    let desired = api
        .call(
            "PUT",
            "/v1/devices/{id}/desired",
            "/v1/devices/api-occ-1/desired",
            Some(&json!({"value": "cfg-7"})),
        )
        .await;
    assert_eq!(desired.status, 200, "{}", desired.body);
    assert_eq!(desired.json()["desired"], "cfg-7");
    let missing = api
        .call("DELETE", "/v1/devices/{id}", "/v1/devices/nobody", None)
        .await;
    assert_eq!(missing.status, 404);
    let forgotten = api
        .call("DELETE", "/v1/devices/{id}", "/v1/devices/api-occ-1", None)
        .await;
    assert_eq!(forgotten.status, 204, "{}", forgotten.body);
    story
        .default
        .wait_until(LONG, "device.unregistered", |s| {
            s.of_type("device.unregistered")
                .iter()
                .any(|e| e["data"]["device_id"] == "api-occ-1" && e["data"]["reason"] == "operator")
        })
        .await;
    let gone = api.get("/v1/devices/{id}", "/v1/devices/api-occ-1").await;
    assert_eq!(gone.status, 404);
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_for_a_device_nobody_knows_is_rejected_told_and_remembered() {
    let story = Story::begin().await;
    let api = &story.api;
    let action = json!({"id": "act-1", "device": "nobody", "name": "identify"});
    let rejected = api
        .call("POST", "/v1/actions", "/v1/actions", Some(&action))
        .await;
    assert_eq!(
        (rejected.status, rejected.json()["field"].as_str()),
        (404, Some("device")),
        "{}",
        rejected.body
    );
    let known = api
        .call("POST", "/v1/actions", "/v1/actions", Some(&action))
        .await;
    assert_eq!(
        (known.status, known.json()["status"].as_str()),
        (200, Some("rejected"))
    );
    let status = api.get("/v1/actions/{id}", "/v1/actions/act-1").await;
    assert_eq!(status.json()["status"], "rejected");
    let cancel = api
        .call("DELETE", "/v1/actions/{id}", "/v1/actions/act-1", None)
        .await;
    assert_eq!(cancel.status, 409, "done already: {}", cancel.body);
    assert_eq!(
        api.get("/v1/actions/{id}", "/v1/actions/nope").await.status,
        404
    );
    let bad = api
        .call(
            "POST",
            "/v1/actions",
            "/v1/actions",
            Some(&json!({"device": "x", "name": "y"})),
        )
        .await;
    assert_eq!(
        (bad.status, bad.json()["field"].as_str()),
        (400, Some("id"))
    );
    story
        .default
        .wait_until(LONG, "the rejection told", |s| {
            s.of_type("device.action_completed")
                .iter()
                .any(|e| e["data"]["action_id"] == "act-1" && e["data"]["status"] == "rejected")
        })
        .await;
    story.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_commands_on_the_push_listener_are_verified_and_bookings_kept() {
    let story = Story::begin().await;
    let (api, push_port) = (&story.api, story.push_port);
    let now = common::unix_now();
    let at = common::rfc3339_at;
    let booking = json!({"type": "booking.start", "data": {"booking_id": "bk-1", "workspace_id": "room-1", "title": "Review", "start": at(now + 600), "end": at(now + 4200)}});
    let taken = common::push(push_port, &booking, "msg-1").await;
    assert_eq!(taken.status, 202, "{}", taken.body);
    let unsigned = raw(
        push_port,
        "POST",
        "/v1/commands",
        &[],
        Some(&booking.to_string()),
    )
    .await;
    assert_eq!(unsigned.status, 401);
    let no_room =
        json!({"type": "booking.end", "data": {"booking_id": "bk-1", "workspace_id": "room-9"}});
    let missing = common::push(push_port, &no_room, "msg-2").await;
    assert_eq!(missing.status, 404);
    let bookings = api.get("/v1/bookings", "/v1/bookings").await.json();
    assert_eq!(bookings["bookings"][0]["booking_id"], "bk-1");
    assert_eq!(
        bookings["bookings"][0]["details"],
        json!({"title": "Review"})
    );
    for answer in [&taken, &unsigned, &missing] {
        let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        api.exchanges.lock().unwrap().push(json!({
            "method": "POST", "path": "/v1/commands", "status": answer.status, "body": body,
        }));
    }
    story.end().await;
}

/// The tests above each check their answers against the OpenAPI document; together they call
/// every operation it documents (each call written out, as `"METHOD", "/template"`, a raw
/// request line, `get("/template"`, or `endpoint_post(name, "action")`).
#[test]
fn every_documented_operation_is_called_by_a_test_here() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("src/control/openapi.json")).unwrap(),
    )
    .unwrap();
    let source: String = std::fs::read_to_string(root.join("tests/api.rs"))
        .unwrap()
        .split_whitespace()
        .collect();
    let mut never = Vec::new();
    let methods = ["get", "put", "post", "delete", "patch"];
    for (template, operations) in doc["paths"].as_object().unwrap() {
        let operations = operations.as_object().unwrap().keys();
        for method in operations.filter(|m| methods.contains(&m.as_str())) {
            let method = method.to_uppercase();
            let action = template.strip_prefix("/v1/endpoints/{name}/");
            let called = source.contains(&format!("\"{method}\",\"{template}\""))
                || source.contains(&format!("\"{method}{template}"))
                || (method == "GET" && source.contains(&format!("get(\"{template}\"")))
                || action.is_some_and(|a| source.contains(&format!(",\"{a}\")")));
            if !called {
                never.push(format!("{method} {template}"));
            }
        }
    }
    assert!(never.is_empty(), "documented, never called: {never:?}");
}

/// Events pending in the outbox, as `/v1/outbox` says.
fn daemon_pending(port: &u16) -> u64 {
    common::http_get(*port, "/v1/outbox")
        .and_then(|b| serde_json::from_str::<Value>(&b).ok())
        .and_then(|v| {
            v["queues"]
                .as_array()?
                .iter()
                .find(|q| q["endpoint"] == "crm")?["pending"]
                .as_u64()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_other_hosts_cross_site_changes_and_oversize_bodies() {
    let (dir, _broker, _receiver, daemon) = Rig::start("").await.parts();
    let port = daemon.metrics_port;
    let token = daemon.token();
    let token = token.as_str();
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let host = format!("127.0.0.1:{port}");
    let bearer = format!("Bearer {token}");
    // DNS rebinding: a page of another site that resolved its name to 127.0.0.1.
    let rebound = raw(
        port,
        "GET",
        "/v1/gateway",
        &h(&[("Host", "evil.example:80")]),
        None,
    )
    .await;
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    // A cross-site form post carrying the token is still refused by its Origin.
    let body = json!({"endpoint": "default"}).to_string();
    let cross = raw(
        port,
        "POST",
        "/v1/outbox/purge",
        &h(&[
            ("Host", &host),
            ("Authorization", &bearer),
            ("Origin", "http://evil.example"),
        ]),
        Some(&body),
    )
    .await;
    assert_eq!(cross.status, 403, "{}", cross.body);
    let wrong = raw(
        port,
        "POST",
        "/v1/outbox/purge",
        &h(&[("Host", &host), ("Authorization", "Bearer nope")]),
        Some(&body),
    )
    .await;
    assert_eq!(wrong.status, 401);
    // A wrong method on a route is a 405, a route that does not exist a 404.
    for (method, path, status) in [
        ("DELETE", "/v1/deliveries", 405),
        ("POST", "/v1/openapi.json", 405),
        ("PUT", "/v1/deliveries/stream", 405),
        ("PUT", "/v1/gateway", 405),
        ("GET", "/v1/nothing-here", 404),
    ] {
        let answer = raw(
            port,
            method,
            path,
            &h(&[("Host", &host), ("Authorization", &bearer)]),
            None,
        )
        .await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
    }
    let huge = format!(
        "{{\"name\":\"x\",\"description\":\"{}\"}}",
        "a".repeat(70 * 1024)
    );
    let big = raw(
        port,
        "POST",
        "/v1/endpoints",
        &h(&[("Host", &host), ("Authorization", &bearer)]),
        Some(&huge),
    )
    .await;
    assert_eq!(big.status, 413, "{}", big.body);
    let not_json = raw(
        port,
        "POST",
        "/v1/endpoints",
        &h(&[("Host", &host), ("Authorization", &bearer)]),
        Some("{nope"),
    )
    .await;
    assert_eq!(not_json.status, 400);
    let page = raw(port, "GET", "/", &h(&[("Host", &host)]), None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers
            .to_ascii_lowercase()
            .contains("content-security-policy"),
        "{}",
        page.headers
    );
    // /healthz and /metrics as before.
    assert_eq!(common::http_get(port, "/healthz").as_deref(), Some("ok\n"));
    assert!(daemon.metric("edgehook_mqtt_connected") == Some(1));
    // `edgehook token` prints the token.
    let out = common::daemon_command()
        .arg("token")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        token,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `text` with its times (RFC 3339, and "(... ago)") replaced by `<t>`: what the CLI says of
/// the same state at two moments.
fn without_times(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(" ago)") {
        let open = rest[..i].rfind('(').unwrap_or(i);
        out.push_str(&rest[..open]);
        out.push_str("<t>");
        rest = &rest[i + " ago)".len()..];
    }
    out.push_str(rest);
    let b: Vec<char> = out.chars().collect();
    let mut clean = String::new();
    let mut i = 0;
    while i < b.len() {
        let digits = |from: usize, n: usize| {
            (from..from + n).all(|j| b.get(j).is_some_and(char::is_ascii_digit))
        };
        if digits(i, 4)
            && b.get(i + 4) == Some(&'-')
            && digits(i + 5, 2)
            && b.get(i + 10) == Some(&'T')
        {
            let mut j = i + 11;
            while j < b.len() && (b[j].is_ascii_digit() || matches!(b[j], ':' | '.')) {
                j += 1;
            }
            if b.get(j) == Some(&'Z') {
                j += 1;
            }
            clean.push_str("<t>");
            i = j;
        } else {
            clean.push(b[i]);
            i += 1;
        }
    }
    clean
}

/// Issue 18: the commands are clients of the API. While the daemon runs they answer from it
/// (nothing asks the operator to stop the service), when it is stopped from its store, and
/// say the same either way; a change made through them (an endpoint created, paused,
/// resumed) acts on the running daemon at once, or is found by it at its next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_say_the_same_from_the_running_daemon_and_from_its_store() {
    let (_dir, broker, default, mut daemon) =
        Rig::start("[[workspaces]]\nid = \"room-1\"\nsensors = [\"cli-occ-1\"]\n")
            .await
            .parts();
    let crm = Receiver::start().await;
    let mut occ = device(broker.port, "cli-occ-1", DeviceClass::OccupancySensor).await;
    publish(&mut occ, 1, 1.0).await;
    default
        .wait_until(LONG, "the first reading", |s| {
            !s.readings_of("cli-occ-1").is_empty()
        })
        .await;

    // An endpoint made, then paused, with the commands, while the daemon runs.
    let secret = [("EDGEHOOK_ENDPOINT_SECRET", SECRET)];
    let (code, out, err) = daemon.cli(
        &[
            "endpoints",
            "create",
            "crm",
            "--url",
            &crm.url,
            "--events",
            "sensor.*",
            "--description",
            "the CRM",
            "--header",
            "X-Api-Key: k-1",
        ],
        &secret,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("endpoint crm created (applied now)"), "{out}");
    let (code, out, err) = daemon.cli(&["endpoints", "pause", "crm"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("endpoint crm paused"), "{out}");
    let before = default.seen(|s| s.readings_of("cli-occ-1").len());
    let changes = publish(&mut occ, 3, 1.0).await;
    default
        .wait_until(LONG, "the readings at the default endpoint", |s| {
            s.readings_of("cli-occ-1").len() >= before + changes.len()
        })
        .await;
    let wait = Instant::now() + LONG;
    until(
        wait,
        || {
            daemon.metric("edgehook_endpoint_pending{endpoint=\"crm\"}")
                == Some(changes.len() as u64)
        },
        || daemon.log(),
    )
    .await;
    assert_eq!(
        crm.seen(|s| s.requests),
        0,
        "a paused endpoint gets nothing"
    );

    let views: [&[&str]; 8] = [
        &["outbox", "status"],
        &["outbox", "list"],
        &["outbox", "list", "--endpoint", "crm", "--type", "sensor.*"],
        &["endpoints"],
        &["endpoints", "show", "crm"],
        &["devices"],
        &["devices", "show", "cli-occ-1"],
        &["workspaces"],
    ];
    let look = |daemon: &Daemon| -> Vec<String> {
        views
            .iter()
            .map(|args| {
                let (code, out, err) = daemon.cli(args, &[]);
                assert_eq!(code, 0, "{args:?}: {out}{err}");
                out
            })
            .collect()
    };
    let live = look(&daemon);
    let (_, _, err) = daemon.cli(&["outbox", "status"], &[]);
    assert!(err.contains("from the running daemon"), "{err}");
    what_the_running_daemon_says(&live, changes.len());

    assert_eq!(daemon.terminate(), Some(0));
    let stopped = look(&daemon);
    let (_, _, err) = daemon.cli(&["outbox", "status"], &[]);
    assert!(err.contains("the daemon is not running"), "{err}");
    // The delivery latency and last error live in the running daemon's memory alone.
    let live_only = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with("last latency") && !l.starts_with("last error"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (i, (live, stopped)) in live.iter().zip(&stopped).enumerate() {
        assert_eq!(
            without_times(&live_only(live)),
            without_times(&live_only(stopped)),
            "{:?} says the same running and stopped",
            views[i]
        );
    }

    // Resumed while stopped: the daemon finds it at its start and delivers what was held.
    let (code, out, err) = daemon.cli(&["endpoints", "resume", "crm"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    daemon.start();
    crm.wait_until(LONG, "the readings held while paused", |s| {
        s.readings_of("cli-occ-1").len() >= changes.len()
    })
    .await;
    crm.seen(|s| {
        assert_eq!(s.readings_of("cli-occ-1"), changes);
        assert_eq!(s.bad_signatures, 0);
    });
    // And a mistake is named, running or not.
    let (code, _, err) = daemon.cli(&["endpoints", "show", "nope"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("no endpoint `nope`"), "{err}");
    let (code, _, err) = daemon.cli(
        &[
            "endpoints",
            "create",
            "bad",
            "--url",
            "http://crm.example.com/x",
        ],
        &secret,
    );
    assert_eq!(code, 2);
    assert!(err.starts_with("error: url:"), "{err}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// The views of `the_commands_say_the_same_…` as the running daemon tells them: crm paused
/// with `pending` readings, its header's value and its secret hidden, the device and workspace.
fn what_the_running_daemon_says(live: &[String], pending: usize) {
    assert!(
        live[0].contains("endpoint crm: PAUSED since"),
        "{}",
        live[0]
    );
    assert!(
        live[0].contains(&format!("pending       {}", pending)),
        "{}",
        live[0]
    );
    assert_eq!(live[2].lines().count(), pending, "{}", live[2]);
    assert!(
        live[3].contains("crm") && live[3].contains("paused"),
        "{}",
        live[3]
    );
    assert!(live[4].contains("X-Api-Key (values hidden)"), "{}", live[4]);
    assert!(!live.concat().contains("k-1") && !live.concat().contains(SECRET));
    assert!(
        live[5].contains("cli-occ-1") && live[5].contains("online"),
        "{}",
        live[5]
    );
    assert!(
        live[7].contains("room-1") && live[7].contains("cli-occ-1"),
        "{}",
        live[7]
    );
}

/// Issue 18: `/v1/devices` tells when a device was last heard from as the running daemon
/// knows it, not as coarsely as the store keeps it (an unchanged reading only refreshes
/// `last_seen` lazily on disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_heard_a_moment_ago_is_shown_as_heard_a_moment_ago() {
    let (_dir, broker, receiver, mut daemon) = Rig::start("").await.parts();
    let api = Api::new(daemon.metrics_port);
    let mut occ = device(broker.port, "seen-occ-1", DeviceClass::OccupancySensor).await;
    publish(&mut occ, 1, 1.0).await;
    receiver
        .wait_until(LONG, "the first reading", |s| {
            !s.readings_of("seen-occ-1").is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Unchanged: no event, and nothing written at once.
    let heard = std::time::SystemTime::now();
    publish(&mut occ, 1, 0.0).await;
    let wait = Instant::now() + LONG;
    loop {
        let d = api
            .get("/v1/devices/{id}", "/v1/devices/seen-occ-1")
            .await
            .json();
        let seen = humantime::parse_rfc3339(d["last_seen"].as_str().unwrap()).unwrap();
        // Within the clock's millisecond rounding of the moment it was published.
        if seen + Duration::from_millis(5) >= heard {
            break;
        }
        assert!(
            Instant::now() < wait,
            "last_seen {d} is older than {heard:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        receiver.seen(|s| s.readings_of("seen-occ-1").len()),
        1,
        "the unchanged reading made no event"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// Issue 18: the endpoint and device commands as an operator types them: an endpoint made
/// while the daemon is stopped is taken at its start and delivers; edited, tested and deleted
/// with its queue while it runs; a device's desired value set and the device forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_devices_are_managed_with_the_commands() {
    let class = "[[device_classes]]\nname = \"disp\"\nmatch = [\"cmd-*\"]\nsync_field = \"config\"\ndesired = \"v2\"\nsync_grace = \"0s\"\n";
    let (_dir, broker, default, mut daemon) = Rig::new(class).await.parts();
    let crm = Receiver::start().await;
    // A first start makes the store; then stopped, an endpoint is made with the commands.
    daemon.start();
    assert_eq!(daemon.terminate(), Some(0));
    let secret = [("EDGEHOOK_ENDPOINT_SECRET", SECRET)];
    let (code, out, err) = daemon.cli(
        &[
            "endpoints",
            "create",
            "crm",
            "--url",
            &crm.url,
            "--events",
            "device.*",
        ],
        &secret,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("the daemon is not running: it applies it at its next start"),
        "{out}"
    );
    daemon.start();
    publish_plain_reading(broker.port, "cmd-1", r#"{"config":"v1","seq":1}"#).await;
    crm.wait_until(
        LONG,
        "the device's events at the endpoint made while stopped",
        |s| !s.of_type("device.online").is_empty(),
    )
    .await;

    // Edited: readings too; a test event answered; then deleted with whatever it holds.
    let (code, out, err) = daemon.cli(
        &["endpoints", "edit", "crm", "--events", "sensor.*,device.*"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = daemon.cli(&["endpoints", "test", "crm"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("delivered: HTTP 200"), "{out}");
    crm.fail_with(503);
    let (code, out, err) = daemon.cli(&["endpoints", "test", "crm"], &[]);
    assert_eq!(
        code, 2,
        "a test the receiver refuses fails the command: {out}{err}"
    );
    assert!(err.contains("NOT delivered: HTTP 503"), "{err}");
    publish_plain_reading(broker.port, "cmd-1", r#"{"config":"v1","seq":2,"x":1}"#).await;
    let wait = Instant::now() + LONG;
    until(
        wait,
        || {
            daemon
                .metric("edgehook_endpoint_pending{endpoint=\"crm\"}")
                .unwrap_or(0)
                > 0
        },
        || daemon.log(),
    )
    .await;
    let (code, _, err) = daemon.cli(&["endpoints", "delete", "crm"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("pending"), "refused while events wait: {err}");
    let (code, out, err) = daemon.cli(&["endpoints", "delete", "crm", "--pending", "purge"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("endpoint crm deleted"), "{out}");

    // The device: out of sync with the class's v2; its own v1 puts it in sync; forgotten.
    default
        .wait_until(LONG, "out of sync", |s| {
            !s.of_type("device.out_of_sync").is_empty()
        })
        .await;
    let (code, out, err) = daemon.cli(&["devices", "desire", "cmd-1", "v1"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("desired \"v1\"; in sync"), "{out}");
    default
        .wait_until(LONG, "in sync", |s| !s.of_type("device.in_sync").is_empty())
        .await;
    let (code, out, err) = daemon.cli(&["devices", "show", "cmd-1"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("in sync (reports \"v1\", desired for it \"v1\")"),
        "{out}"
    );
    let (code, out, err) = daemon.cli(&["devices", "forget", "cmd-1"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    default
        .wait_until(LONG, "forgotten", |s| {
            !s.of_type("device.unregistered").is_empty()
        })
        .await;
    let (code, _, err) = daemon.cli(&["devices", "forget", "cmd-1"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("no device `cmd-1`"), "{err}");
    assert_eq!(daemon.terminate(), Some(0));
    // Stopped, a device cannot be forgotten: the running daemon changes devices.
    let (code, _, err) = daemon.cli(&["devices", "forget", "cmd-1"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("the daemon is not running"), "{err}");
}

async fn publish_plain_reading(port: u16, device: &str, payload: &str) {
    let topic = format!("sensors/{device}/reading");
    common::publish_plain(port, &format!("pub-{device}"), &[(topic.as_str(), payload)]).await;
}
