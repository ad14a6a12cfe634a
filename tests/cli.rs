//! The command line as an installer uses it: check-config, config errors, the demo.

use std::process::{Command, Output};

fn edgehook(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgehook"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running edgehook")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/edgehook.example.toml");

#[test]
fn the_example_config_is_valid() {
    let out = edgehook(&["check-config", EXAMPLE], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));
    assert!(
        !text(&out.stdout).contains("change-me"),
        "the secret is never printed"
    );
}

/// #45.3: the shipped configuration passed `check-config` with `secret = "change-me"`,
/// `events.example.com` and an FTDI serial path. It still passes (an installer checks the
/// syntax first), saying what will run and warning on each placeholder by key; `--strict` (for
/// an `ExecStartPre=` that must not start a gateway half set up) fails on them.
#[test]
fn the_shipped_placeholders_are_warned_and_fail_strict() {
    let out = edgehook(&["check-config", EXAMPLE], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    for said in ["webhook.secret", "webhook.url", "serial_ports[0].path"] {
        assert!(
            stderr.contains(&format!("warning: {EXAMPLE}: {said}")),
            "{said}: {stderr}"
        );
    }
    for planned in [
        "gateway gw-lobby-1",
        "endpoint default: https://events.example.com",
        "listener: 127.0.0.1:9187",
    ] {
        assert!(stdout.contains(planned), "{planned}: {stdout}");
    }
    let out = edgehook(&["check-config", "--strict", EXAMPLE], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: ") && stderr.contains("webhook.secret"),
        "{stderr}"
    );
    assert!(stderr.contains("(--strict)"), "{stderr}");
    assert!(!stderr.contains("change-me") && !text(&out.stdout).contains("change-me"));
}

/// A log filter that is not understood is said so, and the daemon logs at info (it used to
/// take `degub` as a target's name and turn every other log off, silently).
#[test]
fn a_log_filter_not_understood_is_said_and_info_is_kept() {
    let out = edgehook(&["check-config", EXAMPLE], &[("EDGEHOOK_LOG", "degub")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("EDGEHOOK_LOG") && err.contains("degub") && err.contains("logging at info"),
        "{err}"
    );
}

/// The shipped configuration's Modbus example, uncommented as an installer would, is a
/// configuration check-config plans (so the example cannot drift from the code).
#[test]
fn the_shipped_modbus_example_uncommented_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("modbus.toml");
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let mut inside = false;
    let mut uncommented = 0;
    let lines: Vec<String> = example
        .lines()
        .map(|line| {
            inside |= line == "# [[modbus.maps]]";
            if !inside {
                return line.to_string();
            }
            if line.starts_with("# devices = ") {
                inside = false;
            }
            uncommented += 1;
            line.trim_start_matches("# ").to_string()
        })
        .collect();
    assert!(
        uncommented >= 10,
        "the example's Modbus block was not found"
    );
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = edgehook(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("modbus: RTU on /dev/serial/by-id/")
            && text(&out.stdout).contains("entrance-counter (unit 1, people-counter)"),
        "{}",
        text(&out.stdout)
    );
}

/// #46.5: a Modbus register map's mistake is named down to the register entry.
#[test]
fn a_bad_modbus_register_is_named_down_to_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("modbus.toml");
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let modbus = firmware_sim::modbus::PEOPLE_COUNTER_MAP
        .replace("address = 4 }", "address = 4, type = \"u64\" }")
        + "[[modbus.buses]]\naddress = \"127.0.0.1:502\"\ndevices = [{ id = \"c-1\", unit = 1, map = \"people-counter\" }]\n";
    std::fs::write(&file, format!("{example}\n{modbus}")).unwrap();
    let out = edgehook(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("modbus.toml") && err.contains("modbus.maps[0].registers[2]"),
        "{err}"
    );
    // A type the map allows, on a bit, is named by its key.
    let bit = modbus
        .replace("address = 4, type = \"u64\" }", "address = 4 }")
        .replace("address = 0 },\n]", "address = 0, type = \"u16\" },\n]");
    std::fs::write(&file, format!("{example}\n{bit}")).unwrap();
    let out = edgehook(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("modbus.maps[0].registers[4].type"), "{err}");
    assert!(err.contains("bool"), "{err}");
}

