//! Modbus frames, as the client sends and reads them: read requests for the four data tables
//! (function codes 1–4) and their answers, over RTU (a serial line: unit, PDU, CRC-16) or TCP
//! (the MBAP header: transaction, protocol 0, length, unit; no CRC).
//!
//! Pure and bounded: a request asks for at most [`MAX_REGISTERS`] registers or [`MAX_BITS`]
//! bits, an RTU frame is at most [`MAX_RTU`] bytes, and every answer is checked against the
//! request it answers (unit, function, length, CRC) before a value is read. What arrives on a
//! line nobody controls never panics here (`fuzz/fuzz_targets/modbus_frames.rs`).

use std::fmt;

/// The most registers one read may ask for (the protocol's limit).
pub const MAX_REGISTERS: u16 = 125;
/// The most coils or discrete inputs one read may ask for (the protocol's limit).
pub const MAX_BITS: u16 = 2000;
/// The longest RTU frame (unit, PDU of at most 253 bytes, CRC).
pub const MAX_RTU: usize = 256;
/// The longest Modbus TCP frame (MBAP header of 7 bytes and a PDU of at most 253).
pub const MAX_TCP: usize = 260;

/// A device's data tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub enum Table {
    /// Read/write bits (function 1).
    #[serde(rename = "coil")]
    Coils,
    /// Read-only bits (function 2).
    #[serde(rename = "discrete_input")]
    DiscreteInputs,
    /// Read/write 16-bit registers (function 3).
    #[serde(rename = "holding")]
    HoldingRegisters,
    /// Read-only 16-bit registers (function 4).
    #[serde(rename = "input")]
    InputRegisters,
}

impl Table {
    pub fn function(self) -> u8 {
        match self {
            Table::Coils => 1,
            Table::DiscreteInputs => 2,
            Table::HoldingRegisters => 3,
            Table::InputRegisters => 4,
        }
    }

    /// Whether its values are bits (coils, discrete inputs) rather than registers.
    pub fn bits(self) -> bool {
        matches!(self, Table::Coils | Table::DiscreteInputs)
    }

    /// The most values one read of it may ask for.
    pub fn max_count(self) -> u16 {
        if self.bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        }
    }
}

/// One read: `count` values of `table` from `address`, of the device at `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub unit: u8,
    pub table: Table,
    pub address: u16,
    pub count: u16,
}

/// What a device answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Bits(Vec<bool>),
    Registers(Vec<u16>),
}

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The CRC does not match the bytes (noise on the line, or a device's fault).
    Crc,
    /// The device answered with a Modbus exception (`code`: 1 illegal function, 2 illegal
    /// data address, 3 illegal data value, 4 device failure, 6 busy, …).
    Exception(u8),
    /// An answer from another unit, for another function or transaction, or of the wrong
    /// length for what was asked.
    Mismatch(&'static str),
}

impl FrameError {
    /// Metric labels, in the order they are preset.
    pub const KINDS: [&'static str; 3] = ["crc", "exception", "mismatch"];

    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::Crc => "crc",
            FrameError::Exception(_) => "exception",
            FrameError::Mismatch(_) => "mismatch",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Crc => f.write_str("bad CRC"),
            FrameError::Exception(code) => {
                let what = match code {
                    1 => "illegal function",
                    2 => "illegal data address",
                    3 => "illegal data value",
                    4 => "device failure",
                    5 => "acknowledge",
                    6 => "device busy",
                    10 => "gateway path unavailable",
                    11 => "gateway target did not respond",
                    _ => "exception",
                };
                write!(f, "Modbus exception {code} ({what})")
            }
            FrameError::Mismatch(what) => write!(f, "answer does not match the request: {what}"),
        }
    }
}

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF), sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

impl Request {
    /// The PDU: function, address, count.
    fn pdu(&self) -> [u8; 5] {
        let [ah, al] = self.address.to_be_bytes();
        let [ch, cl] = self.count.to_be_bytes();
        [self.table.function(), ah, al, ch, cl]
    }

