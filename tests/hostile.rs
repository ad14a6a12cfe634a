//! Input nobody vetted, at the door: what a device publishes, what a receiver or client sends.
//! Each test is one of issue #43's findings, reproduced end to end (a real broker, receiver
//! and daemon): the daemon neither crashes, freezes nor grows, every other device is still
//! delivered, and nothing acknowledged is lost.

mod common;

use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(30);

/// The test configuration with one more subscription, `mapped/{device}`, through `jq`.
fn with_mapping(dir: &std::path::Path, broker: u16, receiver: &str, jq: &str) -> Daemon {
    let metrics_port = free_port();
    let text = config_text(broker, receiver, metrics_port, &dir.join("state"), "").replacen(
        "subscriptions = [",
        &format!("subscriptions = [\n  {{ topic = \"mapped/{{device}}\", kind = \"reading\", jq = '''{jq}''' }},"),
        1,
    );
    Daemon::with_config(dir, metrics_port, &text)
}

/// utime + stime of `pid`, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn alive(daemon: &Daemon) -> bool {
    daemon
        .pid()
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        && http_get(daemon.metrics_port, "/healthz").is_some()
}

/// #43.1, .3, .4: a payload of 8,000 `[` (jaq's reader recursed until the stack overflowed:
/// SIGABRT, again at every start as the broker redelivered it), `{"n": 1e12}` into
/// `range(0; .n)` (the whole daemon froze) and a level of 10⁹ into `"#" * .level` (1.9 GB)
/// are each one counted decode error; the devices around them are delivered, and a restart
/// meets nothing left to crash on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_payload_cannot_crash_freeze_or_bloat_the_daemon_through_a_jq_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let jq = r##"{v: .v, last: (if .n then last(range(0; .n)) else 0 end), bar: ("#" * (.level // 1) | length)}"##;
    let mut daemon = with_mapping(dir.path(), broker.port, &receiver.url, jq);
    daemon.start();
    let deep = "[".repeat(8000);
    let started = Instant::now();
    publish_plain(
        broker.port,
        "hostile-1",
        &[
            ("mapped/hostile-deep", deep.as_str()),
            ("mapped/hostile-loop", r#"{"n":1e12}"#),
            ("mapped/hostile-heap", r#"{"level":1000000000}"#),
            ("mapped/good-1", r#"{"v":1}"#),
            ("sensors/plain-1/reading", r#"{"presence":true,"seq":1}"#),
        ],
    )
    .await;
    receiver
        .wait_until(LONG, "both good devices' readings", |s| {
            s.readings_of("good-1").len() == 1 && s.readings_of("plain-1").len() == 1
        })
        .await;
    assert!(alive(&daemon), "the daemon died:\n{}", daemon.log());
    daemon
        .wait_metric("edgehook_decode_errors_total{kind=\"mapping\"}", 2)
        .await;
    daemon
        .wait_metric("edgehook_decode_errors_total{kind=\"not_json\"}", 1)
        .await;
    // The loop was stopped at its budget, not run to its end.
    assert!(started.elapsed() < LONG, "{:?}", started.elapsed());
    let log = daemon.log();
    assert!(log.contains("time budget"), "{log}");
    assert!(log.contains("memory budget"), "{log}");
    receiver.seen(|s| {
        assert_eq!(s.bad_signatures, 0);
        assert_eq!(
            s.readings_of("good-1")[0],
            serde_json::json!({"v": 1, "last": 0, "bar": 1})
        );
        for hostile in ["hostile-deep", "hostile-loop", "hostile-heap"] {
            assert!(s.readings_of(hostile).is_empty(), "{hostile}");
        }
    });
    // They were acknowledged: a restart is not met by them again.
    assert_eq!(daemon.terminate(), Some(0));
    daemon.start();
    publish_plain(broker.port, "hostile-2", &[("mapped/good-1", r#"{"v":2}"#)]).await;
    receiver
        .wait_until(LONG, "the good device's second reading", |s| {
            s.readings_of("good-1").len() == 2
        })
        .await;
    assert!(alive(&daemon), "{}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
}

/// #43.2, .11: a template's `fromjson` on a device's string of 20,000 `[` crashed the daemon,
/// and since the event was durable, every start after; a template that loops left its thread
/// spinning for good. Now each such event is a dead letter saying why, the next events are
/// delivered, and a restart is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_breaks_its_budget_on_an_event_makes_it_a_dead_letter() {
    let (_dir, broker, receiver, mut daemon) = Rig::with_webhook(|url| {
        let webhook = webhook_section(
            url,
            r#"events = ["sensor.*"]
template = '''
{device: .data.device_id, seq: .data.fields.seq,
 parsed: (if .data.fields.s then (.data.fields.s | fromjson) else null end),
 spin: (if .data.fields.n then last(range(0; .data.fields.n)) else 0 end)}'''"#,
        );
        // Room in a device's kept values for the 20,000-character string.
        format!("{webhook}\n[devices]\nmax_state_bytes = 65536\n")
    })
    .await
    .parts();
    daemon.start();
    let deep = serde_json::json!({"s": "[".repeat(20_000), "seq": 2}).to_string();
    let topic = "sensors/tpl-1/reading";
    publish_plain(
        broker.port,
        "tpl",
        &[
            (topic, r#"{"seq":1,"v":1}"#),
            (topic, deep.as_str()),
            (topic, r#"{"seq":3,"n":1e12}"#),
            (topic, r#"{"seq":4,"v":4}"#),
        ],
    )
    .await;
    receiver
        .wait_until(LONG, "readings 1 and 4", |s| s.events.len() == 2)
        .await;
    daemon
        .wait_metric("edgehook_dead_letters_total{endpoint=\"default\"}", 2)
        .await;
    assert!(alive(&daemon), "{}", daemon.log());
    // Nothing left spinning: before, each stopped template kept a thread at ~0.8 core.
    let pid = daemon.pid().unwrap();
    let cpu = || proc_cpu_ticks(pid);
    let before = cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu() - before;
    assert!(spent < 50, "{spent} ticks of CPU in 2 s while idle");
    receiver.seen(|s| {
        let seqs: Vec<_> = s.events.iter().map(|e| e["seq"].clone()).collect();
        assert_eq!(seqs, [serde_json::json!(1), serde_json::json!(4)]);
    });
    assert_eq!(daemon.terminate(), Some(0));
    let (code, out, err) = daemon.outbox_cli(&["list", "--dead"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("deeper than 128"), "{out}");
    assert!(out.contains("time budget"), "{out}");
    // No thread or process of the daemon's is left spinning after the stop.
    daemon.start();
    assert!(alive(&daemon), "{}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
}

/// #43.15: a secret given with the wrong type (`"secrets": "whsec_…"` for a list, a number for
/// the secret, a header value that is a number) came back verbatim in the 400 answer and in
/// `endpoints create`'s output. Now the answer names the field and what it expects, never the
/// value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_given_with_the_wrong_type_is_never_echoed() {
    let (dir, _broker, receiver, mut daemon) = Rig::start("").await.parts();
    let api = Api::with_token(&daemon);
    let whsec = "whsec_c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1iZS1lY2hvZWQ=";
    #[rustfmt::skip]
    let bodies = [
        (serde_json::json!({"name": "a", "url": receiver.url, "secrets": whsec}), "secrets", whsec.to_string()),
        (serde_json::json!({"name": "b", "url": receiver.url, "secret": 987654321987u64}), "secret", "987654321987".to_string()),
        (serde_json::json!({"name": "c", "url": receiver.url, "secret": "s-1", "headers": {"X-Api-Key": 424242424242u64}}), "headers", "424242424242".to_string()),
    ];
    for (body, field, value) in &bodies {
        let answer = api
            .call("POST", "/v1/endpoints", "/v1/endpoints", Some(body))
            .await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert!(!answer.body.contains(value.as_str()), "{}", answer.body);
        assert!(
            answer.body.contains(field),
            "names the field: {}",
            answer.body
        );
    }
    // The command line says what the API said, and no more.
    let settings = dir.path().join("settings.json");
    std::fs::write(&settings, serde_json::json!({"secrets": whsec}).to_string()).unwrap();
    let (code, out, err) = daemon.cli(
        &[
            "endpoints",
            "create",
            "a",
            "--url",
            &receiver.url,
            "--settings",
            settings.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(!out.contains(whsec) && !err.contains(whsec), "{out}{err}");
    assert!(!daemon.log().contains(whsec));
    assert_eq!(daemon.terminate(), Some(0));
}

/// #43.8: 32 idle keep-alive connections, each sending one request every 3 s, locked
/// everyone out of the listener: `/healthz` and the API went unanswered. Now a new
/// connection closes an idle one (the unproven first), so health checks and the token
/// holder always get in, and the flood costs the daemon no more than its 32 slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_cannot_lock_out_health_checks_or_the_api() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, _broker, _receiver, mut daemon) = Rig::start("").await.parts();
    let port = daemon.metrics_port;
    let request = format!("GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    // 40 connections, each answered once and then kept alive with a request every 2 s.
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut hostile = Vec::new();
    for _ in 0..40 {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (request, closed) = (request.clone(), closed.clone());
        hostile.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            for _ in 0..8 {
                if conn.write_all(request.as_bytes()).await.is_err()
                    || !matches!(
                        tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await,
                        Ok(Ok(n)) if n > 0
                    )
                {
                    closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Health checks and the API, each on a new connection, answered at once.
    let api = Api::with_token(&daemon);
    for _ in 0..5 {
        let started = Instant::now();
        let health = tokio::time::timeout(
            Duration::from_secs(3),
            raw(
                port,
                "GET",
                "/healthz",
                &[("Host".into(), format!("127.0.0.1:{port}"))],
                None,
            ),
        )
        .await
        .expect("/healthz answered while the flood holds its connections");
        assert_eq!(health.status, 200);
        let endpoints = tokio::time::timeout(
            Duration::from_secs(3),
            api.get("/v1/endpoints", "/v1/endpoints"),
        )
        .await
        .expect("the API answered while the flood holds its connections");
        assert_eq!(endpoints.status, 200);
        assert!(started.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        closed.load(std::sync::atomic::Ordering::Relaxed) >= 8,
        "idle flood connections were closed to make room"
    );
    for h in hostile {
        h.abort();
    }
    assert_eq!(daemon.terminate(), Some(0));
}

/// #43.5: readings of 60 KB from made-up ids (under `max_devices` and `max_payload_bytes`)
/// were all kept: 186 MB resident, 183 MB to start again, an 86 MiB `GET /v1/devices`. Past
/// `devices.max_state_bytes` a reading is skipped, counted and logged; other devices flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_readings_from_made_up_devices_are_skipped_not_kept() {
    let (_dir, broker, receiver, mut daemon) = Rig::start("").await.parts();
    let big = serde_json::json!({"blob": "x".repeat(60_000), "seq": 1}).to_string();
    let topics: Vec<String> = (0..20)
        .map(|i| format!("sensors/made-up-{i}/reading"))
        .collect();
    let mut messages: Vec<(&str, &str)> =
        topics.iter().map(|t| (t.as_str(), big.as_str())).collect();
    messages.push(("sensors/real-1/reading", r#"{"presence":true,"seq":1}"#));
    publish_plain(broker.port, "flood", &messages).await;
    receiver
        .wait_until(LONG, "the real device's reading", |s| {
            s.readings_of("real-1").len() == 1
        })
        .await;
    daemon
        .wait_metric(
            "edgehook_device_messages_refused_total{reason=\"max_state_bytes\"}",
            20,
        )
        .await;
    let devices = Api::with_token(&daemon)
        .get("/v1/devices", "/v1/devices")
        .await;
    assert_eq!(devices.status, 200);
    assert!(
        devices.body.len() < 16 * 1024,
        "{} bytes",
        devices.body.len()
    );
    assert!(receiver.seen(|s| s.readings_of("made-up-0").is_empty()));
    assert!(daemon.log().contains("devices.max_state_bytes"));
    assert_eq!(daemon.terminate(), Some(0));
}

/// #43 (also): the state directory, the write-ahead log and the delivery log were
/// world-readable (0755/0644) though they hold every event's data. Now the directory is 0700
/// and what the daemon writes 0600, whatever umask it was started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_is_readable_by_the_daemon_alone() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, broker, receiver, mut daemon) = Rig::new("").await.parts();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    daemon.start();
    publish_plain(
        broker.port,
        "p",
        &[("sensors/perm-1/reading", r#"{"presence":true}"#)],
    )
    .await;
    receiver
        .wait_until(LONG, "the reading", |s| s.readings_of("perm-1").len() == 1)
        .await;
    assert_eq!(daemon.terminate(), Some(0));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    let mut seen = 0;
    for entry in std::fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            mode(&path) & 0o077,
            0,
            "{} is {:o}",
            path.display(),
            mode(&path)
        );
        assert_eq!(mode(&path) & want, want, "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 3, "the store, the log, the token");
}

/// Found by the `api_bodies` fuzz target: an endpoint URL whose host mixes upper-case ASCII
/// with letters outside it (`https://mS0γ/`) panicked inside the URL parser's host-name stub —
/// an abort of the daemon from one API request. Now refused with 400, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_url_with_a_non_ascii_host_is_refused_not_a_crash() {
    let (_dir, _broker, _receiver, mut daemon) = Rig::start("").await.parts();
    let api = Api::with_token(&daemon);
    let body =
        serde_json::json!({"name": "crm", "url": "https://mS0c2V\u{3b3}jcmV/c/", "secret": SECRET});
    let answer = api
        .call("POST", "/v1/endpoints", "/v1/endpoints", Some(&body))
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("punycode"), "{}", answer.body);
    assert!(alive(&daemon), "{}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
}

/// #43.5: one `GET /v1/devices` answered every device (86 MiB, a 451 MB peak) and the console
/// polled it every 2 s; the device stage copied its whole registry for each. Devices are
/// answered a page at a time (`limit`, at most 1,000; `after` the previous page's `next`), and
/// the stage copies only the page; the command line follows the pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_list_is_answered_a_page_at_a_time() {
    let (_dir, broker, receiver, mut daemon) = Rig::start("").await.parts();
    let topics: Vec<String> = (0..5)
        .map(|i| format!("sensors/page-{i}/reading"))
        .collect();
    let messages: Vec<(&str, &str)> = topics
        .iter()
        .map(|t| (t.as_str(), r#"{"presence":true}"#))
        .collect();
    publish_plain(broker.port, "pages", &messages).await;
    receiver
        .wait_until(LONG, "five devices", |s| {
            s.of_type("sensor.reading.updated").len() == 5
        })
        .await;
    let api = Api::new(daemon.metrics_port);
    let mut seen = Vec::new();
    let mut path = "/v1/devices?limit=2".to_string();
    let mut pages = 0;
    loop {
        let page = api.get("/v1/devices", &path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        let ids: Vec<String> = page["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        assert!(ids.len() <= 2);
        seen.extend(ids);
        pages += 1;
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/devices?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..5).map(|i| format!("page-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(pages, 3);
    let too_many = api.get("/v1/devices", "/v1/devices?limit=100000").await;
    assert_eq!(too_many.status, 400);
    let one = api.get("/v1/devices/{id}", "/v1/devices/page-3").await;
    assert_eq!(one.json()["id"], "page-3");
    let (code, out, err) = daemon.cli(&["devices"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("page-")).count(),
        5,
        "{out}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// #43 (memory at the limits): a page of 1,000 devices that each keep close to
/// `devices.max_state_bytes` was about 4 MB of JSON, built whole for every reader (eight at
/// once took the daemon past its `MemoryMax`). A page stops at 1 MiB, says where the next
/// starts, and the pages together hold every device: from the running daemon and from the
/// store of a stopped one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_devices_stays_within_a_mebibyte() {
    const DEVICES: usize = 320;
    let (_dir, broker, receiver, mut daemon) = Rig::start("").await.parts();
    let topics: Vec<String> = (0..DEVICES)
        .map(|i| format!("sensors/large-{i:03}/reading"))
        .collect();
    let body = format!(r#"{{"presence":true,"note":"{}"}}"#, "n".repeat(3_700));
    let messages: Vec<(&str, &str)> = topics.iter().map(|t| (t.as_str(), body.as_str())).collect();
    publish_plain(broker.port, "large", &messages).await;
    receiver
        .wait_until(LONG, "every device's reading", |s| {
            s.of_type("sensor.reading.updated").len() == DEVICES
        })
        .await;
    let api = Api::new(daemon.metrics_port);
    let mut seen = Vec::new();
    let mut path = "/v1/devices?limit=1000".to_string();
    loop {
        let page = api.get("/v1/devices", &path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            page.body.len() <= 1 << 20,
            "a page of {} bytes",
            page.body.len()
        );
        let page = page.json();
        let ids = page["devices"].as_array().unwrap();
        assert!(!ids.is_empty());
        seen.extend(ids.iter().map(|d| d["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/devices?limit=1000&after={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..DEVICES).map(|i| format!("large-{i:03}")).collect();
    assert_eq!(
        seen, expected,
        "the pages, in order, hold every device once"
    );
    assert!(seen.len() > 1, "more than one page");
    let (code, out, err) = daemon.cli(&["devices", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["devices"].as_array().unwrap().len(), DEVICES);
    assert_eq!(daemon.terminate(), Some(0));
    // Stopped: the store answers, a page at a time as well.
    let (code, out, err) = daemon.cli(&["devices", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
}
