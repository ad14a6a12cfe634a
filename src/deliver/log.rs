//! The delivery log (`edgehook outbox log`): every attempt, as one JSON line, appended to
//! `delivery.log` in the state directory; when that holds `outbox.delivery_log` lines it becomes
//! `delivery.log.1` (replacing the older one) and a new file starts, so between that many and
//! twice that many of the latest attempts are kept.
//!
//! It is a plain append-only file rather than a tree in the outbox: it needs no transaction and
//! no fsync, and appending costs the disk only the bytes of the lines, where a sled tree rewrites
//! whole nodes as it goes (the log was the largest part of what an event wrote to disk). A crash
//! can lose the attempts not yet appended (dispatchers append in chunks, at least every
//! second) and tear the last line, which is skipped on reading; never an event. Being a file, it
//! can be read while the daemon runs.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The current file, in the state directory.
pub const FILE: &str = "delivery.log";
/// The previous file.
pub const PREVIOUS: &str = "delivery.log.1";

/// One delivery attempt, as the delivery log keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    /// When it finished, Unix milliseconds.
    pub at: u64,
    pub endpoint: String,
    pub event_id: String,
    /// The event's type (absent from lines written before it was kept).
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Its lane: `device:<id>`, `workspace:<id>` or `group:<id>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lane: String,
    /// Whether the receiver accepted it (2xx).
    pub ok: bool,
    /// The HTTP status, if the receiver answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How long the attempt took, milliseconds.
    pub ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The log's writer, shared by every endpoint's dispatcher.
pub struct DeliveryLog {
    dir: PathBuf,
    /// Lines per file; 0 keeps no log.
    keep: usize,
    current: Mutex<Current>,
    /// Every attempt appended, for those following live (the control API's event stream); a
    /// follower that falls behind misses attempts, and is told so, rather than holding anyone.
    live: tokio::sync::broadcast::Sender<Attempt>,
    /// The latest requests and answers, whole to a bound, in memory (not in the file).
    exchanges: std::sync::Arc<super::exchanges::Exchanges>,
}

/// Attempts a live follower may fall behind by.
const LIVE: usize = 256;

#[derive(Default)]
struct Current {
    /// Opened on the first append.
    file: Option<File>,
    lines: usize,
}

impl DeliveryLog {
    /// The log in `dir`, keeping at least `keep` attempts (0: none). Nothing is opened yet.
    pub fn new(dir: &Path, keep: usize) -> DeliveryLog {
        DeliveryLog {
            dir: dir.to_path_buf(),
            keep,
            current: Mutex::new(Current::default()),
            live: tokio::sync::broadcast::channel(LIVE).0,
            exchanges: Default::default(),
        }
    }

    /// Follow the attempts as they are appended.
    pub fn follow(&self) -> tokio::sync::broadcast::Receiver<Attempt> {
        self.live.subscribe()
    }

    /// The latest requests and their answers, as sent and received.
    pub fn exchanges(&self) -> &std::sync::Arc<super::exchanges::Exchanges> {
        &self.exchanges
    }

    /// The state directory the log is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append `attempts` (oldest first) with one write.
    pub fn append(&self, attempts: &[Attempt]) -> io::Result<()> {
        if self.live.receiver_count() > 0 {
            for a in attempts {
                let _ = self.live.send(a.clone());
            }
        }
        if self.keep == 0 || attempts.is_empty() {
            return Ok(());
        }
        let mut text = Vec::with_capacity(attempts.len() * 160);
        for a in attempts {
            serde_json::to_writer(&mut text, a).expect("plain data serialises");
            text.push(b'\n');
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.lines >= self.keep {
            current.file = None;
            std::fs::rename(self.dir.join(FILE), self.dir.join(PREVIOUS))?;
            current.lines = 0;
        }
        let file = match &mut current.file {
            Some(file) => file,
            None => {
                let (file, lines) = self.open_current()?;
                current.lines = lines;
                current.file.insert(file)
            }
        };
        file.write_all(&text)?;
        current.lines += attempts.len();
        Ok(())
    }

    /// Open `delivery.log` for appending and count its lines; a last line torn by a crash is
    /// ended, so that the next line stays readable.
    fn open_current(&self) -> io::Result<(File, usize)> {
        let path = self.dir.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)?;
        let lines = text.iter().filter(|&&b| b == b'\n').count();
        if text.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n")?;
        }
        Ok((file, lines))
    }
}

/// The latest `limit` attempts in the log in `dir` (only `endpoint`'s, if given), oldest first.
/// Unreadable lines are skipped; no log at all is an empty one.
pub fn read(dir: &Path, endpoint: Option<&str>, limit: usize) -> io::Result<Vec<Attempt>> {
    read_matching(dir, |a| endpoint.is_none_or(|e| e == a.endpoint), limit)
}

/// The latest `limit` attempts that `wanted` takes, oldest first: read a line at a time,
/// holding no more than `limit` of them (the log may hold twice `delivery_log` lines).
pub fn read_matching(
    dir: &Path,
    wanted: impl Fn(&Attempt) -> bool,
    limit: usize,
) -> io::Result<Vec<Attempt>> {
    use std::io::BufRead;
    let mut latest = std::collections::VecDeque::with_capacity(limit.min(1024));
    if limit == 0 {
        return Ok(Vec::new());
    }
    for name in [PREVIOUS, FILE] {
        let file = match File::open(dir.join(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in io::BufReader::new(file).split(b'\n') {
            let Ok(attempt) = serde_json::from_slice::<Attempt>(&line?) else {
                continue;
            };
            if wanted(&attempt) {
                if latest.len() == limit {
                    latest.pop_front();
                }
                latest.push_back(attempt);
            }
        }
    }
    Ok(latest.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(i: u64) -> Attempt {
        Attempt {
            at: i,
            endpoint: if i % 2 == 0 { "a" } else { "b" }.into(),
            event_id: format!("e{i}"),
            kind: "sensor.reading.updated".into(),
            lane: format!("device:d{i}"),
            ok: i % 3 != 0,
            status: Some(200),
            ms: 1,
            error: None,
        }
    }

    fn ats(log: Vec<Attempt>) -> Vec<u64> {
        log.iter().map(|a| a.at).collect()
    }

    #[test]
    fn keeps_between_keep_and_twice_keep_of_the_newest_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let log = DeliveryLog::new(dir.path(), 10);
        for first in (0..30u64).step_by(4) {
            let chunk: Vec<Attempt> = (first..(first + 4).min(30)).map(attempt).collect();
            log.append(&chunk).unwrap();
        }
        // Files of 12 (0..12), 12 (12..24) and 6 (24..30): the first is gone.
        assert_eq!(
            ats(read(dir.path(), None, 100).unwrap()),
            (12..30).collect::<Vec<_>>()
        );
        assert_eq!(ats(read(dir.path(), Some("b"), 3).unwrap()), [25, 27, 29]);

        // Another writer (a restart) goes on counting the lines already there.
        let log = DeliveryLog::new(dir.path(), 10);
        log.append(&(30..34).map(attempt).collect::<Vec<_>>())
            .unwrap();
        log.append(&[attempt(34)]).unwrap();
        assert_eq!(
            ats(read(dir.path(), None, 100).unwrap()),
            (24..35).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_next_ones_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = DeliveryLog::new(dir.path(), 100);
        log.append(&[attempt(1), attempt(2)]).unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        file.write_all(br#"{"at":3,"endpoint":"a","ev"#).unwrap();
        drop(file);
        let log = DeliveryLog::new(dir.path(), 100);
        log.append(&[attempt(4)]).unwrap();
        assert_eq!(ats(read(dir.path(), None, 100).unwrap()), [1, 2, 4]);
    }

    /// Lines written before attempts kept their event's type and lane read as before.
    #[test]
    fn a_line_without_type_or_lane_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            "{\"at\":1,\"endpoint\":\"a\",\"event_id\":\"e1\",\"ok\":true,\"status\":200,\"ms\":3}\n",
        )
        .unwrap();
        let log = DeliveryLog::new(dir.path(), 100);
        log.append(&[attempt(2)]).unwrap();
        let read = read(dir.path(), None, 10).unwrap();
        assert_eq!((read[0].kind.as_str(), read[0].lane.as_str()), ("", ""));
        assert_eq!(read[1].kind, "sensor.reading.updated");
        assert_eq!(read[1].lane, "device:d2");
    }

    #[test]
    fn keep_zero_writes_nothing_and_no_log_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        DeliveryLog::new(dir.path(), 0)
            .append(&[attempt(1)])
            .unwrap();
        assert!(!dir.path().join(FILE).exists());
        assert!(read(dir.path(), None, 10).unwrap().is_empty());
    }
}