    /// The request as an RTU frame.
    pub fn rtu(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(8);
        frame.push(self.unit);
        frame.extend_from_slice(&self.pdu());
        let crc = crc16(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        frame
    }

    /// The request as a Modbus TCP frame with transaction `transaction`.
    pub fn tcp(&self, transaction: u16) -> Vec<u8> {
        let mut frame = Vec::with_capacity(12);
        frame.extend_from_slice(&transaction.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 6, self.unit]);
        frame.extend_from_slice(&self.pdu());
        frame
    }

    /// The PDU's data length of a full answer: the byte count after function and count byte.
    fn answer_bytes(&self) -> usize {
        if self.table.bits() {
            usize::from(self.count).div_ceil(8)
        } else {
            usize::from(self.count) * 2
        }
    }

    /// The values of an answer's PDU (function onwards).
    fn read_pdu(&self, pdu: &[u8]) -> Result<Answer, FrameError> {
        let function = *pdu.first().ok_or(FrameError::Mismatch("empty answer"))?;
        if function == self.table.function() | 0x80 {
            return Err(FrameError::Exception(pdu.get(1).copied().unwrap_or(0)));
        }
        if function != self.table.function() {
            return Err(FrameError::Mismatch("another function"));
        }
        let want = self.answer_bytes();
        if pdu.len() != 2 + want || usize::from(pdu[1]) != want {
            return Err(FrameError::Mismatch("another length"));
        }
        let data = &pdu[2..];
        Ok(if self.table.bits() {
            let bits = (0..usize::from(self.count))
                .map(|i| data[i / 8] & (1 << (i % 8)) != 0)
                .collect();
            Answer::Bits(bits)
        } else {
            let words = data
                .chunks_exact(2)
                .map(|w| u16::from_be_bytes([w[0], w[1]]))
                .collect();
            Answer::Registers(words)
        })
    }

    /// How long the RTU answer to this request is, once its first three bytes have arrived
    /// (unit, function, and byte count or exception code); `None` before that.
    pub fn rtu_len(&self, head: &[u8]) -> Option<usize> {
        let function = *head.get(1)?;
        let third = *head.get(2)?;
        Some(if function & 0x80 != 0 {
            5
        } else {
            // Unit, function, count byte, data, CRC; a count past the longest frame is a
            // damaged frame, read to that length and refused by its CRC.
            (3 + usize::from(third) + 2).min(MAX_RTU)
        })
    }

    /// The RTU answer `frame` (exactly [`Self::rtu_len`] bytes) to this request.
    pub fn read_rtu(&self, frame: &[u8]) -> Result<Answer, FrameError> {
        if frame.len() < 5 {
            return Err(FrameError::Mismatch("too short"));
        }
        let (body, crc) = frame.split_at(frame.len() - 2);
        if crc16(body).to_le_bytes() != [crc[0], crc[1]] {
            return Err(FrameError::Crc);
        }
        if body[0] != self.unit {
            return Err(FrameError::Mismatch("another unit"));
        }
        self.read_pdu(&body[1..])
    }

    /// How long the TCP answer is, once its MBAP header (7 bytes) has arrived.
    pub fn tcp_len(head: &[u8]) -> Option<usize> {
        let length = u16::from_be_bytes([*head.get(4)?, *head.get(5)?]);
        head.get(6)?;
        Some(6 + usize::from(length))
    }

