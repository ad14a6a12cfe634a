//! A device's register map made into reads and fields: which reads a poll makes (neighbouring
//! registers of one table read together, within the protocol's limits), and how the values
//! that come back become a reading's fields (type, word order, scale and offset). Pure.

use serde_json::{Map, Number, Value};

use super::config::{Register, ValueType, WordOrder};
use super::frame::{Answer, Table};

/// Registers further apart than this are read apart (reading what lies between costs bus
/// time, and some devices refuse addresses they do not have).
const MAX_GAP: u16 = 8;

/// One read of a poll: `count` values of `table` from `address`, and the map's registers it
/// carries (their indexes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub table: Table,
    pub address: u16,
    pub count: u16,
    pub registers: Vec<usize>,
}

/// The reads that cover `map`, in table and address order.
pub fn plan(map: &[Register]) -> Vec<Read> {
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by_key(|&i| (map[i].table, map[i].address));
    let mut reads: Vec<Read> = Vec::new();
    for i in order {
        let r = &map[i];
        let width = r.kind().width();
        let end = r.address + width; // validated: no overflow
        if let Some(last) = reads.last_mut() {
            let last_end = last.address + last.count;
            let joins = last.table == r.table
                && r.address <= last_end.saturating_add(MAX_GAP)
                && end.max(last_end) - last.address <= r.table.max_count();
            if joins {
                last.count = end.max(last_end) - last.address;
                last.registers.push(i);
                continue;
            }
        }
        reads.push(Read {
            table: r.table,
            address: r.address,
            count: width,
            registers: vec![i],
        });
    }
    reads
}

/// The fields of `read`'s registers from its `answer`, added to `fields`.
pub fn decode(map: &[Register], read: &Read, answer: &Answer, fields: &mut Map<String, Value>) {
    for &i in &read.registers {
        let r = &map[i];
        let at = usize::from(r.address - read.address);
        let value = match answer {
            Answer::Bits(bits) => bits.get(at).map(|&b| Value::Bool(b)),
            Answer::Registers(words) => words
                .get(at..at + usize::from(r.kind().width()))
                .map(|w| value(r, w)),
        };
        if let Some(v) = value {
            fields.insert(r.field.clone(), v);
        }
    }
}

