//! `firmware-sim`: run simulated occupancy sensors and room displays against an MQTT broker.

use std::time::Duration;

use clap::Parser;
use firmware_sim::{run_fleet, FleetConfig, Topics};

/// Simulated room hardware for edgehook. Each device is its own MQTT client with a retained
/// `offline` last-will and an `online` birth message on devices/<id>/status; sensors publish
/// sensors/<id>/reading and displays rooms/<id>/display, at QoS 1, deterministic from --seed.
///
/// Example: 200 devices, 100 readings each, as fast as the broker takes them:
///   firmware-sim --broker 127.0.0.1:1883 --sensors 150 --displays 50 --readings 100 --interval 0s
#[derive(Debug, Parser)]
#[command(name = "firmware-sim", version, verbatim_doc_comment)]
struct Args {
    /// Broker address, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Number of occupancy sensors.
    #[arg(long, default_value_t = 4)]
    sensors: usize,
    /// Number of room displays.
    #[arg(long, default_value_t = 1)]
    displays: usize,
    /// Seed for everything the devices publish.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Pause between one device's readings (e.g. 500ms, 2s; 0s = as fast as possible).
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    interval: Duration,
    /// Readings per device, then stop (announcing offline). Default: run until Ctrl-C.
    #[arg(long)]
    readings: Option<u64>,
    /// Share of readings that change a tracked field (0.0 – 1.0).
    #[arg(long, default_value_t = 0.3)]
    change_ratio: f64,
    /// Device id prefix: <prefix>-occ-N, <prefix>-disp-N.
    #[arg(long, default_value = "sim")]
    prefix: String,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number and a unit, like 500ms or 2s"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("`{s}`: unit must be ms, s or m")),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.change_ratio),
        "--change-ratio must be between 0 and 1"
    );
    let (host, port) = args
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--broker must be host:port, got `{}`", args.broker))?;
    let config = FleetConfig {
        host,
        port,
        sensors: args.sensors,
        displays: args.displays,
        seed: args.seed,
        interval: args.interval,
        readings: args.readings,
        change_ratio: args.change_ratio,
        prefix: args.prefix,
        topics: Topics::default(),
    };
    eprintln!(
        "firmware-sim: {} device(s) against {}:{}",
        config.sensors + config.displays,
        config.host,
        config.port
    );
    let stats = run_fleet(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    println!(
        "published {} readings ({} changes)",
        stats.readings, stats.changes
    );
    Ok(())
}