#[test]
fn a_bad_key_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    std::fs::write(
        &file,
        example.replace("keep_alive = \"30s\"", "keep_alive = \"often\""),
    )
    .unwrap();
    let out = edgehook(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("broken.toml") && err.contains("mqtt.keep_alive"),
        "{err}"
    );

    // `run` refuses the same file before doing anything.
    let out = edgehook(
        &[
            "run",
            "--config",
            file.to_str().unwrap(),
            "--state-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("mqtt.keep_alive"));
}

#[test]
fn environment_overrides_win_and_are_named_in_errors() {
    let out = edgehook(
        &["check-config", EXAMPLE],
        &[("EDGEHOOK_MQTT__PORT", "not-a-port")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("EDGEHOOK_MQTT__PORT") && err.contains("mqtt.port"),
        "{err}"
    );

    let out = edgehook(
        &["check-config", EXAMPLE],
        &[("EDGEHOOK_GATEWAY_ID", "gw-from-env")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("gw-from-env"));

    let out = edgehook(
        &["check-config", EXAMPLE],
        &[("EDGEHOOK_WEBHOOK__URL", "ftp://nope")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("EDGEHOOK_WEBHOOK__URL") && err.contains("webhook.url"),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = edgehook(&["check-config", "/nonexistent/edgehook.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/edgehook.toml"));
}

#[test]
fn the_demo_runs_and_every_webhook_verifies() {
    let out = edgehook(&["demo", "--duration", "4s", "--interval", "300ms"], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("✓ device.online"), "{stdout}");
    assert!(stdout.contains("✓ sensor.reading.updated"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("sensor.reading.updated") && l.contains("demo-serial-1")),
        "the serial sensor's readings arrive too: {stdout}"
    );
    assert!(
        stdout.contains("✓ device.offline"),
        "devices announce offline on stop: {stdout}"
    );
    assert!(!stdout.contains("✗"), "no signature failures: {stdout}");
    let verified: u64 = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("receiver verified ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("a verified count");
    let lines = stdout.lines().filter(|l| l.starts_with('✓')).count() as u64;
    assert_eq!(verified, lines);
    assert!(verified >= 8, "{stdout}");
    // It serves the console and says where, logged in by the URL's fragment.
    assert!(
        text(&out.stdout).contains("console   http://127.0.0.1:")
            && text(&out.stdout).contains("/#token="),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn outbox_commands_on_a_missing_store_say_so_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("nothing-here");
    let out = edgehook(
        &["outbox", "--state-dir", state.to_str().unwrap(), "status"],
        &[("EDGEHOOK_CONFIG", "/nonexistent.toml")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("there is no outbox"),
        "{}",
        text(&out.stderr)
    );
    assert!(!state.exists());
}

/// #45: `edgehook outbox list --dead | head -1` panicked on the closed pipe (exit 134 in the
/// release build). A command whose reader goes away ends quietly, killed by SIGPIPE as any
/// Unix tool is.
#[test]
fn a_command_whose_reader_goes_away_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // The reader is gone before the command starts: its first write meets a closed pipe
    // (dropping the read end after the spawn raced the command's writes, which a pipe's
    // buffer takes while its reader is still there).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_edgehook"))
        .args(["check-config", EXAMPLE])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_eq!(
        out.status.signal(),
        Some(13),
        "killed by SIGPIPE: {:?}",
        out.status
    );
}

/// #45.6: a configuration reference that cannot drift. `edgehook.schema.json` is made from the
/// code (a unit test holds it to it); here a validator as a TOML editor uses one (Python's
/// jsonschema, Draft 2020-12) takes the example configuration and real variations, and refuses
/// an unknown key, a wrong type, a duration or an enum value the daemon would refuse.
#[test]
fn the_configuration_schema_takes_what_the_daemon_takes_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = [
        write(
            "sizes.toml",
            "gateway_id = \"gw\"\n[outbox]\nmax_size = \"64MiB\"\nmax_dead_size = 1048576\ncheckpoint_interval = \"1m\"\n[mqtt]\npresets = [\"shelly\"]\nradio_metadata = true\n",
        ),
        write(
            "endpoints.toml",
            "gateway_id = \"gw\"\nstop_timeout = \"15s\"\n[[endpoints]]\nname = \"ops\"\nurl = \"https://ops.acme.io/h\"\nevents = [\"device.*\"]\nformat = \"cloudevents\"\nretry = { initial = \"1s\", max = \"5m\" }\n",
        ),
    ];
    let bad = [
        write("unknown-key.toml", "[mqtt]\nhots = \"broker\"\n"),
        write("wrong-type.toml", "[mqtt]\nport = \"eighteen\"\n"),
        write("bad-duration.toml", "stop_timeout = \"20 parsecs\"\n"),
        write("bad-enum.toml", "[outbox]\non_full = \"explode\"\n"),
    ];
    // The daemon refuses each of the bad ones too: the schema says no more than it does.
    for path in &bad {
        let out = edgehook(&["check-config", path], &[]);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", text(&out.stdout));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/schema_check.py");
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/edgehook.schema.json");
    let out = Command::new("python3")
        .arg(script)
        .arg(schema)
        .arg(EXAMPLE)
        .args(&good)
        .arg("--bad")
        .args(&bad)
        .output()
        .expect("python3 (scripts/test installs its tools)");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    assert!(said.contains("unknown-key.toml: refused at mqtt"), "{said}");
    assert!(
        said.contains("wrong-type.toml: refused at mqtt.port"),
        "{said}"
    );
}
