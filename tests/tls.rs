//! MQTT over TLS against a real mosquitto TLS listener with a private CA: verified when the CA
//! is configured, refused when it is not (certificates are never accepted unverified).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_port, Daemon, Mosquitto, Receiver, Rig};
use firmware_sim::{DeviceClass, Firmware, SimDevice, Topics};

/// Run `script` with bash in `dir`; it must succeed.
fn sh(dir: &Path, script: &str) {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA and a server certificate for 127.0.0.1 / localhost, made with openssl.
fn make_certs(dir: &Path) {
    sh(dir, "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
          -days 2 -subj '/CN=edgehook test CA' 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr \
          -subj '/CN=localhost' 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > ext.cnf
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
          -extfile ext.cnf 2>/dev/null
        chmod 644 server.key");
}

fn tls_broker(dir: &Path) -> (Mosquitto, u16) {
    make_certs(dir);
    let tls_port = free_port();
    let d = dir.display();
    let broker = Mosquitto::start_with(
        dir,
        &format!("listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"),
    );
    (broker, tls_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_private_ca_connects_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, tls_port) = tls_broker(dir.path());
    let receiver = Receiver::start().await;
    let extra = format!(
        "[mqtt.tls]\nenabled = true\nca_file = \"{}/ca.pem\"\n",
        dir.path().display()
    );
    let mut daemon = Daemon::new(dir.path(), tls_port, &receiver.url, &extra);
    daemon.start();
    assert!(daemon.metric("edgehook_mqtt_connected") == Some(1));

    // Devices publish on the plain listener of the same broker.
    let mut dev = SimDevice::connect(
        "127.0.0.1",
        broker.port,
        Firmware::new("tls-occ-1", DeviceClass::OccupancySensor, 3),
        Topics::default(),
    )
    .await
    .unwrap();
    let (payload, _) = dev.publish_next(1.0).await.unwrap();
    dev.flushed().await.unwrap();
    receiver
        .wait_until(Duration::from_secs(30), "the reading over TLS", |s| {
            s.of_type("sensor.reading.updated")
                .iter()
                .any(|e| e["data"]["fields"] == payload)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_the_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, tls_port) = tls_broker(dir.path());
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::new(
        dir.path(),
        tls_port,
        &receiver.url,
        "[mqtt.tls]\nenabled = true\n",
    );
    daemon.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !daemon.log().contains("MQTT connection lost or refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        daemon.metric("edgehook_mqtt_connected"),
        Some(0),
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.metric("edgehook_mqtt_connects_total"), Some(0));
    let log = daemon.log().to_lowercase();
    assert!(
        log.contains("certificate") || log.contains("issuer"),
        "the reason is logged:\n{log}"
    );
    let health = common::http_get(daemon.metrics_port, "/healthz").unwrap();
    assert!(health.contains("not connected"), "{health}");
}

/// A second key and certificate for 127.0.0.1 from the same CA: a renewal.
fn renew_cert(dir: &Path) {
    sh(
        dir,
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout new.key -out new.csr \
           -subj '/CN=localhost' 2>/dev/null
         openssl x509 -req -in new.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out new.pem -days 2 \
           -extfile ext.cnf 2>/dev/null",
    );
}

/// An HTTPS client that trusts exactly the certificate in `pem` (the library's own pinning,
/// which the commands use), or the CA in `ca`.
fn https(pem: Option<&Path>, ca: Option<&Path>) -> reqwest::Client {
    let tls = match (pem, ca) {
        (Some(pem), _) => edgehook::tls::pinned_client(pem).unwrap(),
        (None, ca) => edgehook::tls::client_config(ca).unwrap(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Issue 18: off loopback the local server speaks TLS alone, every call but the console's page
/// needs the token (reads and /metrics too), a change from another site is refused, the
/// commands reach it over HTTPS, and a renewed certificate is served after SIGHUP without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_api_is_https_with_the_token_on_every_call_and_its_certificate_reloads() {
    let (dir, _broker, _receiver, mut daemon) = Rig::new("").await.parts();
    make_certs(dir.path());
    let port = free_port();
    let d = dir.path().display().to_string();
    let env = [
        ("EDGEHOOK_TELEMETRY__LISTEN", format!("0.0.0.0:{port}")),
        ("EDGEHOOK_TELEMETRY__TLS_CERT", format!("{d}/server.pem")),
        ("EDGEHOOK_TELEMETRY__TLS_KEY", format!("{d}/server.key")),
    ];
    daemon.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    // Without TLS, off loopback is refused, naming the key.
    let plain = Command::new(env!("CARGO_BIN_EXE_edgehook"))
        .arg("check-config")
        .arg(dir.path().join("edgehook.toml"))
        .env("EDGEHOOK_TELEMETRY__LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .unwrap();
    let plain_err = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(2), "{plain_err}");
    assert!(
        plain_err.contains("telemetry.listen") && plain_err.contains("needs TLS"),
        "{plain_err}"
    );

    daemon.spawn();
    let base = format!("https://127.0.0.1:{port}");
    let ca = dir.path().join("ca.pem");
    let client = https(None, Some(&ca));
    let wait = std::time::Instant::now() + Duration::from_secs(20);
    let token = loop {
        if let Ok(t) = std::fs::read_to_string(dir.path().join("state/api-token")) {
            let t = t.trim().to_string();
            let health = client
                .get(format!("{base}/healthz"))
                .bearer_auth(&t)
                .send()
                .await;
            if health.is_ok_and(|r| r.status() == 200) {
                break t;
            }
        }
        assert!(std::time::Instant::now() < wait, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Plain HTTP gets no answer.
    let plain = client
        .get(format!("http://127.0.0.1:{port}/v1/gateway"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // Every read needs the token, /metrics too; the console's page does not.
    for path in ["/v1/gateway", "/metrics", "/healthz", "/v1/endpoints"] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without the token");
    }
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let gateway = client
        .get(format!("{base}/v1/gateway"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let gateway: serde_json::Value = serde_json::from_slice(&gateway).unwrap();
    assert_eq!(gateway["id"], "gw-test");
    let wrong = client
        .get(format!("{base}/v1/gateway"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let cross_site = client
        .post(format!("{base}/v1/endpoints/default/pause"))
        .bearer_auth(&token)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);

    // The commands reach it over HTTPS, trusting the configured certificate.
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) = daemon.cli(&["outbox", "status"], &env_refs);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("from the running daemon ({base})")),
        "{err}"
    );
    assert!(out.contains("endpoint default: active"), "{out}");

    // A renewed certificate: served once SIGHUP reads it, with no restart.
    renew_cert(dir.path());
    let renewed = dir.path().join("new.pem");
    assert!(
        https(Some(&renewed), None)
            .get(format!("{base}/"))
            .send()
            .await
            .is_err(),
        "the renewal is not served before the reload"
    );
    std::fs::copy(dir.path().join("new.key"), dir.path().join("server.key")).unwrap();
    std::fs::copy(&renewed, dir.path().join("server.pem")).unwrap();
    let pid = daemon.pid().unwrap();
    daemon.signal(1); // SIGHUP
    let wait = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = https(Some(&renewed), None)
            .get(format!("{base}/"))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < wait,
            "renewal not served: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(daemon.pid(), Some(pid), "no restart");
    daemon.assert_logged("TLS certificate is read again");
    assert!(!daemon.log().contains(&token), "the token is never logged");
    assert_eq!(daemon.terminate(), Some(0));
}

/// Issue 19: the push listener off loopback is HTTPS only (a plain one is refused at start,
/// naming the key), verified commands are taken over it, and its certificate is read again on
/// SIGHUP like the local listener's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_push_listener_is_https_and_its_certificate_reloads() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let broker = Mosquitto::start(dir.path());
    let receiver = Receiver::start().await;
    let port = free_port();
    let d = dir.path().display();
    let upstream = |tls: bool| {
        let tls = if tls {
            format!("tls_cert = \"{d}/server.pem\"\ntls_key = \"{d}/server.key\"\n")
        } else {
            String::new()
        };
        format!(
            "[[workspaces]]\nid = \"room-1\"\nsensors = [\"occ-1\"]\n[upstream]\nsecrets = [\"{}\"]\n[upstream.push]\nlisten = \"0.0.0.0:{port}\"\n{tls}",
            common::UPSTREAM_SECRET
        )
    };
    let plain = Daemon::new(dir.path(), broker.port, &receiver.url, &upstream(false));
    drop(plain);
    let refused = Command::new(env!("CARGO_BIN_EXE_edgehook"))
        .arg("check-config")
        .arg(dir.path().join("edgehook.toml"))
        .output()
        .unwrap();
    let refused_err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{refused_err}");
    assert!(
        refused_err.contains("upstream.push.listen") && refused_err.contains("needs TLS"),
        "{refused_err}"
    );
    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, &upstream(true));
    daemon.start();
    let client = https(None, Some(&dir.path().join("ca.pem")));
    let url = format!("https://127.0.0.1:{port}/v1/commands");
    let now = common::unix_now();
    let at = |s: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
            .to_string()
    };
    let push = |id: &'static str, booking: &'static str| {
        let body = serde_json::json!({"type": "booking.start", "data": {"booking_id": booking, "workspace_id": "room-1", "start": at(now + 600), "end": at(now + 1200)}}).to_string();
        let sig = common::sign(common::UPSTREAM_SECRET, id, now, body.as_bytes());
        (body, sig)
    };
    let (body, sig) = push("m-1", "bk-1");
    let r = client
        .post(&url)
        .header("webhook-id", "m-1")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let plain = common::try_raw(
        port,
        "POST",
        "/v1/commands",
        &[],
        Some("{}"),
        Duration::from_secs(5),
    )
    .await;
    assert!(plain.is_err(), "no plain HTTP: {plain:?}");

    renew_cert(dir.path());
    let renewed = dir.path().join("new.pem");
    std::fs::copy(dir.path().join("new.key"), dir.path().join("server.key")).unwrap();
    std::fs::copy(&renewed, dir.path().join("server.pem")).unwrap();
    daemon.signal(1);
    let wait = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (body, sig) = push("m-2", "bk-2");
        let r = https(Some(&renewed), None)
            .post(&url)
            .header("webhook-id", "m-2")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 202) {
            break;
        }
        assert!(
            std::time::Instant::now() < wait,
            "renewal not served: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.assert_logged("listener=\"push\"");
    assert_eq!(daemon.terminate(), Some(0));
}
