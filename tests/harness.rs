//! The randomized fault harness: a seeded run of the real binary against real mosquitto and
//! two verifying receivers, with devices of several classes behaving in every way the rules
//! care about, receivers that misbehave per endpoint and per device (503, 429, 302, resets,
//! slowness, hangs past the timeout, 422 for one device, 410 until the operator re-enables), and faults between and
//! during phases — `kill -9`, power cuts (the state directory on `firmware_sim::powercut`),
//! a full disk, broker restarts, SIGHUP reloads that change a class's `min_interval`, clock
//! steps (libfaketime), an endpoint paused through the commands (the control API) for the rest
//! of a phase, sometimes across a `kill -9` or a power cut, and an endpoint created and deleted
//! with its queue through them while the rest deliver; per seed, `ops` itself may be made
//! through the API instead of the file, and readings may go through a jq mapping; on a third
//! of the seeds actions go to a room display throughout, through the local API or signed to
//! the push listener (with the daemon's clock, which the clock steps move). A reference
//! model applies the documented rules to what was published and, once everything has settled,
//! checks what each receiver must know:
//!
//! - every reading the rules say must be reported (every change of a tracked field beyond its
//!   deadband, for a class without `min_interval`) reached both endpoints at least once, and
//!   each device's first deliveries came in the order of its readings (except for what a
//!   device itself resends after a broker restart, which edgehook rightly applies again);
//! - for a class with `min_interval`, every report carried values the device published, in
//!   order, and the last one agrees with its last reading up to the deadband (coalescing keeps
//!   the latest values of a window; a reading inside the deadband is no change);
//! - every device was announced online, one that lost power (its last-will) ends offline, a
//!   live one ends online (or lost, for a class with a heartbeat), a device left silent past
//!   its heartbeat was reported lost, no device's health news ever repeats itself, and the
//!   workspace (and the group of its sensors) ends as its sensors' last reports give;
//! - devices on a serial port, whose frames come with noise (garbage, bad checksums carrying
//!   values no device published, over-long lines, frames split across writes), are held to
//!   the same rules, except for frames written around a crash (serial lines have no
//!   acknowledgements);
//! - per seed, the outbox checkpoints every 100 ms, second or minute, and may be small with
//!   `on_full = "drop_oldest_readings"` (then an
//!   endpoint may miss at most as many readings as it counts dropped, and once the daemon says
//!   it refused an endpoint's new events — its share full of events that policy never drops —
//!   that endpoint's health news and final workspace state are not checked), and `ops` may give up
//!   (`max_attempts`, `max_age`): at the end every dead letter is replayed, the way an
//!   operator does, and then nothing may be missing;
//! - while one endpoint failed, the other got everything made meanwhile (no endpoint waits on
//!   another); a paused endpoint got nothing while paused, across crashes, and everything
//!   once resumed;
//! - every action whose submission was answered 202 or 200 is told exactly once as
//!   `device.action_completed` (`succeeded`, or `timed_out` when a fault took its answer), no
//!   action is told twice, and the display executed no action twice;
//! - the daemon's peak memory stayed under half of the unit's `MemoryMax`, and the outbox
//!   within its size.
//!
//! A failure prints its seed and the command that replays it. `TEST_HARNESS_SEED` replays
//! one; `scripts/harness MINUTES` runs random seeds for as long as one likes.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{device, Daemon, Mosquitto, Receiver};
use firmware_sim::powercut::Mounted;
use firmware_sim::serial::{checksum, reading_frame, SerialFraming, SerialLink};
use firmware_sim::{DeviceClass, SimDevice};
use serde_json::{json, Value};

/// The classes the harness's devices belong to.
const CLASSES: &str = r#"
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
struct Setup {
    /// A small outbox that drops its oldest readings when full, instead of back-pressure.
    drops: bool,
    /// `ops` gives up (dead letters) after a few attempts or seconds.
    gives_up: bool,
    /// `default` sends up to this many events per request (`batch_max_events`), waiting up to
    /// this many milliseconds for them (`batch_linger`).
    batch: Option<(usize, u64)>,
    /// `ops` gzips bodies over this many bytes (`compress_above`).
    compress: Option<u64>,
    /// `ops` is made through the control API (`edgehook endpoints create`), not the file.
    ops_by_api: bool,
    /// Sensors' readings go through a subscription's jq mapping (the identity).
    mapped: bool,
    /// Actions go to a display; through the push listener on this port, if set.
    actions: Option<Option<u16>>,
    serial: PathBuf,
    /// `outbox.checkpoint_interval`, milliseconds.
    checkpoint_ms: u64,
}

impl Setup {
    fn max_size(&self) -> u64 {
        if self.drops {
            64 << 10 // the least allowed
        } else {
            1 << 20
        }
    }

