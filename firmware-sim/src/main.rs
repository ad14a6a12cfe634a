//! `firmware-sim`: run simulated occupancy sensors and room displays against an MQTT broker.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use firmware_sim::serial::{run_serial_bus, SerialBusConfig, SerialFraming};
use firmware_sim::{run_fleet, FleetConfig, Topics};

/// Simulated room hardware for edgehook. Each device is its own MQTT client with a retained
/// `offline` last-will and an `online` birth message on devices/<id>/status; sensors publish
/// sensors/<id>/reading and displays rooms/<id>/display, at QoS 1, deterministic from --seed.
///
/// Example: 200 devices, 100 readings each, as fast as the broker takes them:
///   firmware-sim --broker 127.0.0.1:1883 --sensors 150 --displays 50 --readings 100 --interval 0s
///
/// Serial devices on a pseudo-terminal instead: firmware-sim serial --help
/// Modbus people counters (RTU on a pseudo-terminal, or TCP): firmware-sim modbus --help
#[derive(Debug, Parser)]
#[command(
    name = "firmware-sim",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    serial: Option<Command>,
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
    /// Publish as this ecosystem does (its topics and payloads; edgehook's preset of the same
    /// name takes them): edgehook, zigbee2mqtt, chirpstack, the_things_stack, tasmota, shelly.
    #[arg(long, default_value = "edgehook", value_parser = profile)]
    profile: firmware_sim::Profile,
}

fn profile(name: &str) -> Result<firmware_sim::Profile, String> {
    firmware_sim::Profile::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = firmware_sim::Profile::ALL
            .iter()
            .map(|p| p.name())
            .collect();
        format!("one of: {}", names.join(", "))
    })
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Occupancy sensors on one serial line: a real pseudo-terminal, reachable at --link (like
    /// /dev/serial/by-id/...). Point edgehook's [[serial_ports]] path at the link.
    ///
    /// Example: two sensors, text frames, 5% line faults, unplugged every 30 s for 3 s:
    ///   firmware-sim serial --link /tmp/ttySIM0 --sensors 2 --fault-ratio 0.05 --unplug-every 30s
    #[command(verbatim_doc_comment)]
    Serial(SerialArgs),
    /// People counters answering Modbus reads: units 1..=N on an RTU line (a real
    /// pseudo-terminal at --link), or behind a Modbus TCP server (--tcp), people walking in and
    /// out at random. It prints the [modbus] configuration that reads them.
    ///
    /// Example: three counters, the second silent, the third answering with bad CRCs:
    ///   firmware-sim modbus --link /tmp/ttyMB0 --counters 3 --silent 2 --bad-crc 3
    #[command(verbatim_doc_comment)]
    Modbus(ModbusArgs),
}

#[derive(Debug, clap::Args)]
struct ModbusArgs {
    /// RTU: the path of the link to create, pointing at the pty's device node.
    #[arg(long, required_unless_present = "tcp")]
    link: Option<std::path::PathBuf>,
    /// TCP: the address to listen on, e.g. 127.0.0.1:1502.
    #[arg(long, conflicts_with = "link")]
    tcp: Option<String>,
    /// People counters: units 1 to this.
    #[arg(long, default_value_t = 1)]
    counters: u8,
    /// A unit that never answers (powered off, a broken wire); may be repeated.
    #[arg(long)]
    silent: Vec<u8>,
    /// A unit that answers with a bad CRC; may be repeated.
    #[arg(long)]
    bad_crc: Vec<u8>,
    /// How often someone walks through (in or out of a counter's door).
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    interval: Duration,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

async fn modbus(args: ModbusArgs) -> anyhow::Result<()> {
    use firmware_sim::modbus::{people_counter, walk, Behaviour, Units, PEOPLE_COUNTER_MAP};
    anyhow::ensure!(
        (1..=247).contains(&args.counters),
        "--counters must be 1-247"
    );
    let units = Units::default();
    let addresses: Vec<u8> = (1..=args.counters).collect();
    for &u in &addresses {
        units.add(u, people_counter(0, 0, 215));
    }
    for (list, behaviour) in [
        (&args.silent, Behaviour::Silent),
        (&args.bad_crc, Behaviour::BadCrc),
    ] {
        for &u in list {
            anyhow::ensure!(
                addresses.contains(&u),
                "unit {u} is not among 1-{}",
                args.counters
            );
            units.with(u, |unit| unit.behaviour = behaviour);
        }
    }
    let (_link, _serving, at) = match (&args.link, &args.tcp) {
        (Some(path), _) => {
            let link = firmware_sim::serial::SerialLink::plug(path)?;
            let serving = firmware_sim::modbus::serve_rtu(&link, units.clone())?;
            (
                Some(link),
                serving,
                format!("path = \"{}\"\nparity = \"none\"", path.display()),
            )
        }
        (None, Some(address)) => {
            let listener = std::net::TcpListener::bind(address)?;
            let serving = firmware_sim::modbus::serve_tcp(listener, units.clone())?;
            (None, serving, format!("address = \"{address}\""))
        }
        (None, None) => anyhow::bail!("give --link (RTU) or --tcp (Modbus TCP)"),
    };
    let devices: Vec<String> = addresses
        .iter()
        .map(|u| format!("{{ id = \"counter-{u}\", unit = {u}, map = \"people-counter\" }}"))
        .collect();
    println!(
        "firmware-sim: {} people counter(s) answering Modbus reads; edgehook reads them with:\n\n{PEOPLE_COUNTER_MAP}\n[[modbus.buses]]\n{at}\ndevices = [{}]\n",
        args.counters,
        devices.join(", ")
    );
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let mut walked = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(args.interval) => {
                walk(&units, &addresses, &mut rng);
                walked += 1;
            }
        }
    }
    let requests: u64 = addresses.iter().map(|&u| units.requests(u)).sum();
    println!("{walked} walked through; {requests} read request(s) answered or ignored");
    Ok(())
}

