//! One seed's run, in the order it happens: drawn and started, its phases of readings and
//! faults, its last words, then every check of what the receivers must know.

use super::*;

/// What a seed drew apart from its main generator (so that the seeds drawn before each of
/// these existed keep their scenarios).
struct Draws {
    /// The dead letters' budget: the default (a quarter of the outbox), or small enough that
    /// `ops`'s letters are let go, which the model then allows for.
    dead_size: Option<u64>,
    /// What is kept of a device, bounded in bytes: above what the harness's devices keep (a
    /// padded reading is about 1.6 KB; seed 2 found 1,024 too tight: its readings were
    /// refused, as the bound says), so nothing is refused and the model holds.
    state_bytes: u64,
    /// How long a stop waits for deliveries in flight: the default, or less than a hanging
    /// receiver holds an answer, so a stop lets them go (they stay in the outbox).
    stop_timeout: Option<&'static str>,
    /// Devices known only by a retained offline status at the daemon's first start (as
    /// Zigbee2MQTT leaves its availability, or a broker a last-will): each must be registered
    /// and told offline, once.
    ghosts: Vec<String>,
}

impl Draws {
    fn of(seed: u64) -> Draws {
        let pick = |salt: u64| fastrand::Rng::with_seed(seed ^ salt);
        Draws {
            dead_size: [None, Some(1 << 10), Some(4 << 10)][pick(0xdead_0000).usize(..3)],
            state_bytes: [16384, 8192, 4096][pick(0x5b17_0000).usize(..3)],
            stop_timeout: [None, Some("1s")][pick(0x5709_0000).usize(..2)],
            ghosts: {
                let mut grng = pick(0x6405_0000);
                (0..grng.usize(..3)).map(|i| format!("ghost-{i}")).collect()
            },
        }
    }
}

/// The people counters on the Modbus line, and every count each was set to, in order.
struct Counters {
    units: firmware_sim::modbus::Units,
    history: Vec<Vec<u32>>,
    rng: fastrand::Rng,
    /// The faulty unit's behaviour, if there is one.
    faulty: Option<firmware_sim::modbus::Behaviour>,
    _serving: firmware_sim::modbus::Serving,
    _line: Option<SerialLink>,
}

impl Counters {
    fn start(seed: u64, setup: &Modbus) -> Counters {
        use firmware_sim::modbus::{people_counter, serve_rtu, serve_tcp, Units};
        let units = Units::default();
        for u in 1..=setup.units {
            units.add(u, people_counter(0, 0, 200));
        }
        if let Some(behaviour) = setup.faulty {
            units.add(FAULTY_UNIT, people_counter(77, 0, 200));
            units.with(FAULTY_UNIT, |u| u.behaviour = behaviour);
        }
        let (serving, line) = match &setup.line {
            ModbusLine::Rtu(path) => {
                let line = SerialLink::plug(path).unwrap();
                (serve_rtu(&line, units.clone()).unwrap(), Some(line))
            }
            ModbusLine::Tcp(port) => {
                let listener = std::net::TcpListener::bind(("127.0.0.1", *port)).unwrap();
                (serve_tcp(listener, units.clone()).unwrap(), None)
            }
        };
        Counters {
            _serving: serving,
            units,
            history: vec![vec![0]; usize::from(setup.units)],
            rng: fastrand::Rng::with_seed(seed ^ 0x30db_0001),
            faulty: setup.faulty,
            _line: line,
        }
    }