    /// Everything but the endpoints, with the held class's `min_interval`.
    fn rest(&self, min_interval: &str) -> String {
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
"#,
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
fn endpoints(all: &str, ops: &str, setup: &Setup) -> String {
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
fn ops_settings(setup: &Setup) -> Value {
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

/// How a device is connected.
enum Link {
    Mqtt(Box<SimDevice>),
    /// On the harness's serial port.
    Serial,
    /// It lost power (the broker published its last-will).
    Dead,
}

/// One simulated device and what the model knows of it.
struct Model {
    id: String,
    held: bool,
    /// Of the `quiet` class: a heartbeat of 1 s, lost after 2 s of silence.
    quiet: bool,
    link: Link,
    seq: u64,
    presence: bool,
    /// Temperature in tenths of a degree (moves are always even, never exactly the deadband).
    tenths: i64,
    /// Every published (seq, presence, tenths), in order.
    published: Vec<(u64, bool, i64)>,
    /// Where what edgehook saw may differ from what the device published: the seq published
    /// last when the broker restarted (the device resends what the broker had not
    /// acknowledged yet — QoS 1 from the device is at-least-once too — and edgehook rightly
    /// takes those as readings again, so older values may follow newer ones there).
    resent_up_to: Vec<u64>,
    /// Serial frames written around a crash (a second before it until the daemon is back):
    /// the line has no acknowledgements, so these may rightly be lost.
    maybe_lost: HashSet<u64>,
    /// When each serial frame was written (seq, when).
    written: Vec<(u64, Instant)>,
    /// Silences past its heartbeat the harness made, each checked to be reported lost.
    silences: usize,
    /// Whether it published since the last silence counted: a silence of a device already
    /// reported lost and not heard since is no news (seed 3969032782932316030: a quiet device
    /// not among a phase's readings, two silences in a row, one report of loss).
    heard: bool,
    /// Bytes of an unchanging field in each MQTT reading (larger events fill a small outbox).
    padding: usize,
}

impl Model {
    fn new(id: String, held: bool, link: Link, rng: &mut fastrand::Rng) -> Model {
        Model {
            quiet: id.starts_with("quiet-"),
            id,
            held,
            link,
            seq: 0,
            presence: rng.bool(),
            tenths: 200 + 2 * rng.i64(-10..10),
            published: Vec::new(),
            resent_up_to: Vec::new(),
            maybe_lost: HashSet::new(),
            written: Vec::new(),
            silences: 0,
            heard: true, // the setup waits for an event of each device
            padding: 0,
        }
    }

    fn alive(&self) -> bool {
        !matches!(self.link, Link::Dead)
    }

    /// Publish the next reading, chosen by `rng`: a change, a move inside the deadband, a
    /// repeat (only metadata moves).
    async fn step(&mut self, rng: &mut fastrand::Rng, serial: &mut SerialLink) {
        match rng.u8(..100) {
            0..=29 => self.presence = !self.presence,
            30..=54 => self.tenths += if rng.bool() { 10 } else { -10 },
            55..=79 => self.tenths += if rng.bool() { 2 } else { -2 },
            _ => {}
        }
        self.seq += 1;
        self.heard = true;
        self.published.push((self.seq, self.presence, self.tenths));
        let payload = json!({
            "presence": self.presence,
            "temperature": self.tenths as f64 / 10.0,
            "seq": self.seq,
        });
        match &mut self.link {
            Link::Mqtt(sim) => {
                let mut payload = payload;
                if self.padding > 0 {
                    // A field that never changes, only making the events larger.
                    payload["note"] = "n".repeat(self.padding).into();
                }
                sim.publish_raw(payload.to_string().into_bytes())
                    .await
                    .unwrap()
            }
            Link::Serial => {
                let frame = reading_frame(SerialFraming::Text, &self.id, &payload);
                self.written.push((self.seq, Instant::now()));
                write_noisy(serial, &self.id, frame, rng).await;
            }
            Link::Dead => panic!("{} is dead", self.id),
        }
    }

    /// Wait until the broker has everything it published (serial lines have no acks).
    async fn flushed(&mut self) {
        if let Link::Mqtt(sim) = &mut self.link {
            sim.flushed().await.unwrap();
        }
    }
}

/// Write `frame` to the serial line, maybe with noise before it (garbage bytes, a frame with a
/// bad checksum carrying a seq nobody published, an over-long line) or split in two writes.
async fn write_noisy(serial: &mut SerialLink, id: &str, frame: Vec<u8>, rng: &mut fastrand::Rng) {
    match rng.u8(..10) {
        0 => serial.send(b"\x00\xff#~noise".to_vec()).await.unwrap(),
        1 => {
            let body = format!("OCC,{id},1,99.9,{}", 1_000_000 + rng.u32(..1000));
            let bad = format!("${body}*{:02X}\r\n", checksum(&body) ^ 0x5a);
            serial.send(bad.into_bytes()).await.unwrap();
        }
        2 => {
            let long = format!("${}\n", "X".repeat(400));
            serial.send(long.into_bytes()).await.unwrap();
        }
        3 => {
            let cut = rng.usize(1..frame.len());
            serial.send(frame[..cut].to_vec()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(rng.u64(1..20))).await;
            serial.send(frame[cut..].to_vec()).await.unwrap();
            return;
        }
        _ => {}
    }
    serial.send(frame).await.unwrap();
}

/// How a receiver misbehaves during a phase.
#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    Fine,
    Unavailable,
    TooMany,
    Redirect,
    Reset,
    Slow,
    /// Answers after the request timeout.
    Hangs,
    RejectsOneDevice,
    /// 410: the endpoint is disabled until the operator's `edgehook outbox enable`.
    Gone,
}

const MISBEHAVIOURS: [Misbehaviour; 9] = [
    Misbehaviour::Fine,
    Misbehaviour::Unavailable,
    Misbehaviour::TooMany,
    Misbehaviour::Redirect,
    Misbehaviour::Reset,
    Misbehaviour::Slow,
    Misbehaviour::Hangs,
    Misbehaviour::RejectsOneDevice,
    Misbehaviour::Gone,
];

fn misbehave(r: &Receiver, m: Misbehaviour, device: &str) {
    match m {
        Misbehaviour::Fine => {}
        Misbehaviour::Unavailable => r.fail_with(503),
        Misbehaviour::TooMany => {
            r.fail_with(429);
            r.retry_after(Some("1"));
        }
        Misbehaviour::Redirect => r.redirect(Some("/login")),
        Misbehaviour::Reset => r.reset_connections(true),
        Misbehaviour::Slow => r.delay(Duration::from_millis(300)),
        Misbehaviour::Hangs => r.delay(Duration::from_millis(1500)),
        Misbehaviour::RejectsOneDevice => r.fail_device_with(Some(device), 422),
        Misbehaviour::Gone => r.fail_with(410),
    }
}

fn behave(r: &Receiver) {
    r.fail_with(0);
    r.retry_after(None);
    r.redirect(None);
    r.reset_connections(false);
    r.delay(Duration::ZERO);
    r.fail_device(None);
}

/// A fault between two phases.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Kill9,
    PowerCut {
        tear: bool,
    },
    FullDisk,
    BrokerRestart,
    Reload,
    ClockStep {
        seconds: i64,
    },
    /// `endpoints pause` (through the control API) until the phase ends; with `crash`, a
    /// `kill -9` (or, with `cut`, a power cut) while paused.
    Pause {
        ops: bool,
        crash: bool,
        cut: bool,
    },
    /// An endpoint created through the API, and deleted with its queue when the phase ends.
    Churn,
}

struct World {
    seed: u64,
    setup: Setup,
    broker: Mosquitto,
    serial: SerialLink,
    card: Mounted,
    daemon: Daemon,
    clock_file: PathBuf,
    clock_offset: i64,
    /// When the clock last stepped (libfaketime takes up to a second to see it).
    clock_stepped: Option<Instant>,
    peak_kb: u64,
    max_outbox: u64,
    faults: Vec<Fault>,
    /// The `[webhook]` and `[[endpoints]]` sections, for rewriting the file on a reload.
    endpoints: String,
    reloads: u32,
    /// The endpoint paused, with its receiver's request count once the pause was made.
    paused: Option<(&'static str, u64)>,
    /// An endpoint made for this phase alone, delivering to `spare`.
    churned: bool,
    spare: Receiver,
    /// The environment the commands need (the state directory).
    cli_env: Vec<(String, String)>,
}

impl World {
    fn sample(&mut self) {
        if let Some(pid) = self.daemon.pid() {
            self.peak_kb = self.peak_kb.max(common::peak_rss_kb(pid).unwrap_or(0));
        }
        if let Some(bytes) = self.daemon.metric("edgehook_outbox_bytes") {
            self.max_outbox = self.max_outbox.max(bytes);
        }
    }

    /// `edgehook <args>` on the running daemon, as an operator types it; it must succeed.
    fn command(&self, args: &[&str]) -> String {
        let mut env: Vec<(&str, &str)> = self
            .cli_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("EDGEHOOK_ENDPOINT_SECRET", common::SECRET));
        let (code, out, err) = self.daemon.cli(args, &env);
        assert_eq!(
            code,
            0,
            "seed {}: edgehook {args:?}: {out}{err}\n{}",
            self.seed,
            self.daemon.log()
        );
        out
    }

    /// The end of a phase: the paused endpoint, which must have been sent nothing since its
    /// pause, is resumed; the churned endpoint is deleted with its queue.
    fn end_phase(&mut self, receivers: (&Receiver, &Receiver)) -> Result<(), String> {
        if let Some((name, requests)) = self.paused.take() {
            let r = if name == "ops" {
                receivers.1
            } else {
                receivers.0
            };
            let now = r.seen(|s| s.requests);
            self.command(&["endpoints", "resume", name]);
            if now != requests {
                return Err(format!(
                    "{name} was sent {} request(s) while paused",
                    now - requests
                ));
            }
        }
        if std::mem::take(&mut self.churned) {
            self.command(&["endpoints", "delete", "churn", "--pending", "purge"]);
        }
        Ok(())
    }

    async fn inject(
        &mut self,
        fault: Fault,
        rng: &mut fastrand::Rng,
        models: &mut [Model],
        receivers: (&Receiver, &Receiver),
    ) {
        self.faults.push(fault);
        self.sample();
        let crashed_at = Instant::now();
        match fault {
            Fault::None => {}
            Fault::Kill9 => {
                self.daemon.kill9();
                self.daemon.start();
            }
            Fault::PowerCut { tear } => {
                self.card.fs.cut(tear);
                self.daemon.kill9();
                self.card.fs.power_on();
                self.daemon.start();
            }
            Fault::FullDisk => {
                self.card.fs.set_full(true);
                tokio::time::sleep(Duration::from_millis(rng.u64(200..800))).await;
                self.card.fs.set_full(false);
            }
            Fault::BrokerRestart => {
                self.broker.stop();
                tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
                self.broker.restart();
            }
            Fault::Reload => {
                // A reload that changes something: the held class's `min_interval`.
                self.reloads += 1;
                let interval = if self.reloads % 2 == 1 {
                    "200ms"
                } else {
                    "400ms"
                };
                let rest = self.setup.rest(interval);
                let port = self.broker.port;
                self.daemon
                    .rewrite_webhook(port, &format!("{}\n{rest}", self.endpoints));
                self.daemon.signal(1);
            }
            Fault::ClockStep { seconds } => {
                self.clock_offset += seconds;
                self.clock_stepped = Some(Instant::now());
                std::fs::write(&self.clock_file, format!("{:+}\n", self.clock_offset)).unwrap();
            }
            Fault::Pause { ops, crash, cut } => {
                let name = if ops { "ops" } else { "default" };
                self.command(&["endpoints", "pause", name]);
                let r = if ops { receivers.1 } else { receivers.0 };
                self.paused = Some((name, r.seen(|s| s.requests)));
                if crash && cut {
                    self.card.fs.cut(rng.bool());
                    self.daemon.kill9();
                    self.card.fs.power_on();
                    self.daemon.start();
                } else if crash {
                    self.daemon.kill9();
                    self.daemon.start();
                }
            }
            Fault::Churn => {
                let url = self.spare.url.clone();
                self.command(&[
                    "endpoints",
                    "create",
                    "churn",
                    "--url",
                    &url,
                    "--events",
                    "sensor.*,device.*",
                ]);
                self.churned = true;
            }
        }
        if let Fault::Kill9 | Fault::PowerCut { .. } | Fault::Pause { crash: true, .. } = fault {
            // What the daemon had read off the serial line but not yet written is gone.
            let since = crashed_at - Duration::from_secs(1);
            for m in models.iter_mut().filter(|m| matches!(m.link, Link::Serial)) {
                m.maybe_lost
                    .extend(m.written.iter().filter(|w| w.1 >= since).map(|w| w.0));
            }
        }
    }
}

fn pick_fault(rng: &mut fastrand::Rng) -> Fault {
    match rng.u8(..10) {
        8 => Fault::Pause {
            ops: rng.bool(),
            crash: rng.bool(),
            cut: rng.bool(),
        },
        9 => Fault::Churn,
        0 => Fault::None,
        1 => Fault::Kill9,
        2 => Fault::PowerCut { tear: rng.bool() },
        3 => Fault::FullDisk,
        4 => Fault::BrokerRestart,
        5 => Fault::Reload,
        _ => Fault::ClockStep {
            seconds: rng.i64(-120..=7200),
        },
    }
}

/// Before a broker restart: what each device may resend.
fn note_restart(fault: Fault, models: &mut [Model]) {
    if let Fault::BrokerRestart = fault {
        for m in models
            .iter_mut()
            .filter(|m| matches!(m.link, Link::Mqtt(_)))
        {
            m.resent_up_to.push(m.seq);
        }
    }
}

/// Every reading of `device` delivered to `r` (event id, `fields`), first deliveries in order.
fn reports(r: &Receiver, device: &str) -> Vec<(String, Value)> {
    r.seen(|s| {
        s.of_type("sensor.reading.updated")
            .into_iter()
            .filter(|e| e["data"]["device_id"] == device)
            .map(|e| {
                (
                    e["id"].as_str().unwrap_or("").to_owned(),
                    e["data"]["fields"].clone(),
                )
            })
            .collect()
    })
}

fn seq_of(fields: &Value) -> u64 {
    fields["seq"].as_u64().expect("a seq in every reading")
}

/// `presence` as MQTT devices send it (a boolean) or a text serial frame does (0 or 1).
fn presence_of(fields: &Value) -> Option<bool> {
    fields["presence"]
        .as_bool()
        .or_else(|| fields["presence"].as_u64().map(|n| n == 1))
}

fn tenths_of(fields: &Value) -> i64 {
    (fields["temperature"].as_f64().unwrap_or(f64::NAN) * 10.0).round() as i64
}

/// Poll `check` until it returns `Ok`, or fail with its last complaint after `within`.
async fn settle(
    within: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The deadband rule (a change of presence, or of the temperature by half a degree or more,
/// from the last report) replayed over what a device published, where each frame in
/// `maybe_lost` may or may not have reached edgehook: the seqs edgehook reports whichever
/// were lost (a change from every last report it may hold), and the last reports it may end
/// with. Without lost frames that is one exact story. With them, a lost frame leaves edgehook
/// comparing with an older report than the model's, so a later reading the model calls a
/// change may be none (found by seed 125716985809567577: frame 3 lost in a power cut, 4 seen
/// as the change from 1, and 7 then inside 4's deadband though outside 3's).
fn deadband(
    published: &[(u64, bool, i64)],
    maybe_lost: &HashSet<u64>,
) -> (Vec<u64>, Vec<(bool, i64)>) {
    let mut surely = Vec::new();
    // Every last report edgehook may hold (None: nothing reported yet).
    let mut last: Vec<Option<(bool, i64)>> = vec![None];
    for &(seq, p, t) in published {
        let change =
            |r: &Option<(bool, i64)>| r.is_none_or(|(rp, rt)| rp != p || (rt - t).abs() >= 5);
        let changes = last.iter().filter(|r| change(r)).count();
        if changes == last.len() && !maybe_lost.contains(&seq) {
            surely.push(seq);
            last = vec![Some((p, t))];
        } else if changes > 0 {
            // Seen by a story where it is a change: that story now holds it.
            if !maybe_lost.contains(&seq) {
                last.retain(|r| !change(r));
            }
            if !last.contains(&Some((p, t))) {
                last.push(Some((p, t)));
            }
        }
    }
    (surely, last.into_iter().flatten().collect())
}

impl Model {
    /// The seqs that must be reported (classes without `min_interval`).
    fn must(&self) -> Vec<u64> {
        if self.held {
            return Vec::new();
        }
        deadband(&self.published, &self.maybe_lost).0
    }

    /// What upstream may end knowing of the device: its last report in each story of lost
    /// frames (one, for a device whose readings all reached edgehook; none before any).
    fn ends(&self) -> Vec<(bool, i64)> {
        deadband(&self.published, &self.maybe_lost).1
    }

    /// Whether the must-report `seq` may rightly be missing: just after a broker restart (the
    /// device resent what the broker had not acknowledged, edgehook applied those again: older
    /// values), `seq` repeats values edgehook saw last, so it was no change to edgehook.
    fn excused(&self, seq: u64) -> bool {
        let values = |s: u64| self.published.iter().find(|p| p.0 == s).map(|p| (p.1, p.2));
        let Some((presence, tenths)) = values(seq) else {
            return false;
        };
        self.resent_up_to.iter().any(|&mark| {
            seq > mark
                && seq - mark <= 20
                && self.published.iter().any(|&(s, p, t)| {
                    s <= mark && mark - s < 200 && p == presence && (t - tenths).abs() < 5
                })
        })
    }
}

/// What the receiver must have of the devices without `min_interval`: every must-report seq,
/// but for at most `allowance` (readings counted dropped for it, dead letters not replayed).
fn complete(r: &Receiver, name: &str, models: &[Model], allowance: u64) -> Result<(), String> {
    let mut missing = Vec::new();
    for m in models.iter().filter(|m| !m.held) {
        let got: HashSet<u64> = reports(r, &m.id).iter().map(|(_, f)| seq_of(f)).collect();
        missing.extend(
            m.must()
                .into_iter()
                .filter(|s| !got.contains(s) && !m.excused(*s))
                .map(|s| (m.id.clone(), s)),
        );
    }
    if missing.len() as u64 > allowance {
        return Err(format!(
            "{name}: {} must-reports missing (allowed {allowance}): {:?}",
            missing.len(),
            &missing[..missing.len().min(40)]
        ));
    }
    Ok(())
}

/// The health news of `device` that `r` got (event ids and types), first deliveries in order.
fn health_of(r: &Receiver, device: &str) -> Vec<(String, String)> {
    r.seen(|s| {
        s.events
            .iter()
            .filter(|e| e["data"]["device_id"] == device)
            .filter_map(|e| Some((e["id"].as_str()?.to_owned(), e["type"].as_str()?.to_owned())))
            .filter(|(_, t)| {
                matches!(
                    t.as_str(),
                    "device.online" | "device.offline" | "device.lost_communication"
                )
            })
            .collect()
    })
}

/// Everything the model says each receiver must end up knowing. `replayed`: the ids of dead
/// letters replayed at the end, which rightly arrive after newer events.
fn verify(
    r: &Receiver,
    name: &str,
    models: &[Model],
    allowance: u64,
    refused: bool,
    replayed: &HashSet<String>,
) -> Result<(), String> {
    complete(r, name, models, allowance)?;
    r.seen(|s| {
        if s.bad_signatures > 0 {
            return Err(format!("{name}: {} bad signatures", s.bad_signatures));
        }
        Ok(())
    })?;
    for m in models {
        let got = reports(r, &m.id);
        let seqs: Vec<u64> = got
            .iter()
            .filter(|(id, _)| !replayed.contains(id))
            .map(|(_, f)| seq_of(f))
            .collect();
        let resent = |x: u64, y: u64| m.resent_up_to.iter().any(|&r| x <= r && r - y < 200);
        if let Some(at) = seqs
            .windows(2)
            .position(|w| w[0] >= w[1] && !resent(w[0], w[1]))
        {
            // The events around it, by id: a second event for one reading, or a resend?
            let kept: Vec<&(String, Value)> = got
                .iter()
                .filter(|(id, _)| !replayed.contains(id))
                .collect();
            let around: Vec<String> = kept[at.saturating_sub(2)..(at + 2).min(kept.len())]
                .iter()
                .map(|(id, f)| format!("{} {id}", seq_of(f)))
                .collect();
            return Err(format!(
                "{name}: {} delivered out of order: {seqs:?} (around it: {around:?})",
                m.id
            ));
        }
        for (_, fields) in &got {
            let seq = seq_of(fields);
            let Some(&(_, presence, tenths)) = m.published.iter().find(|p| p.0 == seq) else {
                return Err(format!(
                    "{name}: {} reported seq {seq}, never published",
                    m.id
                ));
            };
            if presence_of(fields) != Some(presence) || tenths_of(fields) != tenths {
                return Err(format!("{name}: {} reported {fields} for seq {seq}", m.id));
            }
        }
        // Upstream ends knowing the device's state up to its deadband: otherwise its last
        // reading would have been a change, and reported. The newest report is the one with
        // the highest seq (a replayed dead letter arrives late). Without `min_interval`, resends
        // and replays, the model knows exactly which reading was reported last.
        let last = got
            .iter()
            .map(|(_, f)| f)
            .max_by_key(|f| seq_of(f))
            .map(|f| (presence_of(f).unwrap_or(false), tenths_of(f)));
        let replays = got.iter().any(|(id, _)| replayed.contains(id));
        let exact = !m.held && m.resent_up_to.is_empty() && !replays;
        // The device's last readings, back to the first one not written around a crash: a
        // serial line has no acknowledgements, so the frames after it may rightly be lost
        // and the device end at any of them (found by seed 10633411858054888667: a held
        // serial device's last two frames went 3 and 44 ms before a `kill -9`).
        let mut finals = Vec::new();
        for &(seq, p, t) in m.published.iter().rev() {
            finals.push((p, t));
            if !m.maybe_lost.contains(&seq) {
                break;
            }
        }
        let ends = m.ends();
        let ok = match last {
            Some(l) if exact => ends.contains(&l),
            Some((p, t)) => finals.iter().any(|&(lp, lt)| p == lp && (t - lt).abs() < 5),
            None => m.published.is_empty(),
        };
        // With readings dropped for this endpoint (a full share, `drop_oldest_readings`), the
        // device's last report may be among them: the endpoint then ends at an earlier one
        // (each already checked above to be what was published).
        let ok = ok || allowance > 0;
        if !ok {
            return Err(format!(
                "{name}: {} ends at {last:?}; the model's last report {:?}, last reading {:?}",
                m.id,
                ends,
                m.published.last()
            ));
        }
        if refused {
            // New events were refused for this endpoint (a share full of events never dropped,
            // see `refused`): any health news may be missing, as the rules say.
            continue;
        }
        let health = health_of(r, &m.id);
        let kinds: Vec<&str> = health.iter().map(|(_, t)| t.as_str()).collect();
        if !kinds.contains(&"device.online") {
            return Err(format!("{name}: {} was never announced online", m.id));
        }
        let registered = r.seen(|s| {
            s.of_type("device.registered")
                .iter()
                .filter(|e| e["data"]["device_id"] == m.id.as_str())
                .count()
        });
        if registered == 0 {
            return Err(format!("{name}: {} was never registered", m.id));
        }
        // Health news never repeats itself (a replayed dead letter is old news, out of place).
        if !health.iter().any(|(id, _)| replayed.contains(id))
            && kinds.windows(2).any(|w| w[0] == w[1])
        {
            return Err(format!("{name}: {} health repeats itself: {kinds:?}", m.id));
        }
        let lost = kinds
            .iter()
            .filter(|t| **t == "device.lost_communication")
            .count();
        if lost < m.silences {
            return Err(format!(
                "{name}: {} was left silent {} times past its heartbeat, reported lost {lost}: {kinds:?}",
                m.id, m.silences
            ));
        }
        // A replayed dead letter arrives last, whether it is old news or the newest: the device
        // may end as the last word of all, or as the last that is not a replayed dead letter
        // (found by seed 14769932744879682093: a replayed online, old news, after the offline
        // of a device that lost power; and 6967197422479035482: the offline itself replayed).
        let last_fresh = health
            .iter()
            .rev()
            .find(|(id, _)| !replayed.contains(id))
            .map(|(_, t)| t.as_str());
        let fine_end = |ends: Option<&str>| match (&m.link, ends) {
            (Link::Dead, end) => end == Some("device.offline"),
            (_, Some("device.online")) => true,
            (_, Some("device.lost_communication")) => m.quiet,
            _ => false,
        };
        let fine = fine_end(kinds.last().copied()) || fine_end(last_fresh);
        if !fine {
            return Err(format!("{name}: {} ends {kinds:?}", m.id));
        }
    }
    Ok(())
}

/// Whether the daemon refused new events for `endpoint` (its share full of events that
/// `drop_oldest_readings` never drops, or of a queue that cannot drain): the rules then let it
/// miss any event, health and workspace news included, counted and logged — so its final
/// health and workspace states are not checked (found by seed 9071275921783145960: a
/// workspace's last status refused by an endpoint whose share was still full).
fn refused(daemon: &Daemon, endpoint: &str) -> bool {
    let log = daemon.log();
    log.contains(&format!("endpoint `{endpoint}`'s new events are DROPPED"))
        || log.contains(&format!("endpoint `{endpoint}` cannot drain"))
}

/// What `endpoint` may be missing: readings counted dropped for it (a full share under
/// `drop_oldest_readings`), and dead letters (only `ops` has limits).
fn allowance(daemon: &Daemon, endpoint: &str) -> u64 {
    let dropped = daemon
        .metric(&format!(
            "edgehook_endpoint_dropped_total{{endpoint=\"{endpoint}\"}}"
        ))
        .unwrap_or(0);
    let dead = match endpoint {
        "ops" => daemon.metric("edgehook_dead_letters").unwrap_or(0) + let_go(daemon),
        _ => 0,
    };
    dropped + dead
}

/// Dead letters let go to keep within `outbox.max_dead_size`, over every run of the daemon
/// (its log says how many, each time: the counter starts again at each start).
fn let_go(daemon: &Daemon) -> u64 {
    daemon
        .log()
        .lines()
        .filter(|l| l.contains("outbox.max_dead_size"))
        .filter_map(|l| {
            l.split("let_go=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The ids of `endpoint`'s dead letters, from `edgehook outbox list --dead` (daemon stopped).
fn dead_letters(daemon: &Daemon, state: &Path, endpoint: &str) -> HashSet<String> {
    let state = state.display().to_string();
    let (code, out, err) = daemon.outbox_cli(&[
        "--state-dir",
        &state,
        "list",
        "--dead",
        "--endpoint",
        endpoint,
        "--limit",
        "1000000",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

async fn run(seed: u64) {
    let replay =
        format!("TEST_HARNESS_SEED={seed} cargo test --test harness -- one_seed --nocapture");
    eprintln!("harness: seed {seed} (replay: {replay})");
    let dead_size = {
        let mut drng = fastrand::Rng::with_seed(seed ^ 0xdead_0000);
        [None, Some(1 << 10), Some(4 << 10)][drng.usize(..3)]
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let all = Receiver::start().await;
    let ops = Receiver::start().await;
    let (card, state) = common::powercut_card(dir.path(), seed);
    // Devices known only by a retained offline status at the daemon's first start (as
    // Zigbee2MQTT leaves its availability, or a broker a last-will): each must be registered
    // and told offline, once (drawn apart, so that earlier seeds keep their scenarios).
    let ghosts: Vec<String> = {
        let mut grng = fastrand::Rng::with_seed(seed ^ 0x6405_0000);
        (0..grng.usize(..3)).map(|i| format!("ghost-{i}")).collect()
    };
    let retained: Vec<(String, String)> = ghosts
        .iter()
        .map(|g| (format!("devices/{g}/status"), "offline".to_string()))
        .collect();
    let retained: Vec<(&str, &str)> = retained
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_str()))
        .collect();
    common::publish_retained(broker.port, "ghosts", &retained).await;
    let setup = Setup {
        drops: rng.u8(..3) == 0,
        gives_up: rng.u8(..3) == 0,
        batch: (rng.u8(..3) == 0).then(|| (rng.usize(2..=50), rng.u64(0..=200))),
        compress: (rng.u8(..3) == 0).then(|| rng.u64(64..=512)),
        ops_by_api: rng.u8(..3) == 0,
        mapped: rng.u8(..3) == 0,
        // Drawn apart, so that the seeds drawn before actions existed keep their scenarios.
        actions: {
            let mut arng = fastrand::Rng::with_seed(seed ^ 0xac71_0000);
            (arng.u8(..3) == 0).then(|| arng.bool().then(common::free_port))
        },
        serial: dir.path().join("ttyHARNESS"),
        // Drawn apart too, for the same reason.
        checkpoint_ms: {
            let mut crng = fastrand::Rng::with_seed(seed ^ 0xc4ec_0000);
            [100, 1_000, 60_000][crng.usize(..3)]
        },
    };
    let spare = Receiver::start().await;
    let serial = SerialLink::plug(&setup.serial).unwrap();
    let endpoints = endpoints(&all.url, &ops.url, &setup);
    let webhook = format!("{endpoints}\n{}", setup.rest("400ms"));
    let mut daemon = Daemon::new_with_webhook(dir.path(), broker.port, &webhook);
    daemon
        .env
        .push(("EDGEHOOK_STATE_DIR".into(), state.display().to_string()));
    if setup.mapped {
        daemon.env.push((
            "EDGEHOOK_MQTT__SUBSCRIPTIONS".into(),
            r#"[{topic="sensors/{device}/reading",kind="reading",metadata_fields=["seq","ts"],jq="."},{topic="rooms/{device}/display",kind="reading",metadata_fields=["seq","ts"]},{topic="devices/{device}/status",kind="status"},{topic="devices/{device}/actions/result",kind="action_result"}]"#.into(),
        ));
    }
    // What is kept of a device, bounded in bytes (drawn apart, so that earlier seeds keep their
    // scenarios): above what the harness's devices keep (a padded reading is about 1.6 KB;
    // seed 2 found 1,024 too tight: its readings were refused, as the bound says), so nothing
    // is refused and the model holds.
    let state_bytes = {
        let mut srng = fastrand::Rng::with_seed(seed ^ 0x5b17_0000);
        [16384, 8192, 4096][srng.usize(..3)]
    };
    daemon.env.push((
        "EDGEHOOK_DEVICES__MAX_STATE_BYTES".into(),
        state_bytes.to_string(),
    ));
    // The dead letters' budget (drawn apart as well): the default (a quarter of the outbox),
    // or small enough that `ops`'s letters are let go, which the model then allows for.
    // How long a stop waits for deliveries in flight (drawn apart too): the default, or less
    // than a hanging receiver holds an answer, so a stop lets them go (they stay in the outbox).
    let stop_timeout = {
        let mut trng = fastrand::Rng::with_seed(seed ^ 0x5709_0000);
        [None, Some("1s")][trng.usize(..2)]
    };
    if let Some(t) = stop_timeout {
        daemon.env.push(("EDGEHOOK_STOP_TIMEOUT".into(), t.into()));
    }
    if let Some(bytes) = dead_size {
        daemon
            .env
            .push(("EDGEHOOK_OUTBOX__MAX_DEAD_SIZE".into(), bytes.to_string()));
    }
    let clock_file = dir.path().join("faketime");
    std::fs::write(&clock_file, "+0\n").unwrap();
    common::fake_clock(&mut daemon, &clock_file);
    daemon.start();
    let mut world = World {
        seed,
        setup,
        broker,
        serial,
        card,
        daemon,
        clock_file,
        clock_offset: 0,
        clock_stepped: None,
        peak_kb: 0,
        max_outbox: 0,
        faults: Vec::new(),
        endpoints,
        reloads: 0,
        paused: None,
        churned: false,
        spare,
        cli_env: vec![("EDGEHOOK_STATE_DIR".into(), state.display().to_string())],
    };
    if world.setup.ops_by_api {
        // As an operator makes it: through the commands, before any device speaks.
        let settings = dir.path().join("ops.json");
        std::fs::write(&settings, ops_settings(&world.setup).to_string()).unwrap();
        world.command(&[
            "endpoints",
            "create",
            "ops",
            "--url",
            &ops.url,
            "--events",
            "device.*,sensor.*",
            "--settings",
            settings.to_str().unwrap(),
        ]);
    }

    let mut models = Vec::new();
    let n = rng.usize(3..=6);
    for i in 0..n {
        let kind = match rng.u8(..4) {
            0 => "held",
            1 => "quiet",
            _ => "fast",
        };
        let id = format!("{kind}-{seed:x}-{i}");
        let sim = device(world.broker.port, &id, DeviceClass::OccupancySensor).await;
        models.push(Model::new(
            id,
            kind == "held",
            Link::Mqtt(Box::new(sim)),
            &mut rng,
        ));
    }
    for k in 0..rng.usize(1..=2) {
        let held = rng.u8(..3) == 0;
        let id = format!("{}-ser-{seed:x}-{k}", if held { "held" } else { "fast" });
        models.push(Model::new(id, held, Link::Serial, &mut rng));
    }
    // The last two are the workspace's sensors.
    for id in ["fast-room-a", "fast-room-b"] {
        let sim = device(world.broker.port, id, DeviceClass::OccupancySensor).await;
        models.push(Model::new(
            id.into(),
            false,
            Link::Mqtt(Box::new(sim)),
            &mut rng,
        ));
    }
    for m in &mut models {
        if world.setup.drops {
            m.padding = 1500;
        }
        // Every device is known before the first burst of junk ids fills the registry.
        m.step(&mut rng, &mut world.serial).await;
        m.flushed().await;
    }
    let mut actions = match world.setup.actions {
        Some(push) => {
            let id = format!("disp-{seed:x}");
            Some(Actions {
                rng: fastrand::Rng::with_seed(seed ^ 0xac71_0001),
                push,
                display: device(world.broker.port, &id, DeviceClass::RoomDisplay).await,
                id,
                acknowledged: Vec::new(),
                submitted: 0,
                unexpected: Vec::new(),
            })
        }
        None => None,
    };
    let devices = models.len() + usize::from(actions.is_some());
    world
        .daemon
        .wait_metric("edgehook_devices", devices as u64)
        .await;
    // ...and known on disk: a serial device's frames have no acknowledgement, so a crash
    // before its first batch is written leaves it unknown, and refused for good once the junk
    // ids fill the registry (seed 2262397651144431988: both serial devices registered 90 ms
    // before a `kill -9`). An event of each received upstream says its batch is durable
    // (delivery sees only synced batches, and they are synced in order).
    let heard = || {
        models
            .iter()
            .find(|m| reports(&all, &m.id).is_empty() && health_of(&all, &m.id).is_empty())
            .map_or(Ok(()), |m| {
                Err(format!("nothing of {} received upstream", m.id))
            })
    };
    if let Err(e) = settle(Duration::from_secs(30), heard).await {
        panic!("seed {seed}: {e}\n{}", world.daemon.log());
    }
    let phases = rng.usize(4..=7);
    let mut story = vec![format!(
        "{} devices; outbox {} bytes, a checkpoint every {} ms{}{}",
        models.len(),
        world.setup.max_size(),
        world.setup.checkpoint_ms,
        if world.setup.drops {
            ", drop_oldest_readings"
        } else {
            ""
        },
        if world.setup.gives_up {
            "; ops gives up after 4 attempts or 20 s"
        } else {
            ""
        }
    )];
    if let Some((n, linger)) = world.setup.batch {
        story.push(format!(
            "default sends batches of up to {n}, lingering {linger} ms"
        ));
    }
    if let Some(above) = world.setup.compress {
        story.push(format!("ops gzips bodies over {above} bytes"));
    }
    if world.setup.ops_by_api {
        story.push("ops is made through the control API".into());
    }
    if world.setup.mapped {
        story[0].push_str("; sensor readings through a jq mapping");
    }
    if let Some(bytes) = dead_size {
        story.push(format!("dead letters kept within {bytes} bytes"));
    }
    if let Some(t) = stop_timeout {
        story.push(format!("a stop waits {t} for deliveries in flight"));
    }
    if !ghosts.is_empty() {
        story.push(format!("retained offline at start: {}", ghosts.join(", ")));
    }
    match world.setup.actions {
        Some(Some(_)) => story.push("actions pushed to the push listener".into()),
        Some(None) => story.push("actions through the local API".into()),
        None => {}
    }
    for phase in 0..phases {
        // Which receiver misbehaves how; at most one at a time, so the other must keep up.
        let victim = rng.usize(..3); // 0: all, 1: ops, 2: neither
        let mut how = MISBEHAVIOURS[rng.usize(..MISBEHAVIOURS.len())];
        if world.setup.drops && matches!(how, Misbehaviour::Gone) {
            // A disabled endpoint's full share refuses health news too (its own named test).
            how = Misbehaviour::Unavailable;
        }
        let target = models[rng.usize(..models.len())].id.clone();
        match victim {
            0 => misbehave(&all, how, &target),
            1 => misbehave(&ops, how, &target),
            _ => {}
        }
        let fault = pick_fault(&mut rng);
        let fault_at = rng.usize(0..40);
        // A small outbox under drop_oldest_readings fills in a long phase.
        let steps = match world.setup.drops {
            true => rng.usize(40..120),
            false => rng.usize(20..60),
        };
        for step in 0..steps {
            if step == fault_at {
                note_restart(fault, &mut models);
                world
                    .inject(fault, &mut rng, &mut models, (&all, &ops))
                    .await;
            }
            let i = rng.usize(..models.len());
            if models[i].alive() {
                models[i].step(&mut rng, &mut world.serial).await;
            }
            if let Some(actions) = actions.as_mut() {
                actions.maybe_submit(&world, &state).await;
            }
            if rng.u8(..4) == 0 {
                tokio::time::sleep(Duration::from_millis(rng.u64(1..30))).await;
            }
            if step == steps / 2 && rng.u8(..5) == 0 {
                // A burst of junk device ids, past the registry's bound.
                let topics: Vec<String> = (0..80)
                    .map(|j| format!("sensors/junk-{seed:x}-{phase}-{j}/reading"))
                    .collect();
                let msgs: Vec<(&str, &str)> = topics
                    .iter()
                    .map(|t| (t.as_str(), r#"{"presence":true}"#))
                    .collect();
                common::publish_plain(world.broker.port, "junk", &msgs).await;
            }
        }
        if fault_at >= steps {
            note_restart(fault, &mut models);
            world
                .inject(fault, &mut rng, &mut models, (&all, &ops))
                .await;
        }
        for m in models.iter_mut() {
            m.flushed().await;
        }
        if let Err(e) = world.end_phase((&all, &ops)) {
            panic!(
                "seed {seed}: {e}\n{}\n{}\nreplay: {replay}",
                story.join("\n"),
                world.daemon.log()
            );
        }
        story.push(format!(
            "phase {phase}: {steps} readings, {how:?} at {}, {fault:?}",
            ["default", "ops", "nobody"][victim]
        ));
        // The endpoint that behaved got everything meanwhile.
        let healthy = match (victim, how) {
            (_, Misbehaviour::Fine) | (2, _) => vec![("default", &all), ("ops", &ops)],
            (0, _) => vec![("ops", &ops)],
            _ => vec![("default", &all)],
        };
        for (name, r) in healthy {
            let daemon = &world.daemon;
            let check = || complete(r, name, &models, allowance(daemon, name));
            if let Err(e) = settle(Duration::from_secs(30), check).await {
                // What the outbox holds for each endpoint (pending, dropped) says whether the
                // missing events are stuck or were never queued.
                let outbox = common::http_get(world.daemon.metrics_port, "/v1/outbox");
                eprintln!("harness: the outbox now: {}", outbox.unwrap_or_default());
                panic!("seed {seed}: an endpoint waited on another's failures: {e}\n{}\n{}\nreplay: {replay}", story.join("\n"), world.daemon.log());
            }
        }
        behave(&all);
        behave(&ops);
        if let Misbehaviour::Gone = how {
            // What the operator does once the receiver is fixed.
            world.sample();
            assert_eq!(world.daemon.terminate(), Some(0), "seed {seed}");
            let state_arg = state.display().to_string();
            let (code, out, err) = world
                .daemon
                .outbox_cli(&["--state-dir", &state_arg, "enable"]);
            assert_eq!(code, 0, "seed {seed}: {out}{err}");
            world.daemon.start();
        }
        let quiet: Vec<usize> = (0..models.len())
            .filter(|&i| models[i].quiet && models[i].alive())
            .collect();
        if !quiet.is_empty() && rng.u8(..3) == 0 {
            // Silence past the heartbeat (2 s): each quiet device must be reported lost.
            story.push("silence".into());
            tokio::time::sleep(Duration::from_secs(3)).await;
            for &i in &quiet {
                let id = models[i].id.clone();
                let lost = |r: &Receiver, name: &str| {
                    let health = health_of(r, &id);
                    match health.last().map(|(_, t)| t.as_str()) {
                        Some("device.lost_communication") => Ok(()),
                        other => Err(format!("{name}: silent {id} ends {other:?}")),
                    }
                };
                let both = || lost(&all, "default").and_then(|()| lost(&ops, "ops"));
                if let Err(e) = settle(Duration::from_secs(15), both).await {
                    panic!(
                        "seed {seed}: {e}\n{}\n{}\nreplay: {replay}",
                        story.join("\n"),
                        world.daemon.log()
                    );
                }
                if std::mem::replace(&mut models[i].heard, false) {
                    models[i].silences += 1;
                }
            }
        }
        world.sample();
    }
    // The workspace's sensors say something last.
    let n = models.len();
    for m in &mut models[n - 2..] {
        m.step(&mut rng, &mut world.serial).await;
        m.flushed().await;
    }
    // Maybe one device dies at the end: its last-will must reach both endpoints as offline.
    if rng.bool() {
        let i = rng.usize(..n - 2); // not a workspace sensor
        if let Link::Mqtt(_) = models[i].link {
            if let Link::Mqtt(sim) = std::mem::replace(&mut models[i].link, Link::Dead) {
                sim.pull_plug();
                story.push(format!("{} lost power", models[i].id));
            }
        }
    }
    let fail = |e: String, world: &World, story: &[String]| -> ! {
        let broker_log =
            std::fs::read_to_string(dir.path().join("mosquitto.log")).unwrap_or_default();
        eprintln!("mosquitto's log:\n{broker_log}");
        let outbox = common::http_get(world.daemon.metrics_port, "/v1/outbox");
        eprintln!("harness: the outbox now: {}", outbox.unwrap_or_default());
        panic!(
            "seed {seed}: {e}\n{}\n{}\nreplay: {replay}",
            story.join("\n"),
            world.daemon.log()
        );
    };
    // Settle: held reports flush after min_interval, retries catch up.
    let none = HashSet::new();
    {
        let daemon = &world.daemon;
        let check = || {
            verify(
                &all,
                "default",
                &models,
                allowance(daemon, "default"),
                refused(daemon, "default"),
                &none,
            )
        };
        if let Err(e) = settle(Duration::from_secs(60), check).await {
            fail(e, &world, &story);
        }
        // The retained offline states met at the first start: told as the API shows them.
        if !refused(daemon, "default") {
            let told = |ghost: &str, kind: &str| {
                all.seen(|s| {
                    s.of_type(kind)
                        .iter()
                        .filter(|e| e["data"]["device_id"] == ghost)
                        .count()
                })
            };
            for g in &ghosts {
                let got = (told(g, "device.registered"), told(g, "device.offline"));
                if got != (1, 1) {
                    fail(
                        format!("{g}, retained offline at start: registered and offline told {got:?} times, not once each"),
                        &world,
                        &story,
                    );
                }
            }
        }
    }
    if let Some(actions) = &actions {
        let daemon = &world.daemon;
        let check = || actions.verify(&all, daemon, allowance(daemon, "default"));
        if let Err(e) = settle(Duration::from_secs(60), check).await {
            fail(e, &world, &story);
        }
        let statuses = all.seen(|s| {
            let mut by: std::collections::BTreeMap<String, usize> = Default::default();
            for e in s.of_type("device.action_completed") {
                *by.entry(e["data"]["status"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            by
        });
        let line = format!(
            "{} actions submitted, {} acknowledged, {} executed, told {statuses:?}, none twice",
            actions.submitted,
            actions.acknowledged.len(),
            actions.display.actions_executed()
        );
        eprintln!("harness: seed {seed}: {line}");
        story.push(line);
    }
    let mut replayed = HashSet::new();
    if world.setup.gives_up {
        // Everything `ops` holds is delivered or given up on; the operator replays the dead
        // letters (same ids) and then it must have everything.
        let daemon = &world.daemon;
        let pending = || match daemon.metric("edgehook_endpoint_pending{endpoint=\"ops\"}") {
            Some(0) => Ok(()),
            other => Err(format!("ops still has {other:?} pending")),
        };
        if let Err(e) = settle(Duration::from_secs(60), pending).await {
            let metrics =
                common::http_get(world.daemon.metrics_port, "/metrics").unwrap_or_default();
            let ops_lines: Vec<&str> = metrics.lines().filter(|l| l.contains("ops")).collect();
            world.daemon.terminate();
            let state_arg = state.display().to_string();
            let (_, status, _) = world
                .daemon
                .outbox_cli(&["--state-dir", &state_arg, "status"]);
            let (_, list, _) =
                world
                    .daemon
                    .outbox_cli(&["--state-dir", &state_arg, "list", "--endpoint", "ops"]);
            let e = format!("{e}\n{}\n{status}\n{list}", ops_lines.join("\n"));
            fail(e, &world, &story);
        }
        world.sample();
        assert_eq!(world.daemon.terminate(), Some(0), "seed {seed}");
        assert!(
            dead_letters(&world.daemon, &state, "default").is_empty(),
            "seed {seed}: default has no limits, so no dead letters"
        );
        replayed = dead_letters(&world.daemon, &state, "ops");
        if !replayed.is_empty() {
            let state_arg = state.display().to_string();
            let (code, out, err) =
                world
                    .daemon
                    .outbox_cli(&["--state-dir", &state_arg, "replay", "--all-dead"]);
            assert_eq!(code, 0, "seed {seed}: {out}{err}");
        }
        story.push(format!("{} dead letters of ops replayed", replayed.len()));
        world.daemon.start();
    }
    {
        let daemon = &world.daemon;
        let check = || {
            // Dead letters let go (`outbox.max_dead_size`) may be any of `ops`'s news, health
            // included, as refused events may (found by seed 14769932744879682093 with a
            // 1 KiB budget: an online let go between two losts).
            let refused = refused(daemon, "ops") || let_go(daemon) > 0;
            verify(
                &ops,
                "ops",
                &models,
                allowance(daemon, "ops"),
                refused,
                &replayed,
            )
        };
        if let Err(e) = settle(Duration::from_secs(60), check).await {
            fail(e, &world, &story);
        }
    }
    // The workspace ends as its sensors' last reports say (hold 0 s: Free at once).
    let occupied = models[n - 2..]
        .iter()
        .any(|m| m.ends().iter().any(|&(p, _)| p));
    let want = if occupied { "Occupied" } else { "Free" };
    // Not when the daemon refused new events for default: its last ones may be among them.
    let checked = !refused(&world.daemon, "default");
    let status = settle(Duration::from_secs(30), || {
        if !checked {
            return Ok(());
        }
        let last = all.seen(|s| {
            s.of_type("workspace.status.updated")
                .last()
                .map(|e| e["data"]["status"].clone())
        });
        match last {
            Some(v) if v == want => Ok(()),
            other => Err(format!(
                "workspace room-h ends {other:?}, the model says {want}"
            )),
        }
    })
    .await;
    if let Err(e) = status {
        fail(e, &world, &story);
    }
    // The room's sensors as a group end as their last reports say, too.
    let present = models[n - 2..]
        .iter()
        .filter(|m| m.ends().iter().any(|&(p, _)| p))
        .count();
    let group = settle(Duration::from_secs(30), || {
        if !checked {
            return Ok(());
        }
        let last = all.seen(|s| {
            s.of_type("sensor.group.reading.updated")
                .last()
                .map(|e| (e["data"]["usable"].clone(), e["data"]["present"].clone()))
        });
        match last {
            Some((usable, p)) if usable == 2 && p == present => Ok(()),
            other => Err(format!(
                "group room-g ends (usable, present) {other:?}, the model says (2, {present})"
            )),
        }
    })
    .await;
    if let Err(e) = group {
        fail(e, &world, &story);
    }
    world.sample();
    let max_size = world.setup.max_size();
    assert!(
        world.peak_kb < 48 * 1024,
        "seed {seed}: peak RSS {} kB, over half of MemoryMax=96M\nreplay: {replay}",
        world.peak_kb
    );
    assert!(
        world.max_outbox <= max_size + 64 * 1024,
        "seed {seed}: the outbox held {} bytes, over its {max_size}\nreplay: {replay}",
        world.max_outbox
    );
    let checked: usize = models.iter().map(|m| m.must().len()).sum();
    let (dups_all, dups_ops) = (all.seen(|s| s.duplicates), ops.seen(|s| s.duplicates));
    eprintln!(
        "harness: seed {}: {}; {} readings, {} phases, faults {:?}; {} must-reports checked at 2 endpoints, 0 lost; dropped {} + {}, dead letters replayed {}, let go {}; {} retained offline at start; duplicates {} + {}; peak RSS {} kB",
        world.seed,
        story[0],
        models.iter().map(|m| m.published.len()).sum::<usize>(),
        phases,
        world.faults,
        checked,
        allowance(&world.daemon, "default"),
        world.daemon.metric("edgehook_endpoint_dropped_total{endpoint=\"ops\"}").unwrap_or(0),
        replayed.len(),
        let_go(&world.daemon),
        ghosts.len(),
        dups_all,
        dups_ops,
        world.peak_kb
    );
    assert_eq!(world.daemon.terminate(), Some(0));
}

/// Actions to a display through the run (see the module docs).
struct Actions {
    rng: fastrand::Rng,
    /// The push listener's port; none: the local API.
    push: Option<u16>,
    display: SimDevice,
    id: String,
    submitted: usize,
    /// Ids answered 202 or 200: each must be told exactly once.
    acknowledged: Vec<String>,
    /// Answers no submission may get.
    unexpected: Vec<String>,
}

impl Actions {
    /// Now and then, submit an action to the display. A refused connection or no answer (the
    /// daemon is down, or the disk full) is not an acknowledgement; the action may or may not
    /// have been taken, and may be told.
    async fn maybe_submit(&mut self, world: &World, state: &Path) {
        if self.rng.u8(..10) != 0 {
            return;
        }
        let id = format!("act-{:x}-{}", world.seed, self.submitted);
        self.submitted += 1;
        let data =
            json!({"id": id, "device": self.id, "name": "show_message", "params": {"text": id}});
        let within = Duration::from_secs(10);
        let answer = match self.push {
            Some(port) => {
                let body = json!({"type": "device.action_requested", "data": data}).to_string();
                // Signed by the daemon's clock, which the harness's clock steps move.
                let ts = (common::unix_now() as i64 + world.clock_offset) as u64;
                let msg = format!("msg-{id}");
                let headers = common::push_headers(port, &body, common::UPSTREAM_SECRET, &msg, ts);
                common::try_raw(port, "POST", "/v1/commands", &headers, Some(&body), within).await
            }
            None => {
                let token = std::fs::read_to_string(state.join("api-token")).unwrap_or_default();
                let port = world.daemon.metrics_port;
                let headers = vec![
                    ("Host".to_string(), format!("127.0.0.1:{port}")),
                    (
                        "Authorization".to_string(),
                        format!("Bearer {}", token.trim()),
                    ),
                ];
                let body = data.to_string();
                common::try_raw(port, "POST", "/v1/actions", &headers, Some(&body), within).await
            }
        };
        match answer {
            Ok(a) if a.status == 202 || a.status == 200 => self.acknowledged.push(id),
            // Not durable (a full disk) or stopping: not taken, said so.
            Ok(a) if a.status == 500 || a.status == 503 => {}
            // Signed by the clock the daemon is about to see (libfaketime caches it for a
            // second): refused as stale, as a gateway whose clock just jumped refuses.
            Ok(a)
                if a.status == 401
                    && a.body.contains("tolerance")
                    && world
                        .clock_stepped
                        .is_some_and(|at| at.elapsed() < Duration::from_secs(3)) => {}
            Ok(a) => self
                .unexpected
                .push(format!("{id}: {} {}", a.status, a.body)),
            Err(_) => {}
        }
    }

    /// `dropped`: how many events `default` counts dropped (a paused endpoint whose share is
    /// full drops its new events, all of them, for it alone): so many may be missing.
    fn verify(&self, all: &Receiver, daemon: &Daemon, dropped: u64) -> Result<(), String> {
        if !self.unexpected.is_empty() {
            return Err(format!(
                "unexpected answers to submissions: {:?}",
                self.unexpected
            ));
        }
        // Every acknowledged action ends (the daemon says so), executed or timed out.
        for id in &self.acknowledged {
            let path = format!("/v1/actions/{id}");
            let status = common::http_get(daemon.metrics_port, &path)
                .and_then(|body| serde_json::from_str::<Value>(&body).ok())
                .and_then(|v| v["status"].as_str().map(str::to_string));
            match status.as_deref() {
                Some("succeeded" | "timed_out") => {}
                other => return Err(format!("action {id} is {other:?}")),
            }
        }
        let told: Vec<(String, String)> = all.seen(|s| {
            s.of_type("device.action_completed")
                .into_iter()
                .map(|e| {
                    (
                        e["data"]["action_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        e["data"]["status"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        });
        let mut missing = Vec::new();
        for id in &self.acknowledged {
            let of: Vec<&String> = told
                .iter()
                .filter(|(i, _)| i == id)
                .map(|(_, s)| s)
                .collect();
            match of.as_slice() {
                [] => missing.push(id),
                [s] if *s == "succeeded" || *s == "timed_out" => {}
                [s] => return Err(format!("action {id} told {s}")),
                more => return Err(format!("action {id} told {} times: {more:?}", more.len())),
            }
        }
        if missing.len() as u64 > dropped {
            return Err(format!(
                "actions acknowledged and never told: {missing:?} ({dropped} events dropped for default)"
            ));
        }
        let mut ids: Vec<&String> = told.iter().map(|(i, _)| i).collect();
        ids.sort();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("action {} told twice", w[0]));
        }
        if self.display.actions_executed() > self.submitted as u64 {
            return Err(format!(
                "the display executed {} actions of {} submitted",
                self.display.actions_executed(),
                self.submitted
            ));
        }
        Ok(())
    }
}

/// The fixed seeds CI runs every time (each failure found becomes a named test as well).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_seeds() {
    // 1–4, and three that found bugs when they were drawn (the harness draws more since, so
    // they make other scenarios now; each bug also has its own named test).
    for seed in [
        1,
        2,
        3,
        4,
        1614750973931571580,
        3175078298761574260,
        11374709229462667527,
        // Actions through the local API (4 pushes them).
        9,
        // A failing endpoint's share full of health events held the other endpoint.
        3420867613234405262,
        // A paused endpoint's full share refused a workspace's last status, not its readings.
        4664192911268364359,
        // The disk filled while only delivery wrote: the store was never reopened.
        2116547421131359390,
        // A held serial device's last frames, written just before a `kill -9`, rightly lost:
        // the model demanded them at the end (a fault of the harness, not of edgehook).
        10633411858054888667,
        // Refused events (documented) the model still demanded: a device's last offline.
        15383730284450656241,
        // A dropped reading a reopen brought back went after the newer one.
        3343455984250628370,
        // Refused events (documented) the model still demanded: a workspace's last status.
        9071275921783145960,
        // A replayed dead letter (old news, rightly last) taken for the device's last word.
        14769932744879682093,
        // A store broken with nobody writing made shutdown's last checkpoint fail (exit 1).
        6967197422479035482,
        // A serial frame lost in a power cut moved edgehook's deadband reference: the model
        // demanded a reading that was no change from the report edgehook held.
        125716985809567577,
        // A clean stop left its last commits unacknowledged; more than the last batches'
        // fingerprints were redelivered, and an old reading was applied again (1 run in 3).
        10612106884582423171,
        // A quiet device unheard between two silences: the model demanded two reports of loss
        // (a fault of the harness, not of edgehook).
        3969032782932316030,
    ] {
        run(seed).await;
    }
}

/// The model's deadband replay, as a table: what was published, which frames may be lost,
/// the seqs that must be reported and the last reports edgehook may end with.
#[test]
fn the_model_replays_the_deadband_over_every_story_of_lost_frames() {
    let f = false;
    type Case<'a> = (
        &'a [(u64, bool, i64)],
        &'a [u64],
        &'a [u64],
        &'a [(bool, i64)],
    );
    let cases: [Case; 5] = [
        // Nothing lost: one story (1 reported, 2 inside its deadband, 3 a change).
        (
            &[(1, f, 200), (2, f, 202), (3, f, 206)],
            &[],
            &[1, 3],
            &[(f, 206)],
        ),
        // Seed 125716985809567577: 3 lost, so 4 is the change from 1 and 7 (19.0) is inside
        // 4's deadband (19.4) though outside 3's (19.6); 9 flips presence in every story.
        (
            &[
                (1, true, 198),
                (2, true, 196),
                (3, f, 196),
                (4, f, 194),
                (7, f, 190),
                (9, true, 190),
            ],
            &[3],
            &[1, 9],
            &[(true, 190)],
        ),
        // The last frame may be lost: edgehook ends at it or at the report before.
        (
            &[(1, f, 200), (2, true, 200)],
            &[2],
            &[1],
            &[(f, 200), (true, 200)],
        ),
        // A lost frame inside the deadband of the report changes nothing.
        (
            &[(1, f, 200), (2, f, 202), (3, f, 206)],
            &[2],
            &[1, 3],
            &[(f, 206)],
        ),
        // Even the first frame may be lost: then the second is a change either way.
        (
            &[(1, f, 200), (2, f, 201)],
            &[1],
            &[],
            &[(f, 200), (f, 201)],
        ),
    ];
    for (published, lost, must, ends) in cases {
        let lost: HashSet<u64> = lost.iter().copied().collect();
        let (got_must, got_ends) = deadband(published, &lost);
        assert_eq!(
            (got_must.as_slice(), got_ends.as_slice()),
            (must, ends),
            "{published:?} losing {lost:?}"
        );
    }
}

/// One new seed per run (printed), or `TEST_HARNESS_SEED` to replay one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed() {
    let seed = std::env::var("TEST_HARNESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    run(seed).await;
}
