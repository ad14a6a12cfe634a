//! The `edgehook` binary as a child process, its configuration, its clock and its disk.

use super::*;

/// The daemon under test, as a child process.
pub struct Daemon {
    pub dir: PathBuf,
    pub metrics_port: u16,
    config: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Extra environment for the daemon process.
    pub env: Vec<(String, String)>,
    /// The configuration text [`Daemon::new`] added (kept by [`Daemon::rewrite_state_dir`]).
    extra: String,
}

/// A config for the test: fast retries, the default demo topics.
pub fn config_text(
    broker_port: u16,
    receiver_url: &str,
    metrics_port: u16,
    state_dir: &Path,
    extra: &str,
) -> String {
    config_with_webhook(
        broker_port,
        &webhook_section(receiver_url, ""),
        metrics_port,
        state_dir,
        extra,
    )
}

/// The test's `[webhook]` section for `receiver_url`: the test secret, a 2 s timeout, fast
/// retries (50 ms – 500 ms), and the keys `extra` adds (`window = 16`, a `headers` table, …).
pub fn webhook_section(receiver_url: &str, extra: &str) -> String {
    format!(
        r#"
[webhook]
url = "{receiver_url}"
secret = "{SECRET}"
timeout = "2s"
{extra}
[webhook.retry]
initial = "50ms"
max = "500ms"
"#
    )
}

