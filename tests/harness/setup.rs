//! How a seed sets the daemon up: its classes, outbox, endpoints and serial port.

use super::*;

/// The classes the harness's devices belong to.
pub const CLASSES: &str = r#"
[[device_classes]]
name = "fast"
match = ["fast-*"]
deadband = { temperature = 0.5 }
debounce = "300ms"

[[device_classes]]
name = "held"
match = ["held-*"]
min_interval = "400ms"
deadband = { temperature = 0.5 }
debounce = "300ms"

[[device_classes]]
name = "quiet"
match = ["quiet-*"]
heartbeat = "1s"
lost_after = 2.0
deadband = { temperature = 0.5 }
debounce = "300ms"

[[device_classes]]
name = "displays"
match = ["disp-*"]
actions = ["show_message"]
action_timeout = "30s"

[[workspaces]]
id = "room-h"
sensors = ["fast-room-a", "fast-room-b"]
hold = "0s"

[[groups]]
id = "room-g"
workspace = "room-h"
aggregates = { temperature = "max" }

[devices]
max_devices = 60
"#;

/// How a seed sets up the outbox and the serial port.
pub struct Setup {
    /// A small outbox that drops its oldest readings when full, instead of back-pressure.
    pub drops: bool,
    /// `ops` gives up (dead letters) after a few attempts or seconds.
    pub gives_up: bool,
    /// `default` sends up to this many events per request (`batch_max_events`), waiting up to
    /// this many milliseconds for them (`batch_linger`).
    pub batch: Option<(usize, u64)>,
    /// `ops` gzips bodies over this many bytes (`compress_above`).
    pub compress: Option<u64>,
    /// `ops` is made through the control API (`edgehook endpoints create`), not the file.
    pub ops_by_api: bool,
    /// Sensors' readings go through a subscription's jq mapping (the identity).
    pub mapped: bool,
    /// Actions go to a display; through the push listener on this port, if set.
    pub actions: Option<Option<u16>>,
    pub serial: PathBuf,
    /// `outbox.checkpoint_interval`, milliseconds.
    pub checkpoint_ms: u64,
    /// People counters on a Modbus line.
    pub modbus: Option<Modbus>,
}

/// People counters (units 1 to `units`) on a Modbus line, and how the daemon reads them.
#[derive(Debug)]
pub struct Modbus {
    pub line: ModbusLine,
    pub units: u8,
    /// A unit beside them (9, `counter-9`) that never answers well: silent, or with bad CRCs.
    /// It must never become a reading, nor hold the others up.
    pub faulty: Option<firmware_sim::modbus::Behaviour>,
    pub timeout_ms: u64,
    pub retries: u8,
    pub offline_after: u8,
    /// Each counter's own `interval` (milliseconds), or the bus's 200 ms.
    pub intervals: Vec<Option<u64>>,
}

/// Where the daemon reaches the counters.
#[derive(Debug)]
pub enum ModbusLine {
    /// RTU on a pseudo-terminal at this path.
    Rtu(PathBuf),
    /// A Modbus TCP gateway listening on this loopback port.
    Tcp(u16),
}

/// The faulty unit's address.
pub const FAULTY_UNIT: u8 = 9;

impl Modbus {
    /// The counters' setup: `units` of them (drawn before the rest existed), the rest from
    /// `rng`.
    fn draw(rng: &mut fastrand::Rng, path: PathBuf, units: u8) -> Modbus {
        use firmware_sim::modbus::Behaviour;
        let line = if rng.u8(..3) == 0 {
            ModbusLine::Tcp(common::free_port())
        } else {
            ModbusLine::Rtu(path)
        };
        // TCP has no CRC: a gateway's unit fails by keeping silent.
        let rtu = matches!(line, ModbusLine::Rtu(_));
        Modbus {
            line,
            units,
            faulty: match rng.u8(..4) {
                0 => Some(Behaviour::Silent),
                1 if rtu => Some(Behaviour::BadCrc),
                1 => Some(Behaviour::Silent),
                _ => None,
            },
            timeout_ms: [50, 100, 200][rng.usize(..3)],
            retries: rng.u8(0..=2),
            offline_after: rng.u8(1..=4),
            intervals: (0..units)
                .map(|_| rng.bool().then(|| [100, 300, 500][rng.usize(..3)]))
                .collect(),
        }
    }

    /// What the story says of it.
    pub fn story(&self) -> String {
        let line = match self.line {
            ModbusLine::Rtu(_) => "an RTU line",
            ModbusLine::Tcp(_) => "a TCP gateway",
        };
        let faulty = self
            .faulty
            .map_or(String::new(), |b| format!(", and a unit {b:?}"));
        format!(
            "{} people counter(s) on Modbus over {line} (timeout {} ms, {} retries, offline after {}, own intervals {:?}){faulty}",
            self.units, self.timeout_ms, self.retries, self.offline_after, self.intervals
        )
    }
}