    fn ids(&self) -> impl Iterator<Item = (usize, String)> + '_ {
        (0..self.history.len()).map(|i| (i, format!("counter-{}", i + 1)))
    }

    /// Sometimes someone walks in: a counter's count goes up.
    fn maybe_count(&mut self) {
        if self.rng.u8(..6) != 0 {
            return;
        }
        let i = self.rng.usize(..self.history.len());
        let count = self.history[i].last().unwrap() + self.rng.u32(1..5);
        self.history[i].push(count);
        let unit = i as u8 + 1;
        self.units.with(unit, |u| {
            firmware_sim::modbus::Unit::set_u32(&mut u.input, 0, count)
        });
    }

    /// What `r` got of each counter: only counts it was set to, and its last count unless
    /// `allowance` (readings the endpoint may miss); of the faulty unit, no reading at all.
    fn told(&self, r: &Receiver, name: &str, allowance: u64) -> Result<(), String> {
        let faulty = format!("counter-{FAULTY_UNIT}");
        if self.faulty.is_some() && !reports(r, &faulty).is_empty() {
            return Err(format!(
                "{name}: {faulty} never answers well, yet it reported {:?}",
                reports(r, &faulty)
            ));
        }
        for (i, id) in self.ids() {
            let counts: Vec<u64> = reports(r, &id)
                .iter()
                .filter_map(|(_, f)| f["people_in"].as_u64())
                .collect();
            let set = &self.history[i];
            if let Some(c) = counts.iter().find(|c| !set.contains(&(**c as u32))) {
                return Err(format!(
                    "{name}: {id} reported {c}, never counted ({set:?})"
                ));
            }
            let last = u64::from(*set.last().unwrap());
            if allowance == 0 && counts.iter().max() != Some(&last) {
                return Err(format!(
                    "{name}: {id} ends at {:?}, its count is {last}",
                    counts.iter().max()
                ));
            }
        }
        Ok(())
    }
}

pub struct Run {
    counters: Option<Counters>,
    seed: u64,
    replay: String,
    rng: fastrand::Rng,
    draws: Draws,
    all: Receiver,
    ops: Receiver,
    state: PathBuf,
    world: World,
    models: Vec<Model>,
    actions: Option<Actions>,
    /// What happened, told with a failure and in the summary.
    story: Vec<String>,
    /// The ids of dead letters replayed at the end.
    replayed: HashSet<String>,
    phases: usize,
    dir: tempfile::TempDir,
}

