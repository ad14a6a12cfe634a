//! Serial devices on real pseudo-terminals: a [`SerialLink`] is a simulated USB-serial adapter.
//! It opens a pty pair (openpty), puts the line in raw mode, and points a stable path at the
//! slave side — the way udev's `/dev/serial/by-id/...` links point at `/dev/ttyUSB0` — so the
//! daemon is configured with the link and finds the device again after an unplug/replug, when
//! the pty (like a re-enumerated USB adapter) has a new node.
//!
//! Frames follow edgehook's serial formats. This module writes them with its own encoder (the
//! device side of the wire), independent of the daemon's decoder:
//! - text: `$OCC,<id>,<presence 0|1>,<temperature>,<seq>*<XOR checksum, 2 hex>\r\n`, and
//!   `$STA,<id>,online|offline*CS\r\n` status frames;
//! - json_lines: `{"device":"<id>","presence":true,"temperature":21.4,"seq":7}\n`;
//! - actions: commands read off the line ([`SerialLink::commands`], [`parse_command`]:
//!   `$ACT,<id>,<action id>,<name>,<params>*CS` or `{"device","action","id","params"}`) and
//!   answered with [`result_frame`] (`$RES,<id>,<action id>,succeeded|failed[,reason]*CS`, or
//!   `{"device","action_id","status","reason","result"}`).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::{DeviceClass, Firmware, FleetStats};

/// A simulated serial adapter; see the module docs.
pub struct SerialLink {
    link: PathBuf,
    pts: PathBuf,
    master: Option<File>,
    /// Held open so the line stays up (and raw) whether or not the daemon has it open.
    slave: Option<OwnedFd>,
    /// Tells the command reader of the current plug to let go of the line.
    reading: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl SerialLink {
    /// Plug in: create a raw-mode pty and point `link` at it.
    pub fn plug(link: impl Into<PathBuf>) -> io::Result<SerialLink> {
        let mut port = SerialLink {
            link: link.into(),
            pts: PathBuf::new(),
            master: None,
            slave: None,
            reading: None,
        };
        port.replug()?;
        Ok(port)
    }

    /// The stable path to configure the daemon with.
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// The pty node the link points at now.
    pub fn pts(&self) -> &Path {
        &self.pts
    }

    pub fn is_plugged(&self) -> bool {
        self.master.is_some()
    }

    /// Write bytes to the line, blocking while the reader is behind. Writing to an unplugged
    /// link is an error.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let master = self
            .master
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "unplugged"))?;
        master.write_all(bytes)?;
        master.flush()
    }

    /// Write on a blocking thread, for async callers (a large write blocks until read).
    pub async fn send(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        let mut master = self
            .master
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "unplugged"))?
            .try_clone()?;
        tokio::task::spawn_blocking(move || {
            master.write_all(&bytes)?;
            master.flush()
        })
        .await
        .map_err(io::Error::other)?
    }

    /// The lines the daemon writes to this device side (commands), as they come, until the
    /// link is unplugged. One reader per plug.
    pub fn commands(&mut self) -> io::Result<std::sync::mpsc::Receiver<String>> {
        use std::io::Read;
        use std::os::fd::AsFd;
        use std::sync::atomic::{AtomicBool, Ordering};
        let master = self
            .master
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "unplugged"))?
            .try_clone()?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        self.reading = Some(stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut master = master;
            let mut line = Vec::new();
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::SeqCst) {
                let mut fds = [nix::poll::PollFd::new(
                    master.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u8)) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(_) => return,
                }
                let n = match master.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                for &b in &buf[..n] {
                    if b == b'\n' {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        line.clear();
                        if tx.send(text).is_err() {
                            return;
                        }
                    } else {
                        line.push(b);
                    }
                }
            }
        });
        Ok(rx)
    }

    /// The device side of the line, to read and write raw bytes (a Modbus unit's), until the
    /// link is unplugged.
    pub fn line(&self) -> io::Result<File> {
        self.master
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "unplugged"))?
            .try_clone()
    }

    /// Unplug: the line hangs up (the reader gets an error) and the link disappears.
    pub fn unplug(&mut self) {
        if let Some(stop) = self.reading.take() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            // The reader lets go of its copy of the line within a poll.
            std::thread::sleep(Duration::from_millis(100));
        }
        self.master = None;
        self.slave = None;
        let _ = std::fs::remove_file(&self.link);
    }

    /// Plug in again: a new pty, the link pointing at it.
    pub fn replug(&mut self) -> io::Result<()> {
        use nix::fcntl::OFlag;
        self.unplug();
        // openpty(3), spelled out so that both ends are close-on-exec from the start: a child
        // process spawned meanwhile (the daemon under test) must not inherit the master, or the
        // line could never hang up.
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let master = nix::pty::posix_openpt(flags)?;
        nix::pty::grantpt(&master)?;
        nix::pty::unlockpt(&master)?;
        self.pts = PathBuf::from(nix::pty::ptsname_r(&master)?);
        let slave = nix::fcntl::open(&self.pts, flags, nix::sys::stat::Mode::empty())?;
        let mut termios = nix::sys::termios::tcgetattr(&slave)?;
        nix::sys::termios::cfmakeraw(&mut termios);
        nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &termios)?;
        let tmp = self.link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&self.pts, &tmp)?;
        std::fs::rename(&tmp, &self.link)?;
        self.master = Some(File::from(OwnedFd::from(master)));
        self.slave = Some(slave);
        Ok(())
    }
}