#[derive(Debug, clap::Args)]
struct SerialArgs {
    /// Path of the link to create, pointing at the pty's device node.
    #[arg(long)]
    link: std::path::PathBuf,
    /// Sensors on the line (a bus): <prefix>-1, <prefix>-2, ...
    #[arg(long, default_value_t = 1)]
    sensors: usize,
    #[arg(long, value_enum, default_value_t = Framing::Text)]
    framing: Framing,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Pause between rounds of readings.
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    interval: Duration,
    /// Readings per sensor, then stop. Default: run until Ctrl-C.
    #[arg(long)]
    readings: Option<u64>,
    #[arg(long, default_value_t = 0.3)]
    change_ratio: f64,
    /// Share of frames damaged on the line (wrong checksum, or line noise before them).
    #[arg(long, default_value_t = 0.0)]
    fault_ratio: f64,
    /// Unplug the adapter this often (the link disappears and the line hangs up).
    #[arg(long, value_parser = humantime_duration)]
    unplug_every: Option<Duration>,
    /// How long each unplug lasts.
    #[arg(long, default_value = "3s", value_parser = humantime_duration)]
    unplug_for: Duration,
    /// Device id prefix.
    #[arg(long, default_value = "serial-occ")]
    prefix: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Framing {
    /// `$OCC,<id>,<presence>,<temperature>,<seq>*CS`
    Text,
    /// `{"device":"<id>","presence":true,...}`
    JsonLines,
}

async fn serial(args: SerialArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.change_ratio) && (0.0..=1.0).contains(&args.fault_ratio),
        "--change-ratio and --fault-ratio must be between 0 and 1"
    );
    let config = SerialBusConfig {
        link: args.link.clone(),
        sensors: args.sensors,
        prefix: args.prefix,
        seed: args.seed,
        framing: match args.framing {
            Framing::Text => SerialFraming::Text,
            Framing::JsonLines => SerialFraming::JsonLines,
        },
        interval: args.interval,
        readings: args.readings,
        change_ratio: args.change_ratio,
        fault_ratio: args.fault_ratio,
        unplug_every: args.unplug_every,
        unplug_for: args.unplug_for,
    };
    println!(
        "firmware-sim: {} serial sensor(s) on a pseudo-terminal; open it at {}\n  edgehook: [[serial_ports]] path = \"{}\", framing = \"{}\"",
        config.sensors,
        args.link.display(),
        args.link.display(),
        match config.framing {
            SerialFraming::Text => "text",
            SerialFraming::JsonLines => "json_lines",
        }
    );
    let stats = run_serial_bus(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    println!(
        "wrote {} readings ({} changes, {} with a bad checksum), {} unplug(s)",
        stats.fleet.readings, stats.fleet.changes, stats.corrupted, stats.unplugs
    );
    Ok(())
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
    match args.serial {
        Some(Command::Serial(serial_args)) => return serial(serial_args).await,
        Some(Command::Modbus(modbus_args)) => return modbus(modbus_args).await,
        None => {}
    }
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
        topics: Topics::profile(args.profile),
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
