//! The Modbus client's answer decoding on arbitrary bytes, for an arbitrary read request: it
//! must never panic, never ask to read past the protocol's longest frame, and whatever it takes
//! must be exactly what was asked for (as many values as the request's count).
#![no_main]

use edgehook::source::modbus::frame::{Answer, Request, Table, MAX_RTU, MAX_TCP};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let table = [
        Table::Coils,
        Table::DiscreteInputs,
        Table::HoldingRegisters,
        Table::InputRegisters,
    ][usize::from(data[0] % 4)];
    let count = 1 + u16::from_be_bytes([data[1], data[2]]) % table.max_count();
    let request = Request {
        unit: data[3],
        table,
        address: u16::from_be_bytes([data[4], data[5]]),
        count,
    };
    let frame = &data[6..];
    if let Some(n) = request.rtu_len(frame) {
        assert!(n <= MAX_RTU, "an RTU answer of {n} bytes");
    }
    if let Some(n) = Request::tcp_len(frame) {
        assert!(n <= 6 + usize::from(u16::MAX), "{n}");
        let _ = MAX_TCP;
    }
    for answer in [request.read_rtu(frame), request.read_tcp(7, frame)]
        .into_iter()
        .flatten()
    {
        let values = match answer {
            Answer::Bits(bits) => bits.len(),
            Answer::Registers(words) => words.len(),
        };
        assert_eq!(values, usize::from(count));
    }
});
