//! systemd's notify protocol, with the test playing systemd: READY only once the broker is
//! connected, watchdog pings, STOPPING on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Daemon, Mosquitto, Receiver};

fn messages_until(sock: &UnixDatagram, within: Duration, want: &str) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            got.push(msg);
            if done {
                break;
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_the_broker_connects_then_watchdog_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path());
    broker.kill(); // the broker is down when the service starts
    let receiver = Receiver::start().await;
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let mut daemon = Daemon::new(dir.path(), broker.port, &receiver.url, "");
    daemon
        .env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    daemon.env.push(("WATCHDOG_USEC".into(), "600000".into()));
    daemon.spawn();

    let early = messages_until(&sock, Duration::from_millis(1500), "READY=1");
    assert!(
        early.iter().all(|m| !m.contains("READY=1")),
        "READY before the broker is up: {early:?}"
    );
    assert!(
        early.iter().any(|m| m.contains("WATCHDOG=1")),
        "the watchdog is fed while waiting: {early:?}"
    );

    broker.restart();
    let got = messages_until(&sock, Duration::from_secs(20), "READY=1");
    assert!(
        got.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "{got:?}\n{}",
        daemon.log()
    );
    assert_eq!(daemon.metric("edgehook_mqtt_connected"), Some(1));

    let pings = messages_until(&sock, Duration::from_secs(1), "never");
    assert!(
        pings.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "{pings:?}"
    );

    let sock2 = sock.try_clone().unwrap();
    let stopping =
        std::thread::spawn(move || messages_until(&sock2, Duration::from_secs(10), "STOPPING=1"));
    assert_eq!(daemon.terminate(), Some(0));
    let got = stopping.join().unwrap();
    assert!(
        got.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{got:?}"
    );
}