impl Run {
    /// The seed's setup drawn, the daemon started on it, and every device heard upstream.
    pub async fn start(seed: u64) -> Run {
        let replay =
            format!("TEST_HARNESS_SEED={seed} cargo test --test harness -- one_seed --nocapture");
        eprintln!("harness: seed {seed} (replay: {replay})");
        let draws = Draws::of(seed);
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = tempfile::tempdir().unwrap();
        let broker = Mosquitto::start(dir.path());
        let all = Receiver::start().await;
        let ops = Receiver::start().await;
        let (card, state) = common::powercut_card(dir.path(), seed);
        let retained: Vec<(String, String)> = draws
            .ghosts
            .iter()
            .map(|g| (format!("devices/{g}/status"), "offline".to_string()))
            .collect();
        let retained: Vec<(&str, &str)> = retained
            .iter()
            .map(|(t, p)| (t.as_str(), p.as_str()))
            .collect();
        common::publish_retained(broker.port, "ghosts", &retained).await;
        let setup = Setup::draw(seed, &mut rng, dir.path().join("ttyHARNESS"));
        let counters = setup.modbus.as_ref().map(|m| Counters::start(seed, m));
        let spare = Receiver::start().await;
        let serial = SerialLink::plug(&setup.serial).unwrap();
        let endpoints = endpoints(&all.url, &ops.url, &setup);
        let webhook = format!("{endpoints}\n{}", setup.rest("400ms"));
        let mut daemon = Daemon::new_with_webhook(dir.path(), broker.port, &webhook);
        draws.configure(&mut daemon, &setup, &state);
        let clock_file = dir.path().join("faketime");
        std::fs::write(&clock_file, "+0\n").unwrap();
        common::fake_clock(&mut daemon, &clock_file);
        daemon.start();
        let world = World {
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
        let mut run = Run {
            counters,
            seed,
            replay,
            rng,
            draws,
            all,
            ops,
            state,
            world,
            models: Vec::new(),
            actions: None,
            story: Vec::new(),
            replayed: HashSet::new(),
            phases: 0,
            dir,
        };
        run.devices().await;
        run.phases = run.rng.usize(4..=7);
        run.story = run.told_setup();
        run
    }

    pub fn phases(&self) -> usize {
        self.phases
    }

    /// The devices, each heard once, and the display for actions, if the seed has them.
    async fn devices(&mut self) {
        let (seed, port, rng) = (self.seed, self.world.broker.port, &mut self.rng);
        let models = &mut self.models;
        for i in 0..rng.usize(3..=6) {
            let kind = match rng.u8(..4) {
                0 => "held",
                1 => "quiet",
                _ => "fast",
            };
            let id = format!("{kind}-{seed:x}-{i}");
            let sim = device(port, &id, DeviceClass::OccupancySensor).await;
            let link = Link::Mqtt(Box::new(sim));
            models.push(Model::new(id, kind == "held", link, rng));
        }
        for k in 0..rng.usize(1..=2) {
            let held = rng.u8(..3) == 0;
            let id = format!("{}-ser-{seed:x}-{k}", if held { "held" } else { "fast" });
            models.push(Model::new(id, held, Link::Serial, rng));
        }
        // The last two are the workspace's sensors.
        for id in ["fast-room-a", "fast-room-b"] {
            let sim = device(port, id, DeviceClass::OccupancySensor).await;
            models.push(Model::new(id.into(), false, Link::Mqtt(Box::new(sim)), rng));
        }
        for m in models.iter_mut() {
            if self.world.setup.drops {
                m.padding = 1500;
            }
            // Every device is known before the first burst of junk ids fills the registry.
            m.step(rng, &mut self.world.serial).await;
            m.flushed().await;
        }
        if let Some(push) = self.world.setup.actions {
            let id = format!("disp-{seed:x}");
            self.actions = Some(Actions {
                rng: fastrand::Rng::with_seed(seed ^ 0xac71_0001),
                push,
                display: device(port, &id, DeviceClass::RoomDisplay).await,
                id,
                acknowledged: Vec::new(),
                submitted: 0,
                unexpected: Vec::new(),
            });
        }
        let counters = self.counters.as_ref().map_or(0, |c| c.history.len());
        let devices = self.models.len() + usize::from(self.actions.is_some()) + counters;
        self.world
            .daemon
            .wait_metric("edgehook_devices", devices as u64)
            .await;
        // ...and known on disk: a serial device's frames have no acknowledgement, so a crash
        // before its first batch is written leaves it unknown, and refused for good once the
        // junk ids fill the registry (seed 2262397651144431988: both serial devices registered
        // 90 ms before a `kill -9`). An event of each received upstream says its batch is
        // durable (delivery sees only synced batches, and they are synced in order).
        let (all, models) = (&self.all, &self.models);
        let counter_ids: Vec<String> = self
            .counters
            .iter()
            .flat_map(|c| c.ids())
            .map(|(_, id)| id)
            .collect();
        let heard = || {
            let ids = models.iter().map(|m| &m.id).chain(&counter_ids);
            ids.clone()
                .find(|id| reports(all, id).is_empty() && health_of(all, id).is_empty())
                .map_or(Ok(()), |id| {
                    Err(format!("nothing of {id} received upstream"))
                })
        };
        if let Err(e) = settle(Duration::from_secs(30), heard).await {
            panic!("seed {seed}: {e}\n{}", self.world.daemon.log());
        }
    }

    /// The seed's setup in words, the first lines of its story.
    fn told_setup(&self) -> Vec<String> {
        let setup = &self.world.setup;
        let mut story = vec![format!(
            "{} devices; outbox {} bytes, a checkpoint every {} ms{}{}{}",
            self.models.len(),
            setup.max_size(),
            setup.checkpoint_ms,
            if setup.drops {
                ", drop_oldest_readings"
            } else {
                ""
            },
            if setup.gives_up {
                "; ops gives up after 4 attempts or 20 s"
            } else {
                ""
            },
            if setup.mapped {
                "; sensor readings through a jq mapping"
            } else {
                ""
            }
        )];
        if let Some((n, linger)) = setup.batch {
            story.push(format!(
                "default sends batches of up to {n}, lingering {linger} ms"
            ));
        }
        if let Some(above) = setup.compress {
            story.push(format!("ops gzips bodies over {above} bytes"));
        }
        if setup.ops_by_api {
            story.push("ops is made through the control API".into());
        }
        if let Some(bytes) = self.draws.dead_size {
            story.push(format!("dead letters kept within {bytes} bytes"));
        }
        if let Some(t) = self.draws.stop_timeout {
            story.push(format!("a stop waits {t} for deliveries in flight"));
        }
        if let Some(m) = &setup.modbus {
            story.push(m.story());
        }
        if !self.draws.ghosts.is_empty() {
            let ghosts = self.draws.ghosts.join(", ");
            story.push(format!("retained offline at start: {ghosts}"));
        }
        match setup.actions {
            Some(Some(_)) => story.push("actions pushed to the push listener".into()),
            Some(None) => story.push("actions through the local API".into()),
            None => {}
        }
        story
    }

    /// Fails the run with its seed, its story, the daemon's log and the way to replay it.
    fn fail(&self, e: String) -> ! {
        let broker_log =
            std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default();
        eprintln!("mosquitto's log:\n{broker_log}");
        let outbox = common::http_get(self.world.daemon.metrics_port, "/v1/outbox");
        eprintln!("harness: the outbox now: {}", outbox.unwrap_or_default());
        panic!(
            "seed {}: {e}\n{}\n{}\nreplay: {}",
            self.seed,
            self.story.join("\n"),
            self.world.daemon.log(),
            self.replay
        );
    }

    /// One phase: a receiver misbehaving, readings with a fault among them (and sometimes a
    /// burst of junk device ids), then the checks that the other endpoint kept up.
    pub async fn phase(&mut self, phase: usize) {
        // Which receiver misbehaves how; at most one at a time, so the other must keep up.
        let rng = &mut self.rng;
        let victim = rng.usize(..3); // 0: all, 1: ops, 2: neither
        let mut how = MISBEHAVIOURS[rng.usize(..MISBEHAVIOURS.len())];
        if self.world.setup.drops && matches!(how, Misbehaviour::Gone) {
            // A disabled endpoint's full share refuses health news too (its own named test).
            how = Misbehaviour::Unavailable;
        }
        let target = self.models[rng.usize(..self.models.len())].id.clone();
        match victim {
            0 => misbehave(&self.all, how, &target),
            1 => misbehave(&self.ops, how, &target),
            _ => {}
        }
        let fault = pick_fault(rng);
        let fault_at = rng.usize(0..40);
        // A small outbox under drop_oldest_readings fills in a long phase.
        let steps = match self.world.setup.drops {
            true => rng.usize(40..120),
            false => rng.usize(20..60),
        };
        for step in 0..steps {
            if step == fault_at {
                self.inject(fault).await;
            }
            self.step(phase, step == steps / 2).await;
        }
        if fault_at >= steps {
            self.inject(fault).await;
        }
        for m in self.models.iter_mut() {
            m.flushed().await;
        }
        if let Err(e) = self.world.end_phase((&self.all, &self.ops)) {
            self.fail(e);
        }
        self.story.push(format!(
            "phase {phase}: {steps} readings, {how:?} at {}, {fault:?}",
            ["default", "ops", "nobody"][victim]
        ));
        self.healthy_kept_up(victim, how).await;
        behave(&self.all);
        behave(&self.ops);
        if let Misbehaviour::Gone = how {
            self.operator_enables();
        }
        self.maybe_silence().await;
        self.world.sample();
    }

    async fn inject(&mut self, fault: Fault) {
        note_restart(fault, &mut self.models);
        let receivers = (&self.all, &self.ops);
        (self.world)
            .inject(fault, &mut self.rng, &mut self.models, receivers)
            .await;
    }

    /// One reading of a device drawn, maybe an action, maybe a pause; `junk`: maybe a burst
    /// of junk device ids, past the registry's bound.
    async fn step(&mut self, phase: usize, junk: bool) {
        let (rng, seed) = (&mut self.rng, self.seed);
        let i = rng.usize(..self.models.len());
        if self.models[i].alive() {
            self.models[i].step(rng, &mut self.world.serial).await;
        }
        if let Some(actions) = self.actions.as_mut() {
            actions.maybe_submit(&self.world, &self.state).await;
        }
        if let Some(counters) = self.counters.as_mut() {
            counters.maybe_count();
        }
        if rng.u8(..4) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.u64(1..30))).await;
        }
        if junk && rng.u8(..5) == 0 {
            let topics: Vec<String> = (0..80)
                .map(|j| format!("sensors/junk-{seed:x}-{phase}-{j}/reading"))
                .collect();
            let msgs: Vec<(&str, &str)> = topics
                .iter()
                .map(|t| (t.as_str(), r#"{"presence":true}"#))
                .collect();
            common::publish_plain(self.world.broker.port, "junk", &msgs).await;
        }
    }

    /// The endpoint that behaved got everything meanwhile.
    async fn healthy_kept_up(&self, victim: usize, how: Misbehaviour) {
        let healthy = match (victim, how) {
            (_, Misbehaviour::Fine) | (2, _) => vec![("default", &self.all), ("ops", &self.ops)],
            (0, _) => vec![("ops", &self.ops)],
            _ => vec![("default", &self.all)],
        };
        for (name, r) in healthy {
            let daemon = &self.world.daemon;
            let check = || complete(r, name, &self.models, allowance(daemon, name));
            if let Err(e) = settle(Duration::from_secs(30), check).await {
                // What the outbox holds for each endpoint (pending, dropped) says whether the
                // missing events are stuck or were never queued.
                self.fail(format!("an endpoint waited on another's failures: {e}"));
            }
        }
    }

    /// What the operator does once a receiver that answered 410 is fixed.
    fn operator_enables(&mut self) {
        let seed = self.seed;
        self.world.sample();
        assert_eq!(self.world.daemon.terminate(), Some(0), "seed {seed}");
        let (code, out, err) = self.outbox_cli(&["enable"]);
        assert_eq!(code, 0, "seed {seed}: {out}{err}");
        self.world.daemon.start();
    }

    /// `edgehook outbox <args>` on the stopped daemon's state directory.
    fn outbox_cli(&self, args: &[&str]) -> (i32, String, String) {
        let state = self.state.display().to_string();
        let mut all = vec!["--state-dir", &state];
        all.extend_from_slice(args);
        self.world.daemon.outbox_cli(&all)
    }

    /// Sometimes silence past the heartbeat (2 s): each quiet device must be reported lost.
    async fn maybe_silence(&mut self) {
        let models = &self.models;
        let quiet: Vec<usize> = (0..models.len())
            .filter(|&i| models[i].quiet && models[i].alive())
            .collect();
        if quiet.is_empty() || self.rng.u8(..3) != 0 {
            return;
        }
        self.story.push("silence".into());
        tokio::time::sleep(Duration::from_secs(3)).await;
        for &i in &quiet {
            let id = self.models[i].id.clone();
            let lost = |r: &Receiver, name: &str| {
                let health = health_of(r, &id);
                match health.last().map(|(_, t)| t.as_str()) {
                    Some("device.lost_communication") => Ok(()),
                    other => Err(format!("{name}: silent {id} ends {other:?}")),
                }
            };
            let both = || lost(&self.all, "default").and_then(|()| lost(&self.ops, "ops"));
            if let Err(e) = settle(Duration::from_secs(15), both).await {
                self.fail(e);
            }
            if std::mem::replace(&mut self.models[i].heard, false) {
                self.models[i].silences += 1;
            }
        }
    }

    /// The workspace's sensors say something last; maybe one other device dies (its
    /// last-will must reach both endpoints as offline).
    pub async fn last_words(&mut self) {
        let n = self.models.len();
        for m in &mut self.models[n - 2..] {
            m.step(&mut self.rng, &mut self.world.serial).await;
            m.flushed().await;
        }
        if self.rng.bool() {
            let i = self.rng.usize(..n - 2); // not a workspace sensor
            if let Link::Mqtt(_) = self.models[i].link {
                if let Link::Mqtt(sim) = std::mem::replace(&mut self.models[i].link, Link::Dead) {
                    sim.pull_plug();
                    self.story.push(format!("{} lost power", self.models[i].id));
                }
            }
        }
    }

    /// Settled (held reports flush after min_interval, retries catch up), `default` knows
    /// everything the model says, and the retained offline states met at the first start
    /// were told as the API shows them.
    pub async fn verify_default(&self) {
        let none = HashSet::new();
        let daemon = &self.world.daemon;
        let refused_default = refused(daemon, "default");
        let check = || {
            let allowance = allowance(daemon, "default");
            verify(
                &self.all,
                "default",
                &self.models,
                allowance,
                refused_default,
                &none,
            )
        };
        if let Err(e) = settle(Duration::from_secs(60), check).await {
            self.fail(e);
        }
        if refused_default {
            return;
        }
        let told = |ghost: &str, kind: &str| {
            self.all.seen(|s| {
                s.of_type(kind)
                    .iter()
                    .filter(|e| e["data"]["device_id"] == ghost)
                    .count()
            })
        };
        for g in &self.draws.ghosts {
            let got = (told(g, "device.registered"), told(g, "device.offline"));
            if got != (1, 1) {
                self.fail(format!("{g}, retained offline at start: registered and offline told {got:?} times, not once each"));
            }
        }
    }

    /// Every action acknowledged is told once, none twice.
    pub async fn verify_actions(&mut self) {
        let Some(actions) = &self.actions else {
            return;
        };
        let daemon = &self.world.daemon;
        let check = || actions.verify(&self.all, daemon, allowance(daemon, "default"));
        if let Err(e) = settle(Duration::from_secs(60), check).await {
            self.fail(e);
        }
        let statuses = self.all.seen(|s| {
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
        eprintln!("harness: seed {}: {line}", self.seed);
        self.story.push(line);
    }

    /// When `ops` gives up: everything it holds is delivered or given up on; the operator
    /// replays the dead letters (same ids), and then it must have everything.
    pub async fn replay_dead_letters(&mut self) {
        if !self.world.setup.gives_up {
            return;
        }
        let seed = self.seed;
        let daemon = &self.world.daemon;
        let pending = || match daemon.metric("edgehook_endpoint_pending{endpoint=\"ops\"}") {
            Some(0) => Ok(()),
            other => Err(format!("ops still has {other:?} pending")),
        };
        if let Err(e) = settle(Duration::from_secs(60), pending).await {
            let metrics = common::http_get(daemon.metrics_port, "/metrics").unwrap_or_default();
            let ops_lines: Vec<&str> = metrics.lines().filter(|l| l.contains("ops")).collect();
            self.world.daemon.terminate();
            let (_, status, _) = self.outbox_cli(&["status"]);
            let (_, list, _) = self.outbox_cli(&["list", "--endpoint", "ops"]);
            self.fail(format!("{e}\n{}\n{status}\n{list}", ops_lines.join("\n")));
        }
        self.world.sample();
        assert_eq!(self.world.daemon.terminate(), Some(0), "seed {seed}");
        assert!(
            dead_letters(&self.world.daemon, &self.state, "default").is_empty(),
            "seed {seed}: default has no limits, so no dead letters"
        );
        self.replayed = dead_letters(&self.world.daemon, &self.state, "ops");
        if !self.replayed.is_empty() {
            let (code, out, err) = self.outbox_cli(&["replay", "--all-dead"]);
            assert_eq!(code, 0, "seed {seed}: {out}{err}");
        }
        let line = format!("{} dead letters of ops replayed", self.replayed.len());
        self.story.push(line);
        self.world.daemon.start();
    }

    /// `ops` knows everything the model says, the dead letters replayed included.
    pub async fn verify_ops(&self) {
        let daemon = &self.world.daemon;
        let check = || {
            // Dead letters let go (`outbox.max_dead_size`) may be any of `ops`'s news, health
            // included, as refused events may (found by seed 14769932744879682093 with a
            // 1 KiB budget: an online let go between two losts).
            let refused = refused(daemon, "ops") || let_go(daemon) > 0;
            let allowance = allowance(daemon, "ops");
            verify(
                &self.ops,
                "ops",
                &self.models,
                allowance,
                refused,
                &self.replayed,
            )
        };
        if let Err(e) = settle(Duration::from_secs(60), check).await {
            self.fail(e);
        }
    }

    /// Each endpoint ends knowing each people counter's last count, and was told no count it
    /// never had.
    pub async fn verify_counters(&self) {
        let Some(counters) = &self.counters else {
            return;
        };
        let daemon = &self.world.daemon;
        // The faulty unit's path was walked: its failed polls are counted.
        if let Some(behaviour) = counters.faulty {
            let kind = match behaviour {
                firmware_sim::modbus::Behaviour::BadCrc => "crc",
                _ => "timeout",
            };
            daemon
                .wait_metric(
                    &format!("edgehook_modbus_requests_total{{kind=\"{kind}\"}}"),
                    1,
                )
                .await;
        }
        for (name, r) in [("default", &self.all), ("ops", &self.ops)] {
            let check = || {
                let refused = refused(daemon, name) || (name == "ops" && let_go(daemon) > 0);
                let allowance = allowance(daemon, name) + u64::from(refused);
                counters.told(r, name, allowance)
            };
            if let Err(e) = settle(Duration::from_secs(60), check).await {
                self.fail(e);
            }
        }
    }

    /// The workspace, and the group of its sensors, end as their last reports say (hold 0 s:
    /// Free at once). Not when the daemon refused new events for default: its last ones may
    /// be among them.
    pub async fn verify_room(&self) {
        if refused(&self.world.daemon, "default") {
            return;
        }
        let n = self.models.len();
        let sensors = &self.models[n - 2..];
        let occupied = sensors.iter().any(|m| m.ends().iter().any(|&(p, _)| p));
        let want = if occupied { "Occupied" } else { "Free" };
        let status = settle(Duration::from_secs(30), || {
            let last = self.all.seen(|s| {
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
            self.fail(e);
        }
        let present = sensors
            .iter()
            .filter(|m| m.ends().iter().any(|&(p, _)| p))
            .count();
        let group = settle(Duration::from_secs(30), || {
            let last = self.all.seen(|s| {
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
            self.fail(e);
        }
    }

    /// Memory and the outbox stayed within their bounds; the summary; a clean stop.
    pub fn end(mut self) {
        let (seed, replay) = (self.seed, &self.replay);
        let world = &mut self.world;
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
        let models = &self.models;
        let checked: usize = models.iter().map(|m| m.must().len()).sum();
        let (all, ops) = (&self.all, &self.ops);
        let dups = (all.seen(|s| s.duplicates), ops.seen(|s| s.duplicates));
        eprintln!(
            "harness: seed {seed}: {}; {} readings, {} phases, faults {:?}; {checked} must-reports checked at 2 endpoints, 0 lost; dropped {} + {}, dead letters replayed {}, let go {}; {} retained offline at start; {}; duplicates {} + {}; peak RSS {} kB",
            self.story[0],
            models.iter().map(|m| m.published.len()).sum::<usize>(),
            self.phases,
            world.faults,
            allowance(&world.daemon, "default"),
            world.daemon.metric("edgehook_endpoint_dropped_total{endpoint=\"ops\"}").unwrap_or(0),
            self.replayed.len(),
            let_go(&world.daemon),
            self.draws.ghosts.len(),
            world
                .setup
                .modbus
                .as_ref()
                .map_or("no Modbus".to_string(), |m| m.story()),
            dups.0,
            dups.1,
            world.peak_kb
        );
        assert_eq!(world.daemon.terminate(), Some(0));
    }
}

impl Draws {
    /// The daemon's environment for what the seed drew.
    fn configure(&self, daemon: &mut Daemon, setup: &Setup, state: &Path) {
        let mut env = vec![("EDGEHOOK_STATE_DIR", state.display().to_string())];
        if setup.mapped {
            env.push((
                "EDGEHOOK_MQTT__SUBSCRIPTIONS",
                r#"[{topic="sensors/{device}/reading",kind="reading",metadata_fields=["seq","ts"],jq="."},{topic="rooms/{device}/display",kind="reading",metadata_fields=["seq","ts"]},{topic="devices/{device}/status",kind="status"},{topic="devices/{device}/actions/result",kind="action_result"}]"#.into(),
            ));
        }
        env.push((
            "EDGEHOOK_DEVICES__MAX_STATE_BYTES",
            self.state_bytes.to_string(),
        ));
        if let Some(t) = self.stop_timeout {
            env.push(("EDGEHOOK_STOP_TIMEOUT", t.into()));
        }
        if let Some(bytes) = self.dead_size {
            env.push(("EDGEHOOK_OUTBOX__MAX_DEAD_SIZE", bytes.to_string()));
        }
        daemon
            .env
            .extend(env.into_iter().map(|(k, v)| (k.to_string(), v)));
    }
}
