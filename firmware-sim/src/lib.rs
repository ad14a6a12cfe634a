//! Simulated room hardware for edgehook: occupancy sensors and room displays that speak MQTT
//! the way real ones do.
//!
//! Each simulated device is its own MQTT client (persistent session, client id `sim-{device}`)
//! with a last-will (`offline`, retained) on its status topic and a birth message (`online`,
//! retained) after connecting. Publishes the broker has not acknowledged are sent again when the
//! connection comes back and the broker still has the session (MQTT's QoS 1 redelivery). If the
//! broker lost the session (killed without saving it), rumqttc discards them on the new session:
//! [`SimDevice::flushed`] then never completes.
//!
//! A device publishes readings (JSON objects) at QoS 1 on a schedule; a configurable share of
//! them change a tracked field, the rest only move the `seq` and `ts` metadata. Everything a
//! device publishes follows from the seed, so a run can be repeated exactly (except `ts`, which
//! is the wall-clock publish time in milliseconds, used downstream to measure latency).
//!
//! Default topics (the ones `edgehook demo` and the example config use):
//! - `sensors/{device}/reading` — occupancy sensors: `{"presence":bool,"temperature":f64,"seq":n,"ts":ms}`
//! - `rooms/{device}/display` — room displays: `{"state":"available"|"in_use","booked":bool,"seq":n,"ts":ms}`
//! - `devices/{device}/status` — `online` / `offline` (birth and last-will)
//!
//! A [`Profile`] publishes the same readings as an ecosystem does (Zigbee2MQTT, ChirpStack, The
//! Things Stack, Tasmota, Shelly), on its topics and in its shapes.
//!
//! Serial devices ([`serial`]) write the same readings as framed lines on a real pseudo-terminal.
//! Modbus units ([`modbus`]) answer register reads over RTU on such a terminal, or over TCP.
//! With the `powercut` feature, [`powercut`] simulates the gateway's SD card losing power.

pub mod modbus;
#[cfg(feature = "powercut")]
pub mod powercut;
pub mod profile;
pub mod serial;

pub use profile::Profile;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// What kind of hardware a simulated device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    OccupancySensor,
    RoomDisplay,
}

/// Topic templates; `{device}` is replaced by the device id. They are the `edgehook`
/// profile's; another `profile` has its ecosystem's own.
#[derive(Debug, Clone)]
pub struct Topics {
    pub sensor_reading: String,
    pub display_reading: String,
    pub status: String,
    pub profile: Profile,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            sensor_reading: "sensors/{device}/reading".into(),
            display_reading: "rooms/{device}/display".into(),
            status: "devices/{device}/status".into(),
            profile: Profile::Edgehook,
        }
    }
}

impl Topics {
    /// The default topics, published as `profile` does.
    pub fn profile(profile: Profile) -> Topics {
        Topics {
            profile,
            ..Topics::default()
        }
    }
}

