//! `edgehook demo`: the whole product in one process, on embedded defaults.
//!
//! An embedded MQTT broker (rumqttd) on a free loopback port, simulated occupancy sensors and a
//! room display (firmware-sim), the real daemon pipeline with its sled outbox in a temporary
//! directory, and a local receiver that verifies each webhook's signature and prints the event.
//! Ctrl-C (or `--duration`) stops the devices first — they announce `offline` — lets the last
//! events through, then shuts the daemon down.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::deliver::Signer;
use crate::secret::Secret;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated occupancy sensors.
    #[arg(long, default_value_t = 3)]
    sensors: usize,
    /// Simulated room displays.
    #[arg(long, default_value_t = 1)]
    displays: usize,
    /// Pause between one device's readings.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop by itself after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Seed for the simulated devices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const DEMO_SECRET: &str = "demo-secret-change-me";

/// The demo devices' offline debounce: short, so that stopping shows `device.offline` soon.
const DEMO_DEBOUNCE_MS: u64 = 1000;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let broker_port = free_port()?;
    start_broker(broker_port)?;
    let (receiver_url, received) = start_receiver().await?;
    let state_dir = std::env::temp_dir().join(format!("edgehook-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).context("creating the demo directory")?;
    let serial_link = state_dir.join("ttyDEMO0");
    let sensors: Vec<String> = (1..=args.sensors)
        .map(|i| format!("demo-occ-{i}"))
        .collect();
    let workspace_sensors = sensors
        .iter()
        .take(2)
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // The console and API on a free loopback port.
    let console_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = Config::from_toml_str(&format!(
        r#"
gateway_id = "demo-gateway"
state_dir = "{state}"
[mqtt]
port = {broker_port}
client_id = "edgehook-demo"
subscriptions = [
  {{ topic = "sensors/{{device}}/reading", kind = "reading", metadata_fields = ["seq", "ts"] }},
  {{ topic = "rooms/{{device}}/display", kind = "reading", metadata_fields = ["seq", "ts"] }},
  {{ topic = "devices/{{device}}/status", kind = "status" }},
  {{ topic = "devices/{{device}}/actions/result", kind = "action_result" }},
]
[[serial_ports]]
path = "{serial}"
framing = "text"
metadata_fields = ["seq"]
reopen_min = "100ms"
[[device_classes]]
name = "occupancy"
match = ["demo-occ-*", "demo-serial-*"]
heartbeat = "{interval}"
debounce = "{DEMO_DEBOUNCE_MS}ms"
deadband = {{ temperature = 0.2 }}
[[device_classes]]
name = "display"
match = ["demo-disp-*"]
heartbeat = "{interval}"
debounce = "{DEMO_DEBOUNCE_MS}ms"
actions = ["show_message"]
[[workspaces]]
id = "meeting-room-1"
sensors = [{workspace_sensors}]
display = "demo-disp-1"
hold = "10s"
[webhook]
url = "{receiver_url}"
secret = "{DEMO_SECRET}"
[telemetry]
listen = "127.0.0.1:{console_port}"
"#,
        state = state_dir.display(),
        serial = serial_link.display(),
        interval = humantime::format_duration(args.interval.max(Duration::from_millis(100))),
    ))
    .context("demo configuration")?;

    println!("edgehook demo");
    println!("  broker    mqtt://127.0.0.1:{broker_port} (embedded rumqttd)");
    println!("  receiver  {receiver_url} (verifies X-Webhook-Signature, HMAC-SHA256)");
    println!("  devices   {} occupancy sensor(s), {} room display(s); workspace meeting-room-1 = [{workspace_sensors}] + demo-disp-1", args.sensors, args.displays);
    println!(
        "  serial    demo-serial-1 on {} (a pseudo-terminal, text frames)",
        serial_link.display()
    );
    println!("  outbox    {}", state_dir.display());
    println!("Ctrl-C to stop.\n");

    // The serial sensor's line first, so the daemon finds it at once.
    let stop = CancellationToken::new();
    let stop_serial = stop.clone();
    let serial_bus = firmware_sim::serial::SerialBusConfig {
        link: serial_link.clone(),
        sensors: 1,
        prefix: "demo-serial".into(),
        seed: args.seed,
        framing: firmware_sim::serial::SerialFraming::Text,
        interval: args.interval,
        readings: None,
        change_ratio: 0.3,
        fault_ratio: 0.0,
        unplug_every: None,
        unplug_for: Duration::ZERO,
    };
    let serial = tokio::spawn(firmware_sim::serial::run_serial_bus(
        serial_bus,
        async move { stop_serial.cancelled().await },
    ));
    while !serial_link.exists() && !serial.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let daemon_cancel = CancellationToken::new();
    let daemon = tokio::spawn(crate::run(config, daemon_cancel.clone()));

    // The console's URL, once the daemon has made its token (at its start).
    for _ in 0..50 {
        if let Ok(Some(token)) = crate::control::auth::read_token(&state_dir) {
            println!(
                "  console   http://127.0.0.1:{console_port}/#token={} (the API under /v1)\n",
                token.expose()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stop_fleet = stop.clone();
    let fleet = firmware_sim::FleetConfig {
        port: broker_port,
        sensors: args.sensors,
        displays: args.displays,
        seed: args.seed,
        interval: args.interval,
        prefix: "demo".into(),
        ..Default::default()
    };
    // Give the daemon a moment to subscribe before the devices say hello.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fleet = tokio::spawn(firmware_sim::run_fleet(fleet, async move {
        stop_fleet.cancelled().await
    }));

    let duration = args.duration;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { tokio::time::sleep(duration.unwrap_or(Duration::MAX)).await }, if duration.is_some() => {}
    }
    println!("\nstopping: devices go offline, then the daemon drains");
    stop.cancel();
    match fleet.await {
        Ok(Ok(stats)) => println!(
            "devices published {} readings ({} changes)",
            stats.readings, stats.changes
        ),
        Ok(Err(e)) => eprintln!("simulated devices failed: {e:#}"),
        Err(e) => eprintln!("simulated devices task failed: {e}"),
    }
    match serial.await {
        Ok(Ok(stats)) => println!(
            "serial sensor wrote {} readings ({} changes)",
            stats.fleet.readings, stats.fleet.changes
        ),
        Ok(Err(e)) => eprintln!("simulated serial sensor failed: {e:#}"),
        Err(e) => eprintln!("simulated serial sensor task failed: {e}"),
    }
    // Let the debounced offline reports out before the daemon stops.
    tokio::time::sleep(Duration::from_millis(DEMO_DEBOUNCE_MS + 700)).await;
    daemon_cancel.cancel();
    let result = daemon.await.context("daemon task")?;
    println!(
        "receiver verified {} webhook(s)",
        received.load(Ordering::Relaxed)
    );
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

fn start_broker(port: u16) -> anyhow::Result<()> {
    let config: rumqttd::Config = serde_json::from_value(serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": 1000,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 10_485_760,
            "max_segment_count": 10,
        },
        "v4": {
            "1": {
                "name": "demo",
                "listen": format!("127.0.0.1:{port}"),
                "next_connection_delay_ms": 1,
                "connections": {
                    "connection_timeout_ms": 60000,
                    "max_payload_size": 1_048_576,
                    "max_inflight_count": 100,
                    "dynamic_filters": true,
                },
            },
        },
    }))
    .context("embedded broker configuration")?;
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("embedded broker stopped: {e}");
            }
        })
        .context("starting the embedded broker")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "embedded broker did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A receiver that verifies signatures and prints each event. Returns its URL and a counter.
