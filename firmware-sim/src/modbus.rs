//! Modbus devices, the device (slave) side, written from the Modbus application protocol and
//! serial line specifications independently of edgehook's client: units with the four data
//! tables, answering reads (functions 1–4) over RTU on a [`SerialLink`] (a real
//! pseudo-terminal) or over Modbus TCP.
//!
//! Each unit behaves as a test or the `firmware-sim modbus` command sets it: it answers, it is
//! silent (a device that stopped answering), or it answers with a bad CRC. A request for
//! registers it does not have gets exception 2 (illegal data address), as the specification
//! says.
//!
//! [`people_counter`] is the register map of a typical ceiling people counter: people in and
//! out (u32, input registers 0–3), occupancy (input register 4), temperature in tenths of a
//! degree (holding register 10, i16) and presence (discrete input 0).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::serial::SerialLink;

/// How a unit answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Answers,
    /// Reads requests and never answers (powered off, wrong baud rate, broken wire).
    Silent,
    /// Answers with the CRC's bytes damaged.
    BadCrc,
}

/// One unit's tables.
#[derive(Debug, Clone)]
pub struct Unit {
    pub behaviour: Behaviour,
    pub coils: Vec<bool>,
    pub discrete_inputs: Vec<bool>,
    pub holding: Vec<u16>,
    pub input: Vec<u16>,
    /// Requests it answered (or would have), by function.
    pub requests: BTreeMap<u8, u64>,
}

impl Unit {
    /// A unit with `size` values in each table, all zero.
    pub fn new(size: usize) -> Unit {
        Unit {
            behaviour: Behaviour::Answers,
            coils: vec![false; size],
            discrete_inputs: vec![false; size],
            holding: vec![0; size],
            input: vec![0; size],
            requests: BTreeMap::new(),
        }
    }

    /// Set a u32 as two registers, high word first.
    pub fn set_u32(table: &mut [u16], address: usize, value: u32) {
        table[address] = (value >> 16) as u16;
        table[address + 1] = value as u16;
    }
}

/// A typical people counter's registers: `people_in`, `people_out` (u32 at input 0 and 2),
/// `occupancy` (input 4), `temperature` (holding 10, i16 in tenths), `presence` (discrete 0).
pub fn people_counter(people_in: u32, people_out: u32, tenths: i16) -> Unit {
    let mut unit = Unit::new(32);
    Unit::set_u32(&mut unit.input, 0, people_in);
    Unit::set_u32(&mut unit.input, 2, people_out);
    unit.input[4] = people_in.saturating_sub(people_out).min(65535) as u16;
    unit.holding[10] = tenths as u16;
    unit.discrete_inputs[0] = people_in > people_out;
    unit
}

/// The register map of [`people_counter`], as edgehook's configuration writes it.
pub const PEOPLE_COUNTER_MAP: &str = r#"[[modbus.maps]]
name = "people-counter"
registers = [
  { field = "people_in", table = "input", address = 0, type = "u32" },
  { field = "people_out", table = "input", address = 2, type = "u32" },
  { field = "occupancy", table = "input", address = 4 },
  { field = "temperature", table = "holding", address = 10, type = "i16", scale = 0.1 },
  { field = "presence", table = "discrete_input", address = 0 },
]
"#;

/// People walking through: each of `units` (people counters, see [`people_counter`]) counts
/// someone in or out, at random from `rng`, the occupancy and presence following. Returns the
/// unit that counted.
pub fn walk(units: &Units, addresses: &[u8], rng: &mut fastrand::Rng) -> Option<u8> {
    let &address = addresses.get(rng.usize(..addresses.len().max(1)))?;
    units.with(address, |u| {
        let count = |t: &[u16], at: usize| (u32::from(t[at]) << 16) | u32::from(t[at + 1]);
        let (mut people_in, mut people_out) = (count(&u.input, 0), count(&u.input, 2));
        if people_in > people_out && rng.bool() {
            people_out += 1;
        } else {
            people_in += 1;
        }
        let fresh = people_counter(people_in, people_out, u.holding[10] as i16);
        u.input[..5].copy_from_slice(&fresh.input[..5]);
        u.discrete_inputs[0] = fresh.discrete_inputs[0];
    });
    Some(address)
}

/// The units of a bus, shared between the thread that serves them and the test.
#[derive(Clone, Default)]
pub struct Units(Arc<Mutex<BTreeMap<u8, Unit>>>);

