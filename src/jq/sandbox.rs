//! The daemon's side of a jq worker: start it, send it an input, wait for the answer at most
//! the budget's time, and stop it (kill, reap) when it is late, dies, or is no longer needed.

use std::io::{self, Read};
use std::process::{Child, ChildStderr, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{wire, Budget, RunError};

/// How long a new worker may take to start and compile its filter (not counted against the
/// budget: a cold start on a slow SD card).
const START: Duration = Duration::from_secs(10);

/// What the thread reading a worker's stdout passes on.
enum Heard {
    Ready,
    Answer(wire::Answer),
    /// Its stdout ended or broke: the worker is gone.
    Gone,
}

/// One running worker.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stderr: Option<ChildStderr>,
    heard: mpsc::Receiver<Heard>,
}

impl Worker {
    /// Start a worker for `code` and wait until it has compiled it.
    pub fn start(code: &str, budget: Budget) -> Result<Worker, RunError> {
        let cannot = |e: &dyn std::fmt::Display| {
            RunError::Budget(format!("the jq worker could not be started: {e}"))
        };
        let mut child = command(budget)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| cannot(&e))?;
        let (Some(mut stdin), Some(stdout), stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(cannot(&"no pipes"));
        };
        let (tx, heard) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("jq-worker-out".into())
            .stack_size(64 * 1024)
            .spawn(move || listen(stdout, tx));
        let mut worker = Worker {
            child,
            stdin: {
                if let Err(e) = wire::write_frame(&mut stdin, code.as_bytes()) {
                    tracing::debug!(error = %e, "jq worker: sending its filter");
                }
                stdin
            },
            stderr,
            heard,
        };
        if let Err(e) = reader {
            return Err(cannot(&e));
        }
        match worker.heard.recv_timeout(START) {
            Ok(Heard::Ready) => Ok(worker),
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(cannot(&worker.death_reason(budget)))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(cannot(&format!(
                "it did not start within {} s",
                START.as_secs()
            ))),
        }
    }

    /// Evaluate `input`. `Ok` with the worker's answer, or `Err` when the worker is stopped
    /// (past the budget, or gone): then this worker is done with.
    pub fn run(&mut self, input: &[u8], budget: Budget) -> Result<wire::Answer, RunError> {
        if let Err(e) = wire::write_frame(&mut self.stdin, input) {
            tracing::debug!(error = %e, "jq worker: sending an input");
            return Err(RunError::Budget(self.death_reason(budget)));
        }
        match self.heard.recv_timeout(budget.time) {
            Ok(Heard::Answer(answer)) => Ok(answer),
            Ok(Heard::Ready | Heard::Gone) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(RunError::Budget(self.death_reason(budget)))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(RunError::Budget(format!(
                "it did not finish within its time budget ({} ms); stopped",
                budget.time.as_millis()
            ))),
        }
    }

    /// Why the worker ended, from what it wrote on stderr as it died (Rust's own messages).
    fn death_reason(&mut self, budget: Budget) -> String {
        let _ = self.child.kill();
        let status = self.child.wait();
        let mut said = String::new();
        if let Some(stderr) = self.stderr.take() {
            let _ = stderr.take(16 * 1024).read_to_string(&mut said);
        }
        if said.contains("memory allocation of") {
            format!(
                "it needed more than its memory budget ({} MiB); stopped",
                budget.memory / (1024 * 1024)
            )
        } else if said.contains("overflowed its stack") {
            "it recursed too deeply (the evaluator's stack overflowed); stopped".into()
        } else {
            let last = said.lines().rev().find(|l| !l.trim().is_empty());
            match (last, status) {
                (Some(line), _) => format!("the evaluator ended: {}", line.trim()),
                (None, Ok(status)) => format!("the evaluator ended ({status})"),
                (None, Err(e)) => format!("the evaluator ended ({e})"),
            }
        }
    }
}

#[cfg(test)]
impl Worker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reader thread: [`wire::READY`], then one answer per input, until the worker's stdout
/// ends (it exited, was killed, or the daemon dropped the receiver).
fn listen(stdout: std::process::ChildStdout, tx: mpsc::Sender<Heard>) {
    let mut stdout = io::BufReader::new(stdout);
    if !matches!(wire::await_ready(&mut stdout), Ok(true)) {
        let _ = tx.send(Heard::Gone);
        return;
    }
    if tx.send(Heard::Ready).is_err() {
        return;
    }
    loop {
        let heard = match wire::read_answer(&mut stdout) {
            Ok(Some(answer)) => Heard::Answer(answer),
            Ok(None) | Err(_) => Heard::Gone,
        };
        let gone = matches!(heard, Heard::Gone);
        if tx.send(heard).is_err() || gone {
            return;
        }
    }
}

/// The worker's command line: this very program (`/proc/self/exe`, which still runs the
/// binary that started even after a package upgrade replaced the file).
#[cfg(not(test))]
fn command(budget: Budget) -> Command {
    let exe = std::path::Path::new("/proc/self/exe");
    let mut command = if exe.exists() {
        Command::new(exe)
    } else {
        Command::new(std::env::current_exe().unwrap_or_else(|_| "edgehook".into()))
    };
    command
        .arg("jq-worker")
        .arg(budget.memory.to_string())
        .arg(budget.output.to_string());
    command
}

/// In the crate's unit tests the program is the test binary: it runs one test, which serves
/// as the worker when [`TEST_WORKER`] is set (see `jq::tests::worker`).
#[cfg(test)]
fn command(budget: Budget) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            "jq::tests::worker",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(TEST_WORKER, format!("{} {}", budget.memory, budget.output));
    command
}

/// Set to `MEMORY OUTPUT` in a unit-test binary started as a worker.
#[cfg(test)]
pub const TEST_WORKER: &str = "EDGEHOOK_JQ_TEST_WORKER";
