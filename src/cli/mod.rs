//! Command line: `edgehook run`, `edgehook check-config`, `edgehook outbox ...`,
//! `edgehook token`, `edgehook demo`.

pub mod outbox;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "edgehook",
    version,
    about = "MQTT device events to durable, signed webhooks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run(Paths),
    /// See into the outbox and repair it: status, list, replay, purge, enable.
    Outbox {
        #[command(subcommand)]
        command: outbox::OutboxCommand,
        #[command(flatten)]
        paths: Paths,
    },
    /// Print the control API's token (made at the daemon's first start in the state
    /// directory): `curl -H "Authorization: Bearer $(edgehook token)" ...`.
    Token(Paths),
    /// Validate a configuration file and exit (0 = valid). For `ExecStartPre=`.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
    /// Everything in one process, no setup: an embedded MQTT broker, simulated devices, the
    /// bridge and a local receiver that verifies signatures and prints events. Ctrl-C stops it.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoArgs),
}

/// Where the configuration and the state are.
#[derive(Debug, clap::Args)]
pub struct Paths {
    /// TOML configuration file (see edgehook.example.toml).
    #[arg(
        short,
        long,
        env = "EDGEHOOK_CONFIG",
        default_value = "/etc/edgehook/edgehook.toml"
    )]
    config: PathBuf,
    /// Where the sled outbox lives (overrides `state_dir` in the file).
    #[arg(long, env = "EDGEHOOK_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

/// Parse arguments and run; the binary's `main` is only this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_logging();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok (gateway {}, {} subscription(s), {} serial port(s), {} workspace(s), endpoint(s) {})",
                    file.display(),
                    c.gateway_id,
                    c.mqtt.all_subscriptions().len(),
                    c.serial_ports.len(),
                    c.workspaces.len(),
                    c.endpoints_for_logs()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run(Paths { config, state_dir }) => {
            let mut loaded = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(dir) = &state_dir {
                loaded.state_dir = dir.clone();
            }
            block_on(async {
                let cancel = crate::shutdown_on_signals();
                let reloads = crate::reload_on_sighup(config, state_dir);
                crate::run_with_reloads(loaded, cancel, Some(reloads)).await
            })
        }
        Command::Outbox {
            command,
            paths: Paths { config, state_dir },
        } => {
            let loaded = Config::load(&config);
            let (dir, hint) = match (&state_dir, &loaded) {
                (Some(dir), Ok(c)) => (dir.clone(), metrics_hint(c)),
                (Some(dir), Err(_)) => (dir.clone(), String::new()),
                (None, Ok(c)) => (c.state_dir.clone(), metrics_hint(c)),
                (None, Err(e)) => {
                    eprintln!("error: {e} (or give --state-dir)");
                    return ExitCode::from(2);
                }
            };
            let runtime = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match runtime.block_on(outbox::run(command, &dir, loaded.as_ref().ok(), &hint)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Token(Paths { config, state_dir }) => {
            let dir = match (state_dir, Config::load(&config)) {
                (Some(dir), _) => dir,
                (None, Ok(c)) => c.state_dir,
                (None, Err(e)) => {
                    eprintln!("error: {e} (or give --state-dir)");
                    return ExitCode::from(2);
                }
            };
            match crate::control::auth::read_token(&dir) {
                Ok(Some(token)) => {
                    println!("{}", token.expose());
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    eprintln!(
                        "error: no API token in {} yet: the daemon makes it at its first start",
                        dir.display()
                    );
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("error: cannot read the API token in {}: {e}", dir.display());
                    ExitCode::from(2)
                }
            }
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => block_on(crate::demo::run(args)),
    }
}

/// Where a running daemon's live figures are, for messages.
fn metrics_hint(config: &Config) -> String {
    if config.telemetry.listen.is_empty() {
        String::new()
    } else {
        format!(
            "; live figures: curl -s http://{}/metrics | grep -E 'outbox|dead|delivered'",
            config.telemetry.listen
        )
    }
}

/// The runtime every command uses: two worker threads (a gateway has few cores).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(fut);
    // Every task has drained and the outbox is flushed by now: a template abandoned on a
    // blocking thread (deliver::transport) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
