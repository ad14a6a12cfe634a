//! The world a seed runs in: the daemon, broker, serial port and power-cut card, the faults
//! injected between and during phases, and the receivers' misbehaviour.

use super::*;

/// How a receiver misbehaves during a phase.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
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

pub const MISBEHAVIOURS: [Misbehaviour; 9] = [
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

pub fn misbehave(r: &Receiver, m: Misbehaviour, device: &str) {
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

pub fn behave(r: &Receiver) {
    r.fail_with(0);
    r.retry_after(None);
    r.redirect(None);
    r.reset_connections(false);
    r.delay(Duration::ZERO);
    r.fail_device(None);
}

/// A fault between two phases.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
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

pub struct World {
    pub seed: u64,
    pub setup: Setup,
    pub broker: Mosquitto,
    pub serial: SerialLink,
    pub card: Mounted,
    pub daemon: Daemon,
    pub clock_file: PathBuf,
    pub clock_offset: i64,
    /// When the clock last stepped (libfaketime takes up to a second to see it).
    pub clock_stepped: Option<Instant>,
    pub peak_kb: u64,
    pub max_outbox: u64,
    pub faults: Vec<Fault>,
    /// The `[webhook]` and `[[endpoints]]` sections, for rewriting the file on a reload.
    pub endpoints: String,
    pub reloads: u32,
    /// The endpoint paused, with its receiver's request count once the pause was made.
    pub paused: Option<(&'static str, u64)>,
    /// An endpoint made for this phase alone, delivering to `spare`.
    pub churned: bool,
    pub spare: Receiver,
    /// The environment the commands need (the state directory).
    pub cli_env: Vec<(String, String)>,
}

impl World {
    pub fn sample(&mut self) {
        if let Some(pid) = self.daemon.pid() {
            self.peak_kb = self.peak_kb.max(common::peak_rss_kb(pid).unwrap_or(0));
        }
        if let Some(bytes) = self.daemon.metric("edgehook_outbox_bytes") {
            self.max_outbox = self.max_outbox.max(bytes);
        }
    }

    /// `edgehook <args>` on the running daemon, as an operator types it; it must succeed.
    pub fn command(&self, args: &[&str]) -> String {
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
    pub fn end_phase(&mut self, receivers: (&Receiver, &Receiver)) -> Result<(), String> {
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

    pub async fn inject(
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

pub fn pick_fault(rng: &mut fastrand::Rng) -> Fault {
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
pub fn note_restart(fault: Fault, models: &mut [Model]) {
    if let Fault::BrokerRestart = fault {
        for m in models
            .iter_mut()
            .filter(|m| matches!(m.link, Link::Mqtt(_)))
        {
            m.resent_up_to.push(m.seq);
        }
    }
}
