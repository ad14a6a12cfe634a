//! Command line: `edgehook run`, `edgehook check-config`, `edgehook outbox ...`,
//! `edgehook endpoints ...`, `edgehook devices ...`, `edgehook workspaces`, `edgehook token`,
//! `edgehook demo`.
//!
//! The commands that look inside the daemon are clients of its control API ([`client`]): the
//! running daemon's, or the same routes over its store when it is stopped.

pub mod actions;
pub mod check;
pub mod client;
pub mod devices;
pub mod endpoints;
pub mod outbox;
pub mod print;

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
    /// See into the outbox and repair it: status, list, log, replay, purge, enable. Through
    /// the running daemon's API, or over its store when it is stopped.
    Outbox {
        #[command(subcommand)]
        command: outbox::OutboxCommand,
        #[command(flatten)]
        paths: Paths,
        /// Print the API's JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The webhook endpoints: list, show, create, edit, pause, resume, enable, test, delete.
    Endpoints {
        #[command(subcommand)]
        command: Option<endpoints::EndpointsCommand>,
        #[command(flatten)]
        paths: Paths,
        /// Print the API's JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The devices the gateway knows: list, show ID.
    Devices {
        #[command(subcommand)]
        command: Option<devices::DevicesCommand>,
        #[command(flatten)]
        paths: Paths,
        /// Print the API's JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Actions on devices: submit DEVICE NAME, show ID, cancel ID (needs the running daemon).
    Actions {
        #[command(subcommand)]
        command: actions::ActionsCommand,
        #[command(flatten)]
        paths: Paths,
        /// Print the API's JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Upstream's bookings kept (booking.start until its end or booking.end).
    Bookings {
        #[command(flatten)]
        paths: Paths,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// The workspaces and their status (Free, Occupied, Booked, Unknown).
    Workspaces {
        #[command(flatten)]
        paths: Paths,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the control API's token (made at the daemon's first start in the state
    /// directory): `curl -H "Authorization: Bearer $(edgehook token)" ...`.
    Token(Paths),
    /// Print the console's URL, with the API token in its fragment: opened, it logs the
    /// browser in (through `ssh -L 9187:127.0.0.1:9187 gateway` from another machine).
    Console(Paths),
    /// Validate a configuration file and exit (0 = valid). For `ExecStartPre=`.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
        /// The state directory, whose endpoints made through the API are checked against the
        /// file's (default: the file's `state_dir`).
        #[arg(long, env = "EDGEHOOK_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// As the unit's `ExecStartPre=`: a file endpoint named as an API one is a warning, not
        /// an error (the daemon starts, running the API's endpoint).
        #[arg(long)]
        at_start: bool,
        /// The unit's `EnvironmentFile=` (where the secrets are), read under the environment
        /// as systemd gives it to the daemon. Default: `edgehook.env` beside FILE, if there.
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Fail (exit 1) on the shipped example's placeholders left in the file (a `change-me`
        /// secret, `example.com` hosts, a serial adapter that is not there), not only warn.
        #[arg(long)]
        strict: bool,
        /// Print only errors and warnings, not what will run.
        #[arg(long, short)]
        quiet: bool,
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
        default_value = "/etc/edgehook/edgehook.toml",
        global = true
    )]
    config: PathBuf,
    /// Where the sled outbox lives (overrides `state_dir` in the file).
    #[arg(long, env = "EDGEHOOK_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
}

/// Parse arguments and run; the binary's `main` is only this.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("jq-worker") {
        // Not a command for people: the daemon's jq worker (crate::jq).
        return crate::jq::worker::main(&args[2..]);
    }
    crate::memory::tune_allocator();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) && !is_demo(&cli.command) {
        // A command whose reader goes away (`edgehook outbox list --dead | head -1`) ends
        // quietly, as any Unix tool does, instead of panicking on the closed pipe. The daemon
        // keeps Rust's default (SIGPIPE ignored: a socket's peer going away is an error).
        // SAFETY: signal() with SIG_DFL takes no pointer; set before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    crate::telemetry::init_logging();
    match cli.command {
        Command::CheckConfig {
            file,
            state_dir,
            at_start,
            env_file,
            strict,
            quiet,
        } => match load_as_the_unit(&file, env_file) {
            Ok(c) => {
                let state = state_dir.unwrap_or_else(|| c.state_dir.clone());
                let file_endpoints = c.all_endpoints().into_iter().cloned().collect();
                match crate::control::endpoints::Endpoints::load(&state, file_endpoints) {
                    Ok((_, None)) => {}
                    Ok((_, Some(conflict))) if at_start => {
                        eprintln!("warning: {conflict}; the daemon runs the API's endpoint");
                    }
                    Ok((_, Some(conflict))) => {
                        eprintln!("error: {}: {conflict}", file.display());
                        return ExitCode::from(2);
                    }
                    Err(e) => {
                        eprintln!("note: the endpoints made through the API are not checked ({e})")
                    }
                }
                if !quiet {
                    for line in check::plan(&c) {
                        println!("  {line}");
                    }
                }
                let placeholders = check::placeholders(&c, |p| p.exists());
                for p in &placeholders {
                    eprintln!(
                        "{}: {}: {p}",
                        if strict { "error" } else { "warning" },
                        file.display()
                    );
                }
                if strict && !placeholders.is_empty() {
                    eprintln!(
                        "{}: {} placeholder(s) of the example left (--strict)",
                        file.display(),
                        placeholders.len()
                    );
                    return ExitCode::from(1);
                }
                println!("{}: ok", file.display());
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
            paths,
            json,
        } => through_api(paths, |api, dir| async move {
            outbox::run(command, &api, &dir, json).await
        }),
        Command::Endpoints {
            command,
            paths,
            json,
        } => through_api(paths, |api, _| async move {
            let command = command.unwrap_or(endpoints::EndpointsCommand::List);
            endpoints::run(command, &api, json).await
        }),
        Command::Devices {
            command,
            paths,
            json,
        } => through_api(paths, |api, _| async move {
            let command = command.unwrap_or(devices::DevicesCommand::List);
            devices::run(command, &api, json).await
        }),
        Command::Actions {
            command,
            paths,
            json,
        } => through_api(paths, |api, _| async move {
            actions::run(command, &api, json).await
        }),
        Command::Bookings { paths, json } => through_api(paths, |api, _| async move {
            actions::bookings(&api, json).await
        }),
        Command::Workspaces { paths, json } => through_api(paths, |api, _| async move {
            devices::workspaces(&api, json).await
        }),
        Command::Console(Paths { config, state_dir }) => {
            let loaded = match Config::load_for_commands(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let dir = state_dir.unwrap_or_else(|| loaded.state_dir.clone());
            let listen = &loaded.telemetry.listen;
            if listen.is_empty() {
                eprintln!(
                    "error: the console is off: telemetry.listen is empty in {}",
                    config.display()
                );
                return ExitCode::from(2);
            }
            let token = match api_token(&dir) {
                Ok(token) => token,
                Err(code) => return code,
            };
            let scheme = if loaded.telemetry.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            println!("{scheme}://{listen}/#token={}", token.expose());
            eprintln!("(from another machine: ssh -L {port}:{listen} <this gateway>, then open the URL there with 127.0.0.1:{port})", port = listen.rsplit(':').next().unwrap_or("9187"));
            ExitCode::SUCCESS
        }
        Command::Token(Paths { config, state_dir }) => {
            let dir = match (state_dir, Config::load_for_commands(&config)) {
                (Some(dir), _) => dir,
                (None, Ok(c)) => c.state_dir,
                (None, Err(e)) => {
                    eprintln!("error: {e} (or give --state-dir)");
                    return ExitCode::from(2);
                }
            };
            match api_token(&dir) {
                Ok(token) => {
                    println!("{}", token.expose());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => block_on(crate::demo::run(args)),
    }
}

/// The API token in `dir`, or exit 2 having said why not.
fn api_token(dir: &std::path::Path) -> Result<crate::secret::Secret, ExitCode> {
    match crate::control::auth::read_token(dir) {
        Ok(Some(token)) => Ok(token),
        Ok(None) => {
            eprintln!(
                "error: no API token in {} yet: the daemon makes it at its first start",
                dir.display()
            );
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("error: cannot read the API token in {}: {e}", dir.display());
            Err(ExitCode::from(2))
        }
    }
}

/// `file` as the daemon will read it under its unit: with the variables of `env_file`, or of
/// `edgehook.env` beside `file` when there is one (the unit's `EnvironmentFile=`).
fn load_as_the_unit(
    file: &std::path::Path,
    env_file: Option<PathBuf>,
) -> Result<Config, crate::config::ConfigError> {
    let beside = file.with_file_name("edgehook.env");
    match env_file.or_else(|| beside.exists().then_some(beside)) {
        Some(env) => Config::load_with_env_file(file, &env),
        None => Config::load(file),
    }
}

/// Whether `command` is `edgehook demo` (a daemon too).
fn is_demo(command: &Command) -> bool {
    #[cfg(feature = "demo")]
    if matches!(command, Command::Demo(_)) {
        return true;
    }
    let _ = command;
    false
}

/// Run `command` with the daemon's API (see [`client`]) and the state directory. Exit 2, with
/// the error on stderr, if it fails.
fn through_api<F, Fut>(Paths { config, state_dir }: Paths, command: F) -> ExitCode
where
    F: FnOnce(client::Api, PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let loaded = Config::load_for_commands(&config);
    let dir = match (&state_dir, &loaded) {
        (Some(dir), Ok(_)) => dir.clone(),
        (Some(dir), Err(e)) => {
            eprintln!("warning: the configuration did not load ({e}): the store alone is read, and no endpoint counts as configured");
            dir.clone()
        }
        (None, Ok(c)) => c.state_dir.clone(),
        (None, Err(e)) => {
            eprintln!("error: {e} (or give --state-dir)");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let api = client::Api::connect(loaded.as_ref().ok(), &dir).await?;
        command(api, dir).await
    });
    // The store (when this command opened it) is flushed and closed before the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
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
    // Every task has drained and the outbox is flushed by now.
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