impl Drop for SerialLink {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// XOR of every byte: the text protocol's checksum.
pub fn checksum(body: &str) -> u8 {
    body.bytes().fold(0, |acc, b| acc ^ b)
}

/// `$body*CS\r\n`.
pub fn text_frame(body: &str) -> Vec<u8> {
    format!("${body}*{:02X}\r\n", checksum(body)).into_bytes()
}

/// How a serial device frames its readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialFraming {
    Text,
    JsonLines,
}

/// A reading (as [`Firmware::next_reading`] makes it) as one frame.
pub fn reading_frame(framing: SerialFraming, device: &str, reading: &Value) -> Vec<u8> {
    match framing {
        SerialFraming::Text => text_frame(&format!(
            "OCC,{device},{},{},{}",
            u8::from(reading["presence"].as_bool().unwrap_or(false)),
            reading["temperature"],
            reading["seq"]
        )),
        SerialFraming::JsonLines => {
            let mut object = reading.as_object().cloned().unwrap_or_default();
            object.remove("ts");
            object.insert("device".into(), device.into());
            let mut line = Value::Object(object).to_string().into_bytes();
            line.push(b'\n');
            line
        }
    }
}

/// A status frame (`online`/`offline`).
pub fn status_frame(framing: SerialFraming, device: &str, online: bool) -> Vec<u8> {
    let word = if online { "online" } else { "offline" };
    match framing {
        SerialFraming::Text => text_frame(&format!("STA,{device},{word}")),
        SerialFraming::JsonLines => {
            format!("{{\"device\":\"{device}\",\"status\":\"{word}\"}}\n").into_bytes()
        }
    }
}

/// A command as a device reads it: (device, action id, name, params). Text params come as
/// `{key: value}` for `key=value` fields, else a list of the fields. `None`: not a command, or
/// a text frame whose checksum is wrong.
pub fn parse_command(
    framing: SerialFraming,
    line: &str,
) -> Option<(String, String, String, Value)> {
    match framing {
        SerialFraming::JsonLines => {
            let v: Value = serde_json::from_str(line).ok()?;
            Some((
                v["device"].as_str()?.to_string(),
                v["id"].as_str()?.to_string(),
                v["action"].as_str()?.to_string(),
                v["params"].clone(),
            ))
        }
        SerialFraming::Text => {
            let frame = line.strip_prefix('$')?;
            let (body, sum) = frame.rsplit_once('*')?;
            if u8::from_str_radix(sum.trim(), 16).ok()? != checksum(body) {
                return None;
            }
            let mut fields = body.split(',').map(percent_decode);
            if fields.next()? != "ACT" {
                return None;
            }
            let (device, id, name) = (fields.next()?, fields.next()?, fields.next()?);
            let rest: Vec<String> = body.split(',').skip(4).map(str::to_string).collect();
            let params = if !rest.is_empty() && rest.iter().all(|f| f.contains('=')) {
                Value::Object(
                    rest.iter()
                        .filter_map(|f| f.split_once('='))
                        .map(|(k, v)| (percent_decode(k), Value::String(percent_decode(v))))
                        .collect(),
                )
            } else {
                Value::Array(
                    rest.iter()
                        .map(|f| Value::String(percent_decode(f)))
                        .collect(),
                )
            };
            Some((device, id, name, params))
        }
    }
}

