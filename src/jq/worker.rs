//! The jq worker: the daemon's own binary started as `edgehook jq-worker MEMORY OUTPUT`, one
//! process per filter. It evaluates one input at a time, on what it reads from stdin, and
//! nothing else: a filter that loops is killed by the daemon at its time budget, one that
//! allocates past `MEMORY` bytes or recurses past its stack aborts — this process, never the
//! daemon — and the daemon starts another for the next input.

use std::io::{self, Write};
use std::process::ExitCode;

use super::eval::Program;
use super::{wire, RunError};

/// `edgehook jq-worker MEMORY OUTPUT`: serve until stdin closes.
pub fn main(args: &[String]) -> ExitCode {
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<usize>().ok());
    let (Some(memory), Some(output)) = (number(0), number(1)) else {
        eprintln!(
            "usage: edgehook jq-worker MEMORY_BYTES MAX_OUTPUT_BYTES (started by the daemon)"
        );
        return ExitCode::from(2);
    };
    match serve(memory, output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jq worker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Compile the first frame, say [`wire::READY`], then answer every later frame.
pub fn serve(memory: usize, max_output: usize) -> io::Result<()> {
    crate::heap_budget::set(memory);
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    let Some(code) = wire::read_frame(&mut stdin)? else {
        return Ok(());
    };
    let program = Program::compile(&String::from_utf8_lossy(&code))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    stdout.write_all(wire::READY)?;
    stdout.flush()?;
    while let Some(input) = wire::read_frame(&mut stdin)? {
        let answer = match program.run(&input) {
            Ok(Some(value)) if value.len() > max_output => Err(RunError::Failed(format!(
                "its value is {} bytes, more than the {max_output} allowed",
                value.len()
            ))),
            other => other,
        };
        wire::write_answer(&mut stdout, &answer)?;
    }
    Ok(())
}