impl Topics {
    pub(crate) fn reading(&self, class: DeviceClass, id: &str) -> String {
        match class {
            DeviceClass::OccupancySensor => self.sensor_reading.replace("{device}", id),
            DeviceClass::RoomDisplay => self.display_reading.replace("{device}", id),
        }
    }
    pub(crate) fn status(&self, id: &str) -> String {
        self.status.replace("{device}", id)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a simulated device answers the actions sent to it (on `devices/<id>/actions`,
/// answering on `devices/<id>/actions/result`). Whatever it does, it executes an action id once:
/// a repeat (sent again after the gateway crashed) gets the first answer again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActionBehaviour {
    /// Executes it and answers `succeeded`.
    #[default]
    Succeeds,
    /// Answers `failed` with a reason.
    Fails,
    /// Never answers.
    Silent,
    /// Answers `succeeded` twice.
    Twice,
}

/// The deterministic part of a device: its tracked values and how they evolve.
#[derive(Debug, Clone)]
pub struct Firmware {
    pub id: String,
    pub class: DeviceClass,
    rng: fastrand::Rng,
    seq: u64,
    presence: bool,
    /// Tenths of a degree, so values compare exactly.
    temperature_dc: i64,
    in_use: bool,
    booked: bool,
    /// Whether any reading has been produced yet (the first one is always a change).
    started: bool,
}

impl Firmware {
    pub fn new(id: impl Into<String>, class: DeviceClass, seed: u64) -> Firmware {
        let id = id.into();
        let mut rng = fastrand::Rng::with_seed(seed ^ fnv1a(id.as_bytes()));
        Firmware {
            class,
            seq: 0,
            presence: rng.bool(),
            temperature_dc: rng.i64(190..=240),
            in_use: rng.bool(),
            booked: rng.bool(),
            rng,
            id,
            started: false,
        }
    }

    /// The next reading. With probability `change_ratio` a tracked field changes; the first
    /// reading always counts as a change. Returns the payload and whether it is a change.
    pub fn next_reading(&mut self, change_ratio: f64, ts_ms: u64) -> (Value, bool) {
        let changed = !self.started || self.rng.f64() < change_ratio;
        if self.started && changed {
            match self.class {
                DeviceClass::OccupancySensor => {
                    if self.rng.bool() {
                        self.presence = !self.presence;
                    } else {
                        let step = self.rng.i64(1..=5) * if self.rng.bool() { 1 } else { -1 };
                        let next = (self.temperature_dc + step).clamp(150, 300);
                        // at a bound, step the other way so a change is always a change
                        self.temperature_dc = if next == self.temperature_dc {
                            next - step
                        } else {
                            next
                        };
                    }
                }
                DeviceClass::RoomDisplay => {
                    if self.rng.bool() {
                        self.in_use = !self.in_use;
                    } else {
                        self.booked = !self.booked;
                    }
                }
            }
        }
        self.started = true;
        self.seq += 1;
        let payload = match self.class {
            DeviceClass::OccupancySensor => json!({
                "presence": self.presence,
                "temperature": self.temperature_dc as f64 / 10.0,
                "seq": self.seq,
                "ts": ts_ms,
            }),
            DeviceClass::RoomDisplay => json!({
                "state": if self.in_use { "in_use" } else { "available" },
                "booked": self.booked,
                "seq": self.seq,
                "ts": ts_ms,
            }),
        };
        (payload, changed)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A simulated device connected to a broker.
pub struct SimDevice {
    pub firmware: Firmware,
    host: String,
    port: u16,
    client: AsyncClient,
    topics: Topics,
    poller: JoinHandle<()>,
    acked: tokio::sync::watch::Receiver<u64>,
    published: u64,
    /// Births published again on reconnects and action answers (by the poller), which the
    /// broker acknowledges too.
    births: Arc<AtomicU64>,
    behaviour: Arc<std::sync::Mutex<ActionBehaviour>>,
    executed: Arc<AtomicU64>,
}

impl SimDevice {
    /// Connect with a retained `offline` last-will, then publish a retained `online` birth (and
    /// again after every reconnect).
    pub async fn connect(
        host: &str,
        port: u16,
        firmware: Firmware,
        topics: Topics,
    ) -> anyhow::Result<SimDevice> {
        let profile = topics.profile;
        let birth = profile.status(&topics, &firmware.id, true);
        let will = profile.status(&topics, &firmware.id, false);
        let mut options = MqttOptions::new(format!("sim-{}", firmware.id), host, port);
        options
            .set_keep_alive(Duration::from_secs(5))
            // A persistent session, as firmware that relies on QoS 1 uses: after a reconnect
            // to a broker that kept the session, unacknowledged publishes are sent again.
            .set_clean_session(false)
            .set_inflight(200)
            .set_max_packet_size(4 << 20, 4 << 20);
        if let Some((topic, payload)) = &will {
            options.set_last_will(LastWill::new(
                topic,
                payload.clone(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        // As firmware with small messages both ways does (no Nagle delay on its answers).
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let (acked_tx, acked) = tokio::sync::watch::channel(0u64);
        let births = Arc::new(AtomicU64::new(0));
        let actions = (profile == Profile::Edgehook).then(|| {
            (
                format!("devices/{}/actions", firmware.id),
                format!("devices/{}/actions/result", firmware.id),
            )
        });
        let behaviour = Arc::new(std::sync::Mutex::new(ActionBehaviour::default()));
        let executed = Arc::new(AtomicU64::new(0));
        let rebirth = Rebirth {
            class: firmware.class,
            client: client.clone(),
            birth: birth.clone(),
            births: births.clone(),
            actions: actions.clone(),
            behaviour: behaviour.clone(),
            answered: Default::default(),
            executed: executed.clone(),
        };
        let poller = tokio::spawn(poll(eventloop, connected_tx, acked_tx, rebirth));
        tokio::time::timeout(Duration::from_secs(10), connected_rx)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}: broker {host}:{port} did not answer within 10s",
                    firmware.id
                )
            })?
            .map_err(|_| anyhow::anyhow!("{}: connection to {host}:{port} failed", firmware.id))?;
        if let Some((topic, _)) = &actions {
            client.subscribe(topic.as_str(), QoS::AtLeastOnce).await?;
        }
        let mut published = 0;
        if let Some((topic, payload)) = birth {
            client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await?;
            published += 1;
        }
        Ok(SimDevice {
            firmware,
            host: host.to_string(),
            port,
            client,
            topics,
            poller,
            acked,
            published,
            births,
            behaviour,
            executed,
        })
    }

    /// How it answers actions from now on.
    pub fn answer_actions(&self, behaviour: ActionBehaviour) {
        *self.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    /// How many distinct actions it has executed.
    pub fn actions_executed(&self) -> u64 {
        self.executed.load(Ordering::SeqCst)
    }

    /// Publish the next reading (QoS 1); returns it and whether it changed a tracked field.
    pub async fn publish_next(&mut self, change_ratio: f64) -> anyhow::Result<(Value, bool)> {
        let (payload, changed) = self.firmware.next_reading(change_ratio, now_ms());
        let id = &self.firmware.id;
        for (topic, body) in
            self.topics
                .profile
                .reading(&self.topics, self.firmware.class, id, &payload)
        {
            self.publish(topic, body, false).await?;
        }
        Ok((payload, changed))
    }

    /// Publish arbitrary bytes on this device's reading topic (for corrupt-payload tests).
    pub async fn publish_raw(&mut self, payload: Vec<u8>) -> anyhow::Result<()> {
        let topic = self.topics.reading(self.firmware.class, &self.firmware.id);
        self.publish(topic, payload, false).await
    }

    /// Publish a status report (QoS 1, not retained: a report only this moment's subscribers
    /// see, so whoever acknowledged it must remember it).
    pub async fn publish_status(&mut self, online: bool) -> anyhow::Result<()> {
        let status = self
            .topics
            .profile
            .status(&self.topics, &self.firmware.id, online);
        if let Some((topic, payload)) = status {
            self.publish(topic, payload, false).await?;
        }
        Ok(())
    }

    /// Publish at QoS 1, counted for [`SimDevice::flushed`].
    async fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await?;
        self.published += 1;
        Ok(())
    }

    /// Wait until the broker has acknowledged everything published so far.
    pub async fn flushed(&mut self) -> anyhow::Result<()> {
        let (published, births) = (self.published, self.births.clone());
        let want = move || published + births.load(Ordering::SeqCst);
        self.acked.wait_for(|n| *n >= want()).await.map_err(|_| {
            anyhow::anyhow!(
                "{}: connection closed before all publishes were acknowledged",
                self.firmware.id
            )
        })?;
        Ok(())
    }

    /// Announce `offline` and disconnect cleanly.
    pub async fn shut_down(mut self) -> anyhow::Result<()> {
        let status = self
            .topics
            .profile
            .status(&self.topics, &self.firmware.id, false);
        if let Some((topic, payload)) = status {
            self.publish(topic, payload, true).await?;
        }
        self.flushed().await?;
        self.client.disconnect().await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.poller).await;
        Ok(())
    }

    /// Lose power: drop the connection without DISCONNECT, so the broker publishes the last-will.
    pub fn pull_plug(self) {
        self.poller.abort();
    }

    /// Reboot: lose power, stay down for `down_for`, then come back (birth message) with the
    /// firmware's state intact — what a flaky power supply or a watchdog reset looks like.
    pub async fn bounce(self, down_for: Duration) -> anyhow::Result<SimDevice> {
        let (host, port, firmware, topics) = (
            self.host.clone(),
            self.port,
            self.firmware.clone(),
            self.topics.clone(),
        );
        self.pull_plug();
        tokio::time::sleep(down_for).await;
        SimDevice::connect(&host, port, firmware, topics).await
    }
}

/// What a device of `class` does for action `name`: its result, or why it failed. Displays
/// show bookings and messages; sensors identify themselves (blink), reboot and calibrate.
pub fn perform(class: DeviceClass, name: &Value, params: &Value) -> Result<Value, String> {
    let name = name.as_str().unwrap_or_default();
    match (class, name) {
        (DeviceClass::RoomDisplay, "show_booking") => {
            Ok(json!({"showing": params["booking_id"], "until": params["end"]}))
        }
        (DeviceClass::RoomDisplay, "clear_booking") => Ok(json!({"cleared": params["booking_id"]})),
        (DeviceClass::RoomDisplay, "show_message") => Ok(json!({"showing": params["text"]})),
        (DeviceClass::OccupancySensor, "identify") => {
            Ok(json!({"blinked_seconds": params["seconds"].as_u64().unwrap_or(5)}))
        }
        (DeviceClass::OccupancySensor, "reboot") => Ok(json!({"uptime_seconds": 0})),
        (DeviceClass::OccupancySensor, "calibrate") => {
            Ok(json!({"offset": params["offset"].as_f64().unwrap_or(0.0)}))
        }
        _ => Err(format!("this device does not know `{name}`")),
    }
}

/// What a device does on every reconnect: publish its retained `online` birth again, as real
/// firmware does (the broker may have published its last-will meanwhile, or lost the retained
/// birth in a restart).
struct Rebirth {
    class: DeviceClass,
    client: AsyncClient,
    /// The birth's topic and payload, if the profile has one.
    birth: Option<(String, Vec<u8>)>,
    births: Arc<AtomicU64>,
    /// Where actions arrive and answers go (edgehook's own profile only).
    actions: Option<(String, String)>,
    behaviour: Arc<std::sync::Mutex<ActionBehaviour>>,
    /// Action id → the answer given (an id is executed once).
    answered: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>>,
    executed: Arc<AtomicU64>,
}

impl Rebirth {
    /// An action arrived: execute it once and answer as the behaviour says.
    fn action(&self, payload: &[u8]) {
        let Some((_, result_topic)) = &self.actions else {
            return;
        };
        let Ok(action) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        let Some(id) = action["id"].as_str() else {
            return;
        };
        let behaviour = *self.behaviour.lock().unwrap_or_else(|e| e.into_inner());
        let known = self
            .answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        let answer = match known {
            Some(answer) => answer,
            None => {
                self.executed.fetch_add(1, Ordering::SeqCst);
                let done = match behaviour {
                    ActionBehaviour::Fails => Err("the device could not do it".to_string()),
                    _ => perform(self.class, &action["name"], &action["params"]),
                };
                let answer = match done {
                    Ok(result) => json!({"id": id, "status": "succeeded", "result": result}),
                    Err(reason) => json!({"id": id, "status": "failed", "reason": reason}),
                }
                .to_string()
                .into_bytes();
                self.answered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_string(), answer.clone());
                answer
            }
        };
        let times = match behaviour {
            ActionBehaviour::Silent => 0,
            ActionBehaviour::Twice => 2,
            _ => 1,
        };
        for _ in 0..times {
            // Counted before it is queued, as a birth is.
            self.births.fetch_add(1, Ordering::SeqCst);
            let sent = self.client.try_publish(
                result_topic.as_str(),
                QoS::AtLeastOnce,
                false,
                answer.clone(),
            );
            if sent.is_err() {
                self.births.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

async fn poll(
    mut eventloop: EventLoop,
    connected: tokio::sync::oneshot::Sender<()>,
    acked: tokio::sync::watch::Sender<u64>,
    rebirth: Rebirth,
) {
    let mut connected = Some(connected);
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                if let Some(tx) = connected.take() {
                    let _ = tx.send(()); // `connect` publishes the first birth
                } else if let Some((topic, payload)) = &rebirth.birth {
                    // Counted before it is queued, so its ack never stands in for another's.
                    rebirth.births.fetch_add(1, Ordering::SeqCst);
                    let birth = rebirth.client.try_publish(
                        topic.as_str(),
                        QoS::AtLeastOnce,
                        true,
                        payload.clone(),
                    );
                    if birth.is_err() {
                        rebirth.births.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => acked.send_modify(|n| *n += 1),
            Ok(Event::Incoming(Packet::Publish(p))) => rebirth.action(&p.payload),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(_) => {
                failures += 1;
                if connected.is_some() && failures > 20 {
                    return; // never connected: `connect` reports it
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A fleet run: how many devices, how they publish.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub host: String,
    pub port: u16,
    pub sensors: usize,
    pub displays: usize,
    pub seed: u64,
    /// Pause between a device's readings; zero publishes as fast as the broker accepts them
    /// (each reading waits for the previous one's PUBACK, as real firmware does).
    pub interval: Duration,
    /// Readings per device; `None` runs until stopped.
    pub readings: Option<u64>,
    pub change_ratio: f64,
    pub prefix: String,
    pub topics: Topics,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            sensors: 4,
            displays: 1,
            seed: 42,
            interval: Duration::from_secs(2),
            readings: None,
            change_ratio: 0.3,
            prefix: "sim".into(),
            topics: Topics::default(),
        }
    }
}

/// What a fleet run published.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FleetStats {
    pub readings: u64,
    /// Readings that changed a tracked field (including each device's first).
    pub changes: u64,
}

impl std::ops::AddAssign for FleetStats {
    fn add_assign(&mut self, o: FleetStats) {
        self.readings += o.readings;
        self.changes += o.changes;
    }
}

impl FleetConfig {
    /// The device ids and classes of this fleet: `<prefix>-occ-N` then `<prefix>-disp-N`.
    pub fn devices(&self) -> Vec<(String, DeviceClass)> {
        (0..self.sensors)
            .map(|i| {
                (
                    format!("{}-occ-{}", self.prefix, i + 1),
                    DeviceClass::OccupancySensor,
                )
            })
            .chain((0..self.displays).map(|i| {
                (
                    format!("{}-disp-{}", self.prefix, i + 1),
                    DeviceClass::RoomDisplay,
                )
            }))
            .collect()
    }
}

/// Run every device of the fleet until each has published its readings (all acknowledged by
/// the broker) or `stop` resolves. Devices disconnect cleanly at the end, announcing `offline`.
/// With an interval, device `i` of `n` starts `i/n` of an interval late, so that readings are
/// spread over the interval as a real fleet's are, not all sent on one tick.
pub async fn run_fleet(
    config: FleetConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<FleetStats> {
    let stop = tokio_stop(stop);
    let mut tasks = tokio::task::JoinSet::new();
    let devices = config.devices();
    let n = devices.len() as u32;
    for (i, (id, class)) in (0u32..).zip(devices) {
        let config = config.clone();
        let mut stop = stop.clone();
        tasks.spawn(async move {
            let firmware = Firmware::new(id, class, config.seed);
            let mut device =
                SimDevice::connect(&config.host, config.port, firmware, config.topics.clone())
                    .await?;
            let mut stats = FleetStats::default();
            if !config.interval.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(config.interval * i / n) => {}
                    _ = stop.changed() => {}
                }
            }
            while config.readings.is_none_or(|n| stats.readings < n) && !*stop.borrow() {
                let (_, changed) = device.publish_next(config.change_ratio).await?;
                stats.readings += 1;
                stats.changes += changed as u64;
                if config.interval.is_zero() {
                    // As fast as the broker accepts: like real firmware, wait for the PUBACK.
                    device.flushed().await?;
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(config.interval) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
            device.flushed().await?;
            device.shut_down().await?;
            anyhow::Ok(stats)
        });
    }
    let mut total = FleetStats::default();
    while let Some(res) = tasks.join_next().await {
        total += res??;
    }
    Ok(total)
}

fn tokio_stop(
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = stop => { let _ = tx.send(true); }
            _ = tx.closed() => {}
        }
    });
    rx
}

#[cfg(test)]
mod tests {

    #[test]
    fn devices_do_the_actions_of_their_class() {
        use DeviceClass::*;
        // (class, name, params, Ok(result) or Err)
        let rows = [
            (
                RoomDisplay,
                "show_booking",
                json!({"booking_id": "bk", "end": "t"}),
                Ok(json!({"showing": "bk", "until": "t"})),
            ),
            (
                RoomDisplay,
                "clear_booking",
                json!({"booking_id": "bk"}),
                Ok(json!({"cleared": "bk"})),
            ),
            (
                RoomDisplay,
                "show_message",
                json!({"text": "hi"}),
                Ok(json!({"showing": "hi"})),
            ),
            (
                OccupancySensor,
                "identify",
                json!({"seconds": 3}),
                Ok(json!({"blinked_seconds": 3})),
            ),
            (
                OccupancySensor,
                "identify",
                Value::Null,
                Ok(json!({"blinked_seconds": 5})),
            ),
            (
                OccupancySensor,
                "reboot",
                Value::Null,
                Ok(json!({"uptime_seconds": 0})),
            ),
            (
                OccupancySensor,
                "calibrate",
                json!({"offset": -0.5}),
                Ok(json!({"offset": -0.5})),
            ),
            (OccupancySensor, "show_booking", Value::Null, Err(())),
            (RoomDisplay, "reboot", Value::Null, Err(())),
        ];
        for (class, name, params, expected) in rows {
            let got = perform(class, &json!(name), &params).map_err(|_| ());
            assert_eq!(got, expected, "{class:?} {name}");
        }
    }

    use super::*;

    #[test]
    fn firmware_is_deterministic_from_the_seed() {
        let run = |seed| {
            let mut fw = Firmware::new("occ-1", DeviceClass::OccupancySensor, seed);
            (0..50).map(|_| fw.next_reading(0.3, 0)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn change_flag_matches_the_tracked_fields() {
        let mut fw = Firmware::new("disp-1", DeviceClass::RoomDisplay, 1);
        let tracked = |v: &Value| (v["state"].clone(), v["booked"].clone());
        let (first, changed) = fw.next_reading(0.3, 0);
        assert!(changed, "the first reading is a change");
        let mut prev = tracked(&first);
        let mut changes = 0;
        for _ in 0..1000 {
            let (v, changed) = fw.next_reading(0.3, 0);
            assert_eq!(changed, tracked(&v) != prev, "{v}");
            changes += changed as u32;
            prev = tracked(&v);
        }
        assert!((200..400).contains(&changes), "about 30% change: {changes}");
    }
}