/// One register's value from its words: typed, then scaled and offset (a number that is not
/// finite, as a float register may hold, is `null`).
fn value(r: &Register, words: &[u16]) -> Value {
    let pair = |order: WordOrder| -> u32 {
        let (hi, lo) = match order {
            WordOrder::Big => (words[0], words[1]),
            WordOrder::Little => (words[1], words[0]),
        };
        (u32::from(hi) << 16) | u32::from(lo)
    };
    let kind = r.kind();
    let raw: f64 = match kind {
        ValueType::Bool => return Value::Bool(words[0] != 0),
        ValueType::U16 => f64::from(words[0]),
        ValueType::I16 => f64::from(words[0] as i16),
        ValueType::U32 => f64::from(pair(r.word_order)),
        ValueType::I32 => f64::from(pair(r.word_order) as i32),
        ValueType::F32 => f64::from(f32::from_bits(pair(r.word_order))),
    };
    let scaled = raw * r.scale + r.offset;
    let integral = kind != ValueType::F32 && r.scale == 1.0 && r.offset == 0.0;
    if integral {
        return Value::Number(Number::from(raw as i64));
    }
    // An f32 carries about 7 significant digits: a reading of 21.5 stays 21.5, not
    // 21.5000003814697.
    let rounded = if kind == ValueType::F32 {
        format!("{:.7e}", scaled).parse().unwrap_or(scaled)
    } else {
        scaled
    };
    Number::from_f64(rounded).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reg(field: &str, table: Table, address: u16, kind: ValueType) -> Register {
        Register {
            field: field.into(),
            table,
            address,
            kind: Some(kind),
            word_order: WordOrder::Big,
            scale: 1.0,
            offset: 0.0,
        }
    }

    #[test]
    fn neighbouring_registers_of_a_table_are_read_together() {
        use Table::*;
        use ValueType::*;
        let map = vec![
            reg("co2", InputRegisters, 10, U16),
            reg("people", InputRegisters, 0, U32),
            reg("temp", InputRegisters, 2, I16),
            reg("far", InputRegisters, 200, U16),
            reg("setpoint", HoldingRegisters, 3, F32),
            reg("occupied", DiscreteInputs, 0, Bool),
            reg("alarm", DiscreteInputs, 7, Bool),
        ];
        let reads = plan(&map);
        let got: Vec<(Table, u16, u16, Vec<usize>)> = reads
            .into_iter()
            .map(|r| (r.table, r.address, r.count, r.registers))
            .collect();
        assert_eq!(
            got,
            [
                (DiscreteInputs, 0, 8, vec![5, 6]),
                (HoldingRegisters, 3, 2, vec![4]),
                // 0–1 people, 2 temp, 10 co2 (7 apart: read together); 200 alone.
                (InputRegisters, 0, 11, vec![1, 2, 0]),
                (InputRegisters, 200, 1, vec![3]),
            ]
        );
    }

    #[test]
    fn no_read_asks_for_more_than_the_protocol_allows() {
        let map: Vec<Register> = (0..300)
            .map(|i| reg(&format!("r{i}"), Table::HoldingRegisters, i, ValueType::U16))
            .collect();
        let reads = plan(&map);
        assert_eq!(
            reads.iter().map(|r| r.count).collect::<Vec<_>>(),
            [125, 125, 50]
        );
        assert_eq!(reads.iter().map(|r| r.registers.len()).sum::<usize>(), 300);
    }

    #[test]
    fn values_are_typed_ordered_scaled_and_offset() {
        use ValueType::*;
        let with = |kind, order, scale, offset| Register {
            word_order: order,
            scale,
            offset,
            ..reg("v", Table::HoldingRegisters, 0, kind)
        };
        let big = WordOrder::Big;
        let little = WordOrder::Little;
        let cases: Vec<(Register, Vec<u16>, Value)> = vec![
            (with(U16, big, 1.0, 0.0), vec![0xFFFF], json!(65535)),
            (with(I16, big, 1.0, 0.0), vec![0xFFFE], json!(-2)),
            (with(I16, big, 0.1, 0.0), vec![215], json!(21.5)),
            (with(U16, big, 0.5, -40.0), vec![130], json!(25.0)),
            (with(U32, big, 1.0, 0.0), vec![0x0001, 0x0002], json!(65538)),
            (
                with(U32, little, 1.0, 0.0),
                vec![0x0002, 0x0001],
                json!(65538),
            ),
            (with(I32, big, 1.0, 0.0), vec![0xFFFF, 0xFFFF], json!(-1)),
            // 21.5 as an IEEE 754 single is 0x41AC0000.
            (with(F32, big, 1.0, 0.0), vec![0x41AC, 0x0000], json!(21.5)),
            (
                with(F32, little, 1.0, 0.0),
                vec![0x0000, 0x41AC],
                json!(21.5),
            ),
            (with(F32, big, 1.0, 0.0), vec![0x7FC0, 0x0000], Value::Null),
            (with(Bool, big, 1.0, 0.0), vec![3], json!(true)),
        ];
        for (r, words, want) in cases {
            let mut fields = Map::new();
            let read = Read {
                table: r.table,
                address: 0,
                count: r.kind().width(),
                registers: vec![0],
            };
            decode(
                std::slice::from_ref(&r),
                &read,
                &Answer::Registers(words.clone()),
                &mut fields,
            );
            assert_eq!(
                fields["v"],
                want,
                "{:?} {:?} of {words:04X?}",
                r.kind(),
                r.word_order
            );
        }
    }

    #[test]
    fn an_answer_shorter_than_its_read_leaves_the_missing_fields_out() {
        let map = vec![
            reg("a", Table::InputRegisters, 0, ValueType::U16),
            reg("b", Table::InputRegisters, 1, ValueType::U32),
        ];
        let read = &plan(&map)[0];
        let mut fields = Map::new();
        decode(&map, read, &Answer::Registers(vec![7, 1]), &mut fields);
        assert_eq!(Value::Object(fields), json!({"a": 7}));
    }
}