impl Setup {
    /// The seed's setup, drawn from `rng` (some parts apart, so that the seeds drawn before
    /// they existed keep their scenarios), with the serial port at `serial`.
    pub fn draw(seed: u64, rng: &mut fastrand::Rng, serial: PathBuf) -> Setup {
        let modbus_line = serial.with_file_name("ttyMODBUS");
        Setup {
            drops: rng.u8(..3) == 0,
            gives_up: rng.u8(..3) == 0,
            batch: (rng.u8(..3) == 0).then(|| (rng.usize(2..=50), rng.u64(0..=200))),
            compress: (rng.u8(..3) == 0).then(|| rng.u64(64..=512)),
            ops_by_api: rng.u8(..3) == 0,
            mapped: rng.u8(..3) == 0,
            actions: {
                let mut arng = fastrand::Rng::with_seed(seed ^ 0xac71_0000);
                (arng.u8(..3) == 0).then(|| arng.bool().then(common::free_port))
            },
            serial,
            checkpoint_ms: {
                let mut crng = fastrand::Rng::with_seed(seed ^ 0xc4ec_0000);
                [100, 1_000, 60_000][crng.usize(..3)]
            },
            modbus: {
                let mut mrng = fastrand::Rng::with_seed(seed ^ 0x30db_0000);
                let mut xrng = fastrand::Rng::with_seed(seed ^ 0x30db_0002);
                (mrng.u8(..3) == 0).then(|| Modbus::draw(&mut xrng, modbus_line, mrng.u8(1..=2)))
            },
        }
    }

    /// The `[modbus]` section: the people counters' map and their line, read every 200 ms
    /// unless a counter has its own interval.
    fn modbus_section(&self) -> String {
        let Some(m) = &self.modbus else {
            return String::new();
        };
        let mut devices: Vec<String> = (1..=m.units)
            .zip(&m.intervals)
            .map(|(u, interval)| {
                let own = interval.map_or(String::new(), |ms| format!(", interval = \"{ms}ms\""));
                format!("{{ id = \"counter-{u}\", unit = {u}, map = \"people-counter\"{own} }}")
            })
            .collect();
        if m.faulty.is_some() {
            devices.push(format!(
                "{{ id = \"counter-{FAULTY_UNIT}\", unit = {FAULTY_UNIT}, map = \"people-counter\" }}"
            ));
        }
        let line = match &m.line {
            ModbusLine::Rtu(path) => format!("path = \"{}\"\nparity = \"none\"", path.display()),
            ModbusLine::Tcp(port) => format!("address = \"127.0.0.1:{port}\""),
        };
        format!(
            "{}\n[[modbus.buses]]\n{line}\ninterval = \"200ms\"\ntimeout = \"{}ms\"\nretries = {}\noffline_after = {}\nreopen_min = \"50ms\"\nreopen_max = \"200ms\"\ndevices = [{}]\n",
            firmware_sim::modbus::PEOPLE_COUNTER_MAP,
            m.timeout_ms,
            m.retries,
            m.offline_after,
            devices.join(", ")
        )
    }

    pub fn max_size(&self) -> u64 {
        if self.drops {
            64 << 10 // the least allowed
        } else {
            1 << 20
        }
    }

    /// Everything but the endpoints, with the held class's `min_interval`.
    pub fn rest(&self, min_interval: &str) -> String {
        let on_full = if self.drops {
            "drop_oldest_readings"
        } else {
            "backpressure"
        };
        let upstream = match self.actions {
            Some(Some(port)) => format!(
                "[upstream]\nsecrets = [\"{}\"]\n[upstream.push]\nlisten = \"127.0.0.1:{port}\"\n",
                common::UPSTREAM_SECRET
            ),
            _ => String::new(),
        };
        format!(
            r#"{classes}
{upstream}
[outbox]
max_size = {size}
on_full = "{on_full}"
checkpoint_interval = "{checkpoint}ms"

[[serial_ports]]
path = "{serial}"
framing = "text"
metadata_fields = ["seq"]
max_frame_bytes = 256
reopen_min = "50ms"
reopen_max = "200ms"
{modbus}"#,
            modbus = self.modbus_section(),
            classes = CLASSES.replace("\"400ms\"", &format!("\"{min_interval}\"")),
            size = self.max_size(),
            checkpoint = self.checkpoint_ms,
            serial = self.serial.display()
        )
    }
}

/// The endpoints: `default` takes everything (in batches, when `setup.batch`), `ops` devices'
/// health and readings (gzipped above `setup.compress`; it gives up on an event after 4
/// attempts or 20 s, when `setup.gives_up`) — in the file, unless `setup.ops_by_api`.
pub fn endpoints(all: &str, ops: &str, setup: &Setup) -> String {
    let batch = setup.batch.map_or(String::new(), |(n, linger)| {
        format!("batch_max_events = {n}\nbatch_linger = \"{linger}ms\"\n")
    });
    let mut text = format!(
        r#"
[webhook]
url = "{all}"
secret = "{secret}"
timeout = "1s"
{batch}[webhook.retry]
initial = "50ms"
max = "400ms"
"#,
        secret = common::SECRET
    );
    if !setup.ops_by_api {
        let mut limits = String::new();
        for (key, value) in ops_settings(setup).as_object().unwrap() {
            if let Some(v) = value.as_str() {
                limits.push_str(&format!("{key} = \"{v}\"\n"));
            } else if value.is_number() {
                limits.push_str(&format!("{key} = {value}\n"));
            }
        }
        text.push_str(&format!(
            r#"
[[endpoints]]
name = "ops"
url = "{ops}"
secret = "{secret}"
events = ["device.*", "sensor.*"]
{limits}[endpoints.retry]
initial = "50ms"
max = "400ms"
"#,
            secret = common::SECRET
        ));
    }
    text
}

/// `ops`'s settings but its name, url, secret and events, as the control API takes them.
pub fn ops_settings(setup: &Setup) -> Value {
    let mut settings = json!({
        "timeout": "1s",
        "retry": {"initial": "50ms", "max": "400ms"},
    });
    if setup.gives_up {
        settings["max_attempts"] = json!(4);
        settings["max_age"] = json!("20s");
    }
    if let Some(above) = setup.compress {
        settings["compress_above"] = json!(above);
    }
    settings
}