/// `%XX` → the byte.
fn percent_decode(text: &str) -> String {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Ok(x) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A device's answer to action `id` as one frame: its result, or why it failed (a text frame
/// carries no result object).
pub fn result_frame(
    framing: SerialFraming,
    device: &str,
    id: &str,
    outcome: Result<&Value, &str>,
) -> Vec<u8> {
    let status = if outcome.is_ok() {
        "succeeded"
    } else {
        "failed"
    };
    let reason = outcome.err();
    match framing {
        SerialFraming::Text => {
            let reason = reason
                .map(|r| {
                    format!(
                        ",{}",
                        r.replace('%', "%25")
                            .replace(',', "%2C")
                            .replace('*', "%2A")
                    )
                })
                .unwrap_or_default();
            text_frame(&format!("RES,{device},{id},{status}{reason}"))
        }
        SerialFraming::JsonLines => {
            let mut v = serde_json::json!({"device": device, "action_id": id, "status": status});
            match outcome {
                Ok(result) => v["result"] = result.clone(),
                Err(r) => v["reason"] = r.into(),
            }
            let mut line = v.to_string().into_bytes();
            line.push(b'\n');
            line
        }
    }
}

/// A serial bus: several occupancy sensors sharing one line.
#[derive(Debug, Clone)]
pub struct SerialBusConfig {
    /// Where to put the link to the pty.
    pub link: PathBuf,
    pub sensors: usize,
    pub prefix: String,
    pub seed: u64,
    pub framing: SerialFraming,
    pub interval: Duration,
    /// Readings per sensor; `None` runs until stopped.
    pub readings: Option<u64>,
    pub change_ratio: f64,
    /// Share of frames damaged on the line: half get a wrong checksum (lost), half arrive after
    /// a burst of line noise (kept). Every frame is also split across 1–3 writes.
    pub fault_ratio: f64,
    /// Unplug the adapter this often, for `unplug_for`.
    pub unplug_every: Option<Duration>,
    pub unplug_for: Duration,
}

/// What a serial bus run wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SerialStats {
    pub fleet: FleetStats,
    /// Frames written with a wrong checksum.
    pub corrupted: u64,
    pub unplugs: u64,
    /// Distinct actions answered.
    pub actions: u64,
}