/// [`config_text`] with the caller's own `[webhook]` section.
pub fn config_with_webhook(
    broker_port: u16,
    webhook: &str,
    metrics_port: u16,
    state_dir: &Path,
    extra: &str,
) -> String {
    format!(
        r#"
gateway_id = "gw-test"
state_dir = "{state}"
[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "edgehook-under-test"
max_payload_bytes = 65536
reconnect_min = "100ms"
reconnect_max = "500ms"
subscriptions = [
  {{ topic = "sensors/{{device}}/reading", kind = "reading", metadata_fields = ["seq", "ts"] }},
  {{ topic = "rooms/{{device}}/display", kind = "reading", metadata_fields = ["seq", "ts"] }},
  {{ topic = "devices/{{device}}/status", kind = "status" }},
  {{ topic = "devices/{{device}}/actions/result", kind = "action_result" }},
]
{webhook}
[telemetry]
listen = "127.0.0.1:{metrics_port}"
{extra}
"#,
        state = state_dir.display()
    )
}

impl Daemon {
    pub fn new(dir: &Path, broker_port: u16, receiver_url: &str, extra: &str) -> Daemon {
        let metrics_port = free_port();
        let text = config_text(
            broker_port,
            receiver_url,
            metrics_port,
            &dir.join("state"),
            extra,
        );
        let mut daemon = Self::with_config(dir, metrics_port, &text);
        daemon.extra = extra.to_string();
        daemon
    }

    /// A daemon whose `[webhook]` section (with its subtables) is `webhook`.
    pub fn new_with_webhook(dir: &Path, broker_port: u16, webhook: &str) -> Daemon {
        let metrics_port = free_port();
        let text = config_with_webhook(broker_port, webhook, metrics_port, &dir.join("state"), "");
        Self::with_config(dir, metrics_port, &text)
    }

    /// A daemon with the whole configuration `text` (its `telemetry.listen` on `metrics_port`).
    pub fn with_config(dir: &Path, metrics_port: u16, text: &str) -> Daemon {
        let config = dir.join("edgehook.toml");
        std::fs::write(&config, text).unwrap();
        Daemon {
            dir: dir.to_path_buf(),
            metrics_port,
            config,
            stderr: dir.join("edgehook.stderr"),
            child: None,
            starts: 0,
            env: Vec::new(),
            extra: String::new(),
        }
    }

    /// Read devices through these presets alone (`"[zigbee2mqtt, shelly]"`), no subscription
    /// of the test's own.
    pub fn presets_only(&mut self, presets: &str) {
        self.env
            .push(("EDGEHOOK_MQTT__PRESETS".into(), presets.into()));
        self.env
            .push(("EDGEHOOK_MQTT__SUBSCRIPTIONS".into(), "[]".into()));
    }

    /// Start the daemon and wait until it is connected to the broker.
    pub fn start(&mut self) {
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.metric("edgehook_mqtt_connected") != Some(1) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("edgehook exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "edgehook did not connect:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Start the daemon without waiting for anything.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap();
        let child = daemon_command()
            .args(["run", "--config"])
            .arg(&self.config)
            // `TEST_EDGEHOOK_LOG` (say `info,edgehook::outbox=debug`) to look closer at a failure.
            .env(
                "EDGEHOOK_LOG",
                std::env::var("TEST_EDGEHOOK_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning edgehook");
        self.child = Some(child);
    }

    /// Wait for the daemon to exit by itself; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("edgehook did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, like a power cut for the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe_kill(c.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill(); // do not leave it running past the test
                let _ = c.wait();
                panic!("edgehook did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrite the configuration file (same broker, receiver and state) with other `extra` keys.
    pub fn rewrite_config(&self, broker_port: u16, receiver_url: &str, extra: &str) {
        let state = self.dir.join("state");
        std::fs::write(
            &self.config,
            config_text(broker_port, receiver_url, self.metrics_port, &state, extra),
        )
        .unwrap();
    }

    /// `edgehook outbox <args>` on this daemon's configuration: (exit code, stdout, stderr).
    pub fn outbox_cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["outbox"];
        all.extend(args);
        self.cli(&all, &[])
    }

    /// `edgehook <command> --config <its configuration> <args...>` (`command` is `args[0]`),
    /// with `env` set: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_edgehook"))
            .arg(args[0])
            .arg("--config")
            .arg(&self.config)
            .args(&args[1..])
            .envs(env.iter().copied())
            .output()
            .expect("running edgehook");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Replace the `[webhook]` section (and whatever follows it, e.g. `[[endpoints]]`).
    pub fn rewrite_webhook(&mut self, broker_port: u16, webhook: &str) {
        let text = config_with_webhook(
            broker_port,
            webhook,
            self.metrics_port,
            &self.dir.join("state"),
            "",
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Put the state (the outbox) somewhere else, e.g. on a small filesystem; the rest of the
    /// configuration as [`Daemon::new`] made it.
    pub fn rewrite_state_dir(&mut self, state: &Path, broker_port: u16, receiver_url: &str) {
        let text = config_text(
            broker_port,
            receiver_url,
            self.metrics_port,
            state,
            &self.extra,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Send a signal (e.g. 1 = SIGHUP) to the running daemon.
    pub fn signal(&self, signal: i32) {
        unsafe_kill(self.pid().expect("running"), signal);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The control API's token, from the state directory the daemon made it in.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("state/api-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Fails the test, with the whole log, unless the log holds `text`.
    #[track_caller]
    pub fn assert_logged(&self, text: &str) {
        let log = self.log();
        assert!(log.contains(text), "{text:?} is not in the log:\n{log}");
    }

    /// Wait (at most a minute) until `text` is in the log: for a line written just after the
    /// sample or event the test saw first. Panics with the log otherwise.
    pub async fn wait_logged(&self, text: &str) {
        super::until(
            Instant::now() + Duration::from_secs(60),
            || self.log().contains(text),
            || format!("{text:?} is not in the log:\n{}", self.log()),
        )
        .await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Wait (at most a minute) until the sample `name` of /metrics is at least `at_least`;
    /// panics with the daemon's log otherwise.
    pub async fn wait_metric(&self, name: &str, at_least: u64) {
        super::until(
            Instant::now() + Duration::from_secs(60),
            || self.metric(name).is_some_and(|v| v >= at_least),
            || {
                format!(
                    "{name} never reached {at_least} (now {:?}):\n{}",
                    self.metric(name),
                    self.log()
                )
            },
        )
        .await;
    }

    /// Scrape one sample from /metrics (exact name with labels).
    pub fn metric(&self, name: &str) -> Option<u64> {
        let text = http_get(self.metrics_port, "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

/// The `edgehook` under test: this build's binary, or `TEST_EDGEHOOK_BIN` run through
/// `TEST_EDGEHOOK_RUNNER` (how CI runs the aarch64 build under qemu-aarch64).
pub fn daemon_command() -> Command {
    let bin = std::env::var("TEST_EDGEHOOK_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_edgehook").to_string());
    match std::env::var("TEST_EDGEHOOK_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut cmd = Command::new(words.next().expect("non-empty"));
            cmd.args(words).arg(bin);
            cmd
        }
        _ => Command::new(bin),
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A power-cut filesystem (`firmware_sim::powercut`) mounted at `<dir>/card`, with the state
/// directory `<dir>/card/state` made and durable, as systemd's `StateDirectory=` makes it.
pub fn powercut_card(dir: &Path, seed: u64) -> (firmware_sim::powercut::Mounted, PathBuf) {
    let card_dir = dir.join("card");
    std::fs::create_dir_all(&card_dir).unwrap();
    let card = firmware_sim::powercut::PowerCut::new(seed)
        .mount(&card_dir)
        .expect("mounting the power-cut filesystem (needs /dev/fuse and fuse3's fusermount3)");
    let state = card_dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::File::open(&card_dir).unwrap().sync_all().unwrap();
    (card, state)
}

/// The peak resident set of process `pid` (VmHWM), in kB; `None` once it is gone.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    proc_field(pid, "status", "VmHWM:")
}

/// The number after `key` in `/proc/<pid>/<file>` (`status`'s `VmHWM:` in kB, `io`'s
/// `write_bytes:`).
pub fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Run the daemon under libfaketime, its wall clock offset by what `offset_file` says (`+1d`,
/// `-90s`; re-read every second), its monotonic clock real, as across an NTP step. mosquitto
/// and the receivers keep the real clock.
pub fn fake_clock(daemon: &mut Daemon, offset_file: &Path) {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(lib).exists(),
        "libfaketime is not installed (apt-get install faketime)"
    );
    for (k, v) in [
        ("LD_PRELOAD", lib.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.display().to_string()),
        ("FAKETIME_CACHE_DURATION", "1".into()),
    ] {
        daemon.env.push((k.into(), v));
    }
}
