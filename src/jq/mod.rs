//! jq filters, run by jaq: what an endpoint's template and a subscription's mapping share.
//!
//! A filter is the operator's code, but its input is not: a mapping runs on what any device
//! publishes, a template on what devices sent. jaq bounds neither the time an evaluation takes
//! (`range(0; .n)` with `n` = 10¹²), nor its memory (`"#" * .n`), nor its recursion (its JSON
//! reader recurses once per `[`, and so can a filter's own `def`). So a filter never runs in
//! the daemon: each compiled [`Filter`] has a worker process of its own ([`worker`]: the same
//! binary, `edgehook jq-worker`), and the [`Budget`] is enforced from outside:
//!
//! | bound | where | past it |
//! |---|---|---|
//! | input nesting ([`depth::MAX_DEPTH`]) | measured in the daemon before the input is sent | [`RunError::Input`] |
//! | time ([`Budget::time`]) | the daemon waits that long for the answer | the worker is killed; [`RunError::Budget`] |
//! | memory ([`Budget::memory`]) | the worker's allocator ([`crate::heap_budget`]) | the worker aborts; [`RunError::Budget`] |
//! | stack | the worker's main thread (8 MiB) | the worker aborts; [`RunError::Budget`] |
//! | output ([`Budget::output`]) | the worker, before it answers | [`RunError::Failed`] |
//!
//! A worker that was killed or died is started again at the next input; no thread is ever
//! left running. What is past a budget is the input's fault, so it is never retried: a mapping
//! counts a decode error (`kind="mapping"`), a template makes the event a dead letter.
//!
//! What a filter may use: jq's standard library is there (`map`, `select`, `to_entries`,
//! `test`, `@base64`, `strftime`, `fromdate`, ...), but what reads the clock, the environment,
//! the local time zone or further input (`now`, `env`, `$ENV`, `localtime`, `strflocaltime`,
//! `input`) is not: a filter that uses one does not compile, so the same input always gives
//! the same output (a retried webhook sends the same bytes). `halt` fails the filter; `debug`
//! and `stderr` write nothing. A filter gives at most one value.

pub mod depth;
mod eval;
mod sandbox;
pub mod wire;
pub mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How much one evaluation may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Wall-clock time for one input, from when it is sent to the worker.
    pub time: Duration,
    /// The worker's heap, in bytes (its compiled filter included).
    pub memory: usize,
    /// The value's size as JSON text, in bytes.
    pub output: usize,
}

impl Budget {
    /// A subscription's mapping: it runs on the MQTT source's loop, so it is held short.
    pub const MAPPING: Budget = Budget {
        time: Duration::from_millis(250),
        memory: 16 * 1024 * 1024,
        output: 1024 * 1024,
    };
    /// An endpoint's template: it runs on a blocking thread, before a delivery attempt.
    pub const TEMPLATE: Budget = Budget {
        time: Duration::from_secs(2),
        memory: 16 * 1024 * 1024,
        output: 4 * 1024 * 1024,
    };
}

/// Why a filter gave no value.
#[derive(Debug, Clone, PartialEq)]
pub enum RunError {
    /// The input is not JSON (or nests deeper than [`depth::MAX_DEPTH`]).
    Input(String),
    /// The filter failed (an error, `halt`, a value over the output budget).
    Failed(String),
    /// It gave more than one value.
    Many,
    /// The evaluation went past its time, memory or stack (the worker was stopped), or the
    /// worker could not be started.
    Budget(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Input(e) => write!(f, "the input is not JSON: {e}"),
            RunError::Failed(e) => f.write_str(e),
            RunError::Many => f.write_str("it gives more than one value"),
            RunError::Budget(e) => f.write_str(e),
        }
    }
}

/// A filter, checked, with its worker (started at its first input, stopped when the filter is
/// dropped).
pub struct Filter {
    code: Arc<str>,
    budget: Budget,
    worker: Mutex<Option<sandbox::Worker>>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("jq::Filter")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Filter {
    /// Check `code` (compiled here once: the code is the operator's); the error says what is
    /// wrong (it `does not parse: ...`, it `uses what is not defined here: ...`).
    pub fn compile(code: &str, budget: Budget) -> Result<Filter, String> {
        eval::Program::compile(code)?;
        Ok(Filter {
            code: code.into(),
            budget,
            worker: Mutex::new(None),
        })
    }

    /// The filter's value for the JSON text `input`, as JSON text; `None` when it gives
    /// nothing (`empty`, `select` false). Blocks for at most the budget's time (plus, at the
    /// first input or after a worker was stopped, the start of a new one).
    pub fn run(&self, input: &[u8]) -> Result<Option<Vec<u8>>, RunError> {
        if depth::deeper_than(input, depth::MAX_DEPTH) {
            return Err(RunError::Input(format!(
                "it nests deeper than {} arrays and objects",
                depth::MAX_DEPTH
            )));
        }
        let mut slot = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(sandbox::Worker::start(&self.code, self.budget)?);
        }
        let worker = slot.as_mut().expect("started above");
        match worker.run(input, self.budget) {
            Ok(answer) => answer,
            Err(stopped) => {
                // The worker is gone (killed at the budget, or died): the next input starts
                // another.
                *slot = None;
                Err(stopped)
            }
        }
    }
}

#[cfg(test)]
mod tests;
