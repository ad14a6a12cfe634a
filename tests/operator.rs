//! The operator's day on a gateway set up as the README says: the secret in
//! `/etc/edgehook/edgehook.env` (the unit's `EnvironmentFile=`), given to the daemon alone;
//! commands run by whoever manages it, running or stopped.

mod common;

use common::{Rig, SECRET};

/// The configuration file as the README's quick start leaves it: no secret in it.
fn without_secret(receiver_url: &str) -> String {
    format!("[webhook]\nurl = \"{receiver_url}\"\ntimeout = \"2s\"\n")
}

/// #45.2: with the secret in `edgehook.env`, `edgehook endpoints --config …` failed with
/// "`webhook.secret`: must be set", and `--state-dir` added a false "its API is off". The
/// commands need no secret: they work against the running daemon and over a stopped one's
/// store, and `check-config` reads the unit's environment file beside the configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_work_with_the_secret_where_the_readme_puts_it() {
    let (dir, _broker, _receiver, mut daemon) = Rig::with_webhook(without_secret).await.parts();
    // The unit gives the daemon the environment file; nobody else has it.
    daemon
        .env
        .push(("EDGEHOOK_WEBHOOK__SECRET".into(), SECRET.into()));
    daemon.start();
    for args in [
        &["endpoints"][..],
        &["devices"][..],
        &["outbox", "status"][..],
        &["workspaces"][..],
        &["token"][..],
    ] {
        let (code, out, err) = daemon.cli(args, &[]);
        assert_eq!(code, 0, "running: {args:?}: {out}{err}");
        assert!(!err.contains("must be set"), "{args:?}: {err}");
    }
    let (_, out, _) = daemon.cli(&["endpoints"], &[]);
    assert!(out.contains("default"), "{out}");
    assert_eq!(daemon.terminate(), Some(0));
    // Stopped: the store answers, still without the secret.
    for args in [
        &["endpoints"][..],
        &["outbox", "status"][..],
        &["devices"][..],
    ] {
        let (code, out, err) = daemon.cli(args, &[]);
        assert_eq!(code, 0, "stopped: {args:?}: {out}{err}");
    }
    // check-config: the secret missing is said, with where it goes ...
    let config = dir.path().join("edgehook.toml");
    let check = |env_file: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgehook"));
        cmd.arg("check-config").arg(&config);
        if let Some(f) = env_file {
            cmd.arg("--env-file").arg(f);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = check(None);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("webhook.secret") && out.contains("EDGEHOOK_WEBHOOK__SECRET"),
        "{out}"
    );
    // ... and found in the unit's environment file beside the configuration, as systemd reads it.
    std::fs::write(
        dir.path().join("edgehook.env"),
        format!("# the webhook's signing secret\nEDGEHOOK_WEBHOOK__SECRET=\"{SECRET}\"\n"),
    )
    .unwrap();
    let (code, out) = check(None);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(SECRET), "the secret is never printed: {out}");
    // Or named.
    let elsewhere = dir.path().join("other.env");
    std::fs::write(
        &elsewhere,
        format!("export EDGEHOOK_WEBHOOK__SECRET='{SECRET}'\n"),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("edgehook.env")).unwrap();
    let (code, out) = check(Some(&elsewhere));
    assert_eq!(code, Some(0), "{out}");
}

/// #45.3: a configuration with no endpoint at all got "`webhook.url`: not a URL (relative URL
/// without a base)". It says what is missing.
#[test]
fn no_endpoint_configured_is_said_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edgehook.toml");
    std::fs::write(
        &file,
        "gateway_id = \"gw\"\n[mqtt]\npresets = [\"zigbee2mqtt\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgehook"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("webhook.url") && err.contains("no endpoint configured"),
        "{err}"
    );
    assert!(!err.contains("relative URL"), "{err}");
}
