//! What the daemon and its jq worker say to each other over the worker's stdin and stdout.
//!
//! - The worker first prints [`READY`] on a line (anything before it is ignored: a test
//!   binary's harness prints its own lines first), after it compiled the filter it was given.
//! - Daemon → worker: frames, each a little-endian `u32` length and that many bytes. The first
//!   is the filter's code, every later one an input (JSON text).
//! - Worker → daemon: for each input one answer, a tag byte, a `u32` length and the bytes.

use std::io::{self, Read, Write};

use super::RunError;

/// The worker's first line.
pub const READY: &[u8] = b"edgehook-jq-worker ready\n";

/// The longest frame either side accepts (a payload, a body, an error message).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

const NOTHING: u8 = 0;
const VALUE: u8 = 1;
const FAILED: u8 = 2;
const MANY: u8 = 3;
const INPUT: u8 = 4;

/// One input's outcome, as the worker found it.
pub type Answer = Result<Option<Vec<u8>>, RunError>;

pub fn write_frame(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(bytes)?;
    w.flush()
}

/// The next frame; `None` at a clean end of the stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes"),
        ));
    }
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes)?;
    Ok(Some(bytes))
}

pub fn write_answer(w: &mut impl Write, answer: &Answer) -> io::Result<()> {
    let (tag, bytes): (u8, &[u8]) = match answer {
        Ok(None) => (NOTHING, b""),
        Ok(Some(value)) => (VALUE, value),
        Err(RunError::Failed(e)) => (FAILED, e.as_bytes()),
        Err(RunError::Many) => (MANY, b""),
        Err(RunError::Input(e)) => (INPUT, e.as_bytes()),
        // The budget is the daemon's to tell; the worker never answers with it.
        Err(RunError::Budget(e)) => (FAILED, e.as_bytes()),
    };
    w.write_all(&[tag])?;
    write_frame(w, bytes)
}

/// The next answer; `None` when the worker's output ended.
pub fn read_answer(r: &mut impl Read) -> io::Result<Option<Answer>> {
    let mut tag = [0u8; 1];
    match r.read_exact(&mut tag) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let Some(bytes) = read_frame(r)? else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(&bytes).into_owned();
    Ok(Some(match tag[0] {
        NOTHING => Ok(None),
        VALUE => Ok(Some(bytes)),
        FAILED => Err(RunError::Failed(text())),
        MANY => Err(RunError::Many),
        INPUT => Err(RunError::Input(text())),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an answer tagged {other}"),
            ))
        }
    }))
}

/// Read up to and including the [`READY`] line; `false` if the stream ended first.
pub fn await_ready(r: &mut impl Read) -> io::Result<bool> {
    let mut seen = Vec::with_capacity(READY.len());
    let mut byte = [0u8; 1];
    // A harness line or two before it, never more than this.
    for _ in 0..4096 {
        if r.read(&mut byte)? == 0 {
            return Ok(false);
        }
        seen.push(byte[0]);
        if seen.ends_with(READY) {
            return Ok(true);
        }
        if byte[0] == b'\n' {
            seen.clear();
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_back_as_written() {
        let answers: Vec<Answer> = vec![
            Ok(None),
            Ok(Some(b"{\"a\":1}".to_vec())),
            Err(RunError::Failed("cannot index".into())),
            Err(RunError::Many),
            Err(RunError::Input("eof".into())),
        ];
        let mut buf = b"running 1 test\n".to_vec();
        buf.extend_from_slice(READY);
        for a in &answers {
            write_answer(&mut buf, a).unwrap();
        }
        let mut r = buf.as_slice();
        assert!(await_ready(&mut r).unwrap());
        for a in &answers {
            assert_eq!(&read_answer(&mut r).unwrap().unwrap(), a);
        }
        assert_eq!(read_answer(&mut r).unwrap(), None);
    }

    #[test]
    fn an_oversize_frame_is_refused_before_it_is_allocated() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_frame(&mut buf.as_slice()).is_err());
    }
}
