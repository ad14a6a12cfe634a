//! MQTT over TLS against a real mosquitto TLS listener with a private CA: verified when the CA
//! is configured, refused when it is not (certificates are never accepted unverified).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_port, Daemon, Mosquitto, Receiver};
use firmware_sim::{DeviceClass, Firmware, SimDevice, Topics};

/// A throwaway CA and a server certificate for 127.0.0.1 / localhost, made with openssl.
fn make_certs(dir: &Path) {
    let sh = |script: &str| {
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
    };
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
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