async fn start_receiver() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let signer = Arc::new(Signer::new(&Secret::new(DEMO_SECRET)));
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let signer = signer.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    receive(req, signer.clone(), counter.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((format!("http://{addr}/webhook"), count))
}

async fn receive(
    req: Request<hyper::body::Incoming>,
    signer: Arc<Signer>,
    count: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let signature = req
        .headers()
        .get("x-webhook-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = if !signer.verify(&body, &signature) {
        println!("✗ rejected: bad signature");
        StatusCode::UNAUTHORIZED
    } else {
        count.fetch_add(1, Ordering::Relaxed);
        println!("✓ {}", describe(&body));
        StatusCode::OK
    };
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("valid response"))
}

/// One line per event: type, subject, the interesting data, and publish-to-receipt latency.
fn describe(body: &[u8]) -> String {
    let Ok(ev) = serde_json::from_slice::<serde_json::Value>(body) else {
        return "unparseable body".into();
    };
    let data = &ev["data"];
    let subject = data["workspace_id"]
        .as_str()
        .or(data["device_id"].as_str())
        .unwrap_or_default();
    let detail = match ev["type"].as_str().unwrap_or_default() {
        "sensor.reading.updated" => {
            let mut fields = data["fields"].clone();
            let ts = fields.get("ts").and_then(|v| v.as_u64());
            if let Some(o) = fields.as_object_mut() {
                o.remove("ts");
                o.remove("seq");
            }
            let latency = ts
                .map(|ts| {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64;
                    format!("  ({} ms after publish)", now.saturating_sub(ts))
                })
                .unwrap_or_default();
            format!("{fields} changed {}{latency}", data["changed"])
        }
        "workspace.status.updated" => format!(
            "{} (was {}; {})",
            data["status"].as_str().unwrap_or_default(),
            data["previous_status"].as_str().unwrap_or("nothing"),
            data["device_id"]
                .as_str()
                .map_or("hold time over".to_string(), |d| format!("after {d}")),
        ),
        "device.lost_communication" => format!("last seen {}", data["last_seen"]),
        "sensor.reading.stale" => format!("last reading {}", data["last_reading"]),
        _ => String::new(),
    };
    format!(
        "{:<27} {:<14} {detail}",
        ev["type"].as_str().unwrap_or_default(),
        subject
    )
}