impl Units {
    pub fn add(&self, address: u8, unit: Unit) {
        self.0.lock().unwrap().insert(address, unit);
    }

    /// Change unit `address` (which must exist).
    pub fn with<T>(&self, address: u8, f: impl FnOnce(&mut Unit) -> T) -> T {
        f(self
            .0
            .lock()
            .unwrap()
            .get_mut(&address)
            .expect("no such unit"))
    }

    /// Requests unit `address` was sent, all functions.
    pub fn requests(&self, address: u8) -> u64 {
        self.with(address, |u| u.requests.values().sum())
    }

    /// The answer (a PDU) of unit `address` to request `pdu`, or none (not ours, or silent),
    /// and whether to damage it.
    fn answer(&self, address: u8, pdu: &[u8]) -> Option<(Vec<u8>, bool)> {
        let mut units = self.0.lock().unwrap();
        let unit = units.get_mut(&address)?;
        let function = *pdu.first()?;
        *unit.requests.entry(function).or_default() += 1;
        if unit.behaviour == Behaviour::Silent {
            return None;
        }
        Some((respond(unit, pdu), unit.behaviour == Behaviour::BadCrc))
    }
}

/// A unit's answer to a read request's PDU (function, address, count).
fn respond(unit: &Unit, pdu: &[u8]) -> Vec<u8> {
    let function = pdu[0];
    let exception = |code: u8| vec![function | 0x80, code];
    if pdu.len() != 5 || !(1..=4).contains(&function) {
        return exception(1);
    }
    let address = usize::from(u16::from_be_bytes([pdu[1], pdu[2]]));
    let count = usize::from(u16::from_be_bytes([pdu[3], pdu[4]]));
    let bits = |table: &[bool]| -> Vec<u8> {
        if count == 0 || count > 2000 {
            return exception(3);
        }
        let Some(values) = table.get(address..address + count) else {
            return exception(2);
        };
        let mut bytes = vec![0u8; count.div_ceil(8)];
        for (i, &on) in values.iter().enumerate() {
            if on {
                bytes[i / 8] |= 1 << (i % 8);
            }
        }
        let mut out = vec![function, bytes.len() as u8];
        out.extend(bytes);
        out
    };
    let words = |table: &[u16]| -> Vec<u8> {
        if count == 0 || count > 125 {
            return exception(3);
        }
        let Some(values) = table.get(address..address + count) else {
            return exception(2);
        };
        let mut out = vec![function, (count * 2) as u8];
        for w in values {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out
    };
    match function {
        1 => bits(&unit.coils),
        2 => bits(&unit.discrete_inputs),
        3 => words(&unit.holding),
        _ => words(&unit.input),
    }
}

/// The CRC of the Modbus serial line specification (§6.2.2: polynomial 0xA001, initial
/// 0xFFFF), computed a byte at a time with its table.
pub fn crc(bytes: &[u8]) -> u16 {
    static TABLE: std::sync::OnceLock<[u16; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u16; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u16;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xA001
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    bytes.iter().fold(0xFFFF, |c, &b| {
        (c >> 8) ^ table[usize::from((c ^ u16::from(b)) as u8)]
    })
}

/// Serving a bus; stops when dropped.
pub struct Serving {
    stop: Arc<AtomicBool>,
    /// Frames read with a bad CRC (noise, or a request cut by an unplug).
    pub bad_frames: Arc<AtomicU64>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Serve `units` over RTU on `link` (its current plug) until the result is dropped or the
/// link is unplugged.
pub fn serve_rtu(link: &SerialLink, units: Units) -> io::Result<Serving> {
    use std::os::fd::AsFd;
    let mut line = link.line()?;
    let stop = Arc::new(AtomicBool::new(false));
    let bad_frames = Arc::new(AtomicU64::new(0));
    let serving = Serving {
        stop: stop.clone(),
        bad_frames: bad_frames.clone(),
    };
    std::thread::spawn(move || {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::SeqCst) {
            let mut fds = [nix::poll::PollFd::new(
                line.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u8)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(_) => return,
            }
            let n = match line.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            // Every read request is 8 bytes: unit, function, address, count, CRC.
            while pending.len() >= 8 {
                let frame: Vec<u8> = pending[..8].to_vec();
                if crc(&frame[..6]).to_le_bytes() != [frame[6], frame[7]] {
                    bad_frames.fetch_add(1, Ordering::Relaxed);
                    pending.remove(0); // resynchronise a byte at a time
                    continue;
                }
                pending.drain(..8);
                let Some((pdu, damage)) = units.answer(frame[0], &frame[1..6]) else {
                    continue;
                };
                let mut answer = vec![frame[0]];
                answer.extend(pdu);
                let mut check = crc(&answer).to_le_bytes();
                if damage {
                    check[0] ^= 0x5A;
                }
                answer.extend_from_slice(&check);
                // A device answers after a few milliseconds, not at once.
                std::thread::sleep(Duration::from_millis(2));
                if line.write_all(&answer).and_then(|()| line.flush()).is_err() {
                    return;
                }
            }
        }
    });
    Ok(serving)
}

/// Serve `units` as a Modbus TCP server (or gateway) on `listener` until the result is
/// dropped: each connection's requests answered in turn, the unit id of the MBAP header
/// choosing the unit.
pub fn serve_tcp(listener: std::net::TcpListener, units: Units) -> io::Result<Serving> {
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let serving = Serving {
        stop: stop.clone(),
        bad_frames: Arc::new(AtomicU64::new(0)),
    };
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let (units, stop) = (units.clone(), stop.clone());
                    std::thread::spawn(move || serve_connection(stream, units, stop));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
    });
    Ok(serving)
}