/// Run a serial bus until every sensor has written its readings or `stop` resolves; sensors
/// announce `online` first and `offline` at the end. The link exists from the start.
pub async fn run_serial_bus(
    config: SerialBusConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SerialStats> {
    let mut link = SerialLink::plug(&config.link)?;
    let stop = crate::tokio_stop(stop);
    let mut rng = fastrand::Rng::with_seed(config.seed ^ 0x5e71a1);
    let mut sensors: Vec<Firmware> = (0..config.sensors)
        .map(|i| {
            Firmware::new(
                format!("{}-{}", config.prefix, i + 1),
                DeviceClass::OccupancySensor,
                config.seed,
            )
        })
        .collect();
    let mut stats = SerialStats::default();
    for s in &sensors {
        link.send(status_frame(config.framing, &s.id, true)).await?;
    }
    // Actions the daemon writes to the line, answered between readings (each id once).
    let mut commands = link.commands()?;
    let mut answered = std::collections::HashSet::new();
    let mut next_unplug = config.unplug_every.map(|e| tokio::time::Instant::now() + e);
    let mut written = 0u64;
    while config.readings.is_none_or(|n| written < n) && !*stop.borrow() {
        while let Ok(line) = commands.try_recv() {
            let Some((device, id, name, params)) = parse_command(config.framing, &line) else {
                continue;
            };
            if !sensors.iter().any(|s| s.id == device) {
                continue;
            }
            if answered.insert(id.clone()) {
                stats.actions += 1;
            }
            let done = crate::perform(DeviceClass::OccupancySensor, &Value::String(name), &params);
            let outcome = done.as_ref().map_err(String::as_str);
            let frame = result_frame(config.framing, &device, &id, outcome);
            link.send(frame).await?;
        }
        for fw in &mut sensors {
            let (reading, changed) = fw.next_reading(config.change_ratio, crate::now_ms());
            let mut frame = reading_frame(config.framing, &fw.id, &reading);
            if rng.f64() < config.fault_ratio {
                if rng.bool() {
                    // a wrong checksum: the daemon must drop this frame
                    let star = frame.iter().rposition(|b| *b == b'*').unwrap_or(0);
                    if config.framing == SerialFraming::Text && star > 0 {
                        frame[star + 1] = if frame[star + 1] == b'0' { b'1' } else { b'0' };
                        stats.corrupted += 1;
                    }
                } else {
                    let noise: Vec<u8> = (0..rng.usize(1..16))
                        .map(|_| rng.u8(..))
                        .filter(|b| *b != b'\n' && *b != b'$')
                        .collect();
                    link.send(noise).await?;
                }
            }
            let cuts = rng.usize(0..3);
            let mut rest = frame.as_slice();
            for _ in 0..cuts {
                if rest.len() < 2 {
                    break;
                }
                let (head, tail) = rest.split_at(rng.usize(1..rest.len()));
                link.send(head.to_vec()).await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
                rest = tail;
            }
            link.send(rest.to_vec()).await?;
            stats.fleet.readings += 1;
            stats.fleet.changes += changed as u64;
        }
        written += 1;
        if let (Some(at), Some(every)) = (next_unplug, config.unplug_every) {
            if tokio::time::Instant::now() >= at {
                link.unplug();
                stats.unplugs += 1;
                tokio::time::sleep(config.unplug_for).await;
                link.replug()?;
                commands = link.commands()?;
                next_unplug = Some(tokio::time::Instant::now() + every);
                for s in &sensors {
                    link.send(status_frame(config.framing, &s.id, true)).await?;
                }
            }
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = stop.changed() => {}
        }
    }
    for s in &sensors {
        link.send(status_frame(config.framing, &s.id, false))
            .await?;
    }
    // Give the reader a moment to take the last frames before the line hangs up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_match_the_documented_formats() {
        assert_eq!(
            text_frame("OCC,desk-12,1,21.4"),
            b"$OCC,desk-12,1,21.4*7C\r\n"
        );
        let reading = serde_json::json!({"presence": true, "temperature": 21.4, "seq": 3, "ts": 1});
        assert_eq!(
            reading_frame(SerialFraming::Text, "desk-12", &reading),
            text_frame("OCC,desk-12,1,21.4,3")
        );
        assert_eq!(
            reading_frame(SerialFraming::JsonLines, "desk-12", &reading),
            b"{\"device\":\"desk-12\",\"presence\":true,\"seq\":3,\"temperature\":21.4}\n"
        );
    }

    #[test]
    fn a_link_carries_bytes_and_survives_replug() {
        use std::io::Read;
        let dir = std::env::temp_dir().join(format!("fwsim-pty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut link = SerialLink::plug(dir.join("ttySIM0")).unwrap();
        let first = link.pts().to_path_buf();
        let mut reader = File::open(link.path()).unwrap();
        link.write(b"hello\n").unwrap();
        let mut buf = [0u8; 6];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello\n", "raw mode: bytes arrive untouched");
        link.unplug();
        assert!(!link.path().exists());
        assert!(
            !matches!(reader.read(&mut buf), Ok(n) if n > 0),
            "the old line hung up"
        );
        link.replug().unwrap();
        assert!(link.path().exists());
        assert_ne!(
            link.pts(),
            first,
            "a new node, like a re-enumerated adapter"
        );
        let mut reader = File::open(link.path()).unwrap();
        link.write(b"again\n").unwrap();
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"again\n");
        drop(link);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