    /// The TCP answer `frame` to this request, sent as `transaction`.
    pub fn read_tcp(&self, transaction: u16, frame: &[u8]) -> Result<Answer, FrameError> {
        if frame.len() < 8 {
            return Err(FrameError::Mismatch("too short"));
        }
        if frame[0..2] != transaction.to_be_bytes() || frame[2..4] != [0, 0] {
            return Err(FrameError::Mismatch("another transaction"));
        }
        if Request::tcp_len(frame) != Some(frame.len()) {
            return Err(FrameError::Mismatch("another length"));
        }
        if frame[6] != self.unit {
            return Err(FrameError::Mismatch("another unit"));
        }
        self.read_pdu(&frame[7..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(table: Table, address: u16, count: u16) -> Request {
        Request {
            unit: 17,
            table,
            address,
            count,
        }
    }

    #[test]
    fn requests_are_framed_as_the_specification_shows() {
        // Modbus over serial line, §2.5.1.2 / the application protocol's examples: read
        // holding registers 108–110 of unit 17 is 11 03 00 6B 00 03, CRC 76 87.
        let r = req(Table::HoldingRegisters, 0x6B, 3);
        assert_eq!(r.rtu(), [0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87]);
        assert_eq!(
            r.tcp(1),
            [0, 1, 0, 0, 0, 6, 0x11, 0x03, 0x00, 0x6B, 0x00, 0x03]
        );
        // Read coils 20–38 of unit 17: 11 01 00 13 00 13, its CRC as firmware-sim's own
        // (table-driven) implementation computes it.
        let coils = req(Table::Coils, 0x13, 0x13).rtu();
        assert_eq!(coils[..6], [0x11, 0x01, 0x00, 0x13, 0x00, 0x13]);
        assert_eq!(
            coils[6..],
            firmware_sim::modbus::crc(&coils[..6]).to_le_bytes()
        );
    }

    fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
        let crc = crc16(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        frame
    }

    #[test]
    fn answers_are_read_and_checked_against_their_request() {
        let regs = req(Table::HoldingRegisters, 0x6B, 3);
        let coils = req(Table::Coils, 0x13, 0x13);
        let ok = with_crc(vec![0x11, 0x03, 0x06, 0x02, 0x2B, 0x00, 0x00, 0x00, 0x64]);
        let mut bad_crc = ok.clone();
        bad_crc[4] ^= 1;
        let cases: Vec<(&Request, Vec<u8>, Result<Answer, FrameError>)> = vec![
            (
                &regs,
                ok.clone(),
                Ok(Answer::Registers(vec![0x022B, 0, 0x64])),
            ),
            (&regs, bad_crc, Err(FrameError::Crc)),
            (
                &regs,
                with_crc(vec![0x11, 0x83, 0x02]),
                Err(FrameError::Exception(2)),
            ),
            (
                &regs,
                with_crc(vec![0x12, 0x03, 0x06, 0, 0, 0, 0, 0, 0]),
                Err(FrameError::Mismatch("another unit")),
            ),
            (
                &regs,
                with_crc(vec![0x11, 0x04, 0x06, 0, 0, 0, 0, 0, 0]),
                Err(FrameError::Mismatch("another function")),
            ),
            (
                &regs,
                with_crc(vec![0x11, 0x03, 0x04, 0, 0, 0, 0]),
                Err(FrameError::Mismatch("another length")),
            ),
            // Coils 20–38 as the specification answers them: CD 6B 05.
            (
                &coils,
                with_crc(vec![0x11, 0x01, 0x03, 0xCD, 0x6B, 0x05]),
                Ok(Answer::Bits(
                    [1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1]
                        .iter()
                        .map(|&b| b == 1)
                        .collect(),
                )),
            ),
        ];
        for (request, frame, want) in cases {
            assert_eq!(request.rtu_len(&frame), Some(frame.len()), "{frame:02X?}");
            assert_eq!(request.read_rtu(&frame), want, "{frame:02X?}");
        }
        let tcp = [
            0, 7, 0, 0, 0, 9, 0x11, 0x03, 0x06, 0x02, 0x2B, 0x00, 0x00, 0x00, 0x64,
        ];
        assert_eq!(Request::tcp_len(&tcp), Some(tcp.len()));
        assert_eq!(
            regs.read_tcp(7, &tcp),
            Ok(Answer::Registers(vec![0x022B, 0, 0x64]))
        );
        assert_eq!(
            regs.read_tcp(8, &tcp),
            Err(FrameError::Mismatch("another transaction"))
        );
    }

    #[test]
    fn any_bytes_at_all_give_an_answer_or_an_error_never_a_panic() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let table = [
                Table::Coils,
                Table::DiscreteInputs,
                Table::HoldingRegisters,
                Table::InputRegisters,
            ][(next() % 4) as usize];
            let r = req(table, next() as u16, 1 + (next() % 125) as u16);
            if let Some(n) = r.rtu_len(&bytes) {
                assert!(n <= MAX_RTU);
            }
            let _ = r.read_rtu(&bytes);
            let _ = r.read_tcp(0, &bytes);
            let _ = Request::tcp_len(&bytes);
        }
    }
}