fn serve_connection(mut stream: std::net::TcpStream, units: Units, stop: Arc<AtomicBool>) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut header = [0u8; 7];
    while !stop.load(Ordering::SeqCst) {
        match stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        if !(2..=254).contains(&length) {
            return; // not Modbus: close, as a server does
        }
        let mut pdu = vec![0u8; length - 1];
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.read_exact(&mut pdu).is_err() {
            return;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
        let Some((answer, _)) = units.answer(header[6], &pdu) else {
            continue; // a silent unit behind a gateway: no answer at all
        };
        let mut frame = header[..4].to_vec();
        frame.extend_from_slice(&((answer.len() + 1) as u16).to_be_bytes());
        frame.push(header[6]);
        frame.extend(answer);
        if stream.write_all(&frame).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_the_specifications() {
        // Modbus over serial line §6.2.2's example frame, and the application protocol's
        // read of holding registers 108–110 of unit 17.
        assert_eq!(crc(&[0x02, 0x07]).to_le_bytes(), [0x41, 0x12]);
        assert_eq!(
            crc(&[0x11, 0x03, 0x00, 0x6B, 0x00, 0x03]).to_le_bytes(),
            [0x76, 0x87]
        );
    }

    #[test]
    fn people_walking_through_keep_a_counters_registers_consistent() {
        let units = Units::default();
        units.add(1, people_counter(0, 0, 215));
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..200 {
            assert_eq!(walk(&units, &[1], &mut rng), Some(1));
        }
        units.with(1, |u| {
            let people_in = (u32::from(u.input[0]) << 16) | u32::from(u.input[1]);
            let people_out = (u32::from(u.input[2]) << 16) | u32::from(u.input[3]);
            assert_eq!(people_in + people_out, 200);
            assert!(people_in >= people_out);
            assert_eq!(u32::from(u.input[4]), people_in - people_out);
            assert_eq!(u.discrete_inputs[0], people_in > people_out);
            assert_eq!(u.holding[10], 215);
        });
    }

    #[test]
    fn a_unit_answers_reads_as_the_specification_shows() {
        let mut unit = Unit::new(200);
        unit.holding[108] = 0x022B;
        unit.holding[110] = 0x0064;
        assert_eq!(
            respond(&unit, &[3, 0, 108, 0, 3]),
            [3, 6, 0x02, 0x2B, 0, 0, 0, 0x64]
        );
        for (i, on) in [1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1]
            .iter()
            .enumerate()
        {
            unit.coils[20 + i] = *on == 1;
        }
        assert_eq!(respond(&unit, &[1, 0, 20, 0, 19]), [1, 3, 0xCD, 0x6B, 0x05]);
        assert_eq!(respond(&unit, &[4, 0, 199, 0, 2]), [0x84, 2]);
        assert_eq!(respond(&unit, &[6, 0, 1, 0, 1]), [0x86, 1]);
    }
}
