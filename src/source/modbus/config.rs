//! The Modbus source's configuration: register maps (one per kind of device) and buses (an
//! RTU line on a serial port, or a Modbus TCP gateway), each with its devices.
//!
//! ```toml
//! [[modbus.maps]]
//! name = "people-counter"
//! registers = [
//!   { field = "people_in",  table = "input", address = 0, type = "u32" },
//!   { field = "people_out", table = "input", address = 2, type = "u32" },
//!   { field = "occupancy",  table = "input", address = 4 },
//!   { field = "temperature", table = "holding", address = 10, type = "i16", scale = 0.1 },
//!   { field = "presence",   table = "discrete_input", address = 0 },
//! ]
//!
//! [[modbus.buses]]
//! path = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
//! baud_rate = 9600
//! devices = [{ id = "entrance-counter", unit = 1, map = "people-counter" }]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::frame::Table;

/// Register maps and buses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// How each kind of device's registers become a reading's fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps: Vec<RegisterMap>,
    /// RTU lines and TCP gateways, each polling its devices in turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buses: Vec<BusConfig>,
}

/// One kind of device's registers, by name (`modbus.buses[].devices[].map`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    pub name: String,
    pub registers: Vec<Register>,
}

/// One value of a device: where it is and what it is.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// The reading's field it becomes.
    pub field: String,
    /// `coil`, `discrete_input` (bits), `holding` or `input` (16-bit registers).
    pub table: Table,
    /// Its address in the table, from 0 (the protocol's address: register 30001 of a
    /// device's manual is input register 0).
    pub address: u16,
    /// `bool` for bits; `u16` (the default), `i16`, `u32`, `i32` or `f32` for registers (the
    /// 32-bit ones take two registers).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ValueType>,
    /// The order of a 32-bit value's two registers: `big` (high word first, the usual) or
    /// `little`.
    #[serde(default)]
    pub word_order: WordOrder,
    /// The value is `raw × scale + offset` (e.g. a temperature in tenths: `scale = 0.1`).
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

impl Register {
    /// Its type: as given, else `bool` for bits and `u16` for registers.
    pub fn kind(&self) -> ValueType {
        self.kind.unwrap_or(if self.table.bits() {
            ValueType::Bool
        } else {
            ValueType::U16
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl ValueType {
    /// How many values of its table it takes: two registers for 32-bit types, else one.
    pub fn width(self) -> u16 {
        match self {
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    #[default]
    Big,
    Little,
}

/// One bus: `path` for Modbus RTU on a serial port (RS-485 adapter), or `address` for a
/// Modbus TCP gateway or device. Its devices are polled one at a time, the earliest due
/// first, so a slow or silent device costs the others at most its timeouts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// RTU: the serial device node, ideally a stable name (`/dev/serial/by-id/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// TCP: `host:port` of a Modbus TCP gateway (port 502 usually).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default = "default_baud_rate")]
    pub baud_rate: u32,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// The Modbus serial line's default is even parity.
    #[serde(default = "default_parity")]
    pub parity: crate::source::config::Parity,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// How long a device has to answer one request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub timeout: Duration,
    /// Requests sent again after a timeout or a damaged answer, per read (at most 5).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// How often each device is read, unless it says otherwise.
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub interval: Duration,
    /// After this many polls in a row without an answer, a device is reported offline (and
    /// polled less often, up to once a minute, until it answers again).
    #[serde(default = "default_offline_after")]
    pub offline_after: u32,
    /// Reopen backoff after the port or connection fails: doubles from `reopen_min` to
    /// `reopen_max`.
    #[serde(
        default = "crate::source::config::default_reopen_min",
        with = "humantime_serde"
    )]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub reopen_min: Duration,
    #[serde(
        default = "crate::source::config::default_reopen_max",
        with = "humantime_serde"
    )]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub reopen_max: Duration,
    pub devices: Vec<ModbusDevice>,
}

/// A device on a bus.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    /// Its device id in events.
    pub id: String,
    /// Its Modbus address on the bus (1–247; a TCP gateway's target, or 255 for a TCP device
    /// that ignores it).
    pub unit: u8,
    /// The name of its register map.
    pub map: String,
    /// How often it is read (default: the bus's `interval`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(test, schemars(with = "crate::schema::OptionalDuration"))]
    pub interval: Option<Duration>,
}

impl BusConfig {
    /// The bus for logs: its path or address.
    pub fn name(&self) -> String {
        match (&self.path, &self.address) {
            (Some(path), _) => path.display().to_string(),
            (None, Some(address)) => format!("tcp://{address}"),
            (None, None) => "?".into(),
        }
    }
}

fn default_baud_rate() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> crate::source::config::Parity {
    crate::source::config::Parity::Even
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_retries() -> u32 {
    1
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_offline_after() -> u32 {
    3
}

/// The checks: the key that is wrong and why (`serial_paths`: the `[[serial_ports]]`, which
/// a bus may not share).
pub fn validate(
    modbus: &ModbusConfig,
    serial_paths: &[&std::path::Path],
) -> Result<(), (String, String)> {
    let bad = |key: String, msg: String| Err((key, msg));
    for (i, map) in modbus.maps.iter().enumerate() {
        let key = |k: &str| format!("modbus.maps[{i}].{k}");
        if map.name.trim().is_empty() {
            return bad(key("name"), "must name the map".into());
        }
        if modbus.maps[..i].iter().any(|m| m.name == map.name) {
            return bad(key("name"), format!("`{}` is named twice", map.name));
        }
        if map.registers.is_empty() {
            return bad(
                key("registers"),
                "must list at least one register, e.g. { field = \"co2\", table = \"input\", address = 0 }".into(),
            );
        }
        for (j, r) in map.registers.iter().enumerate() {
            check_register(r, &map.registers[..j])
                .map_err(|(k, msg)| (key(&format!("registers[{j}].{k}")), msg))?;
        }
    }
    let mut ids: Vec<&str> = Vec::new();
    for (i, bus) in modbus.buses.iter().enumerate() {
        let key = |k: &str| format!("modbus.buses[{i}].{k}");
        match (&bus.path, &bus.address) {
            (Some(_), Some(_)) | (None, None) => {
                return bad(
                    format!("modbus.buses[{i}]"),
                    "give `path` (Modbus RTU on a serial port) or `address` (Modbus TCP, \"host:502\"), one of them".into(),
                )
            }
            (Some(path), None) => {
                if path.as_os_str().is_empty() {
                    return bad(key("path"), "must name the device node".into());
                }
                let taken = serial_paths.contains(&path.as_path())
                    || modbus.buses[..i].iter().any(|b| b.path.as_ref() == Some(path));
                if taken {
                    return bad(
                        key("path"),
                        format!("{} is used twice (a line has one reader)", path.display()),
                    );
                }
            }
            (None, Some(address)) => {
                let port = address.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
                if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p > 0) {
                    return bad(
                        key("address"),
                        format!("`{address}` is not host:port, e.g. \"10.0.0.20:502\""),
                    );
                }
            }
        }
        if bus.baud_rate == 0 {
            return bad(
                key("baud_rate"),
                "must be above 0, e.g. 9600 or 19200".into(),
            );
        }
        if !(7..=8).contains(&bus.data_bits) {
            return bad(key("data_bits"), "must be 7 or 8 (RTU uses 8)".into());
        }
        if !(1..=2).contains(&bus.stop_bits) {
            return bad(key("stop_bits"), "must be 1 or 2".into());
        }
        if bus.timeout < Duration::from_millis(10) || bus.timeout > Duration::from_secs(60) {
            return bad(key("timeout"), "must be between 10ms and 60s".into());
        }
        if bus.retries > 5 {
            return bad(key("retries"), "must be at most 5".into());
        }
        if bus.interval < Duration::from_millis(100) {
            return bad(key("interval"), "must be at least 100ms".into());
        }
        if bus.offline_after == 0 {
            return bad(key("offline_after"), "must be at least 1".into());
        }
        if bus.reopen_min.is_zero() || bus.reopen_min > bus.reopen_max {
            return bad(
                key("reopen_min"),
                "must be above 0 and at most reopen_max".into(),
            );
        }
        if bus.devices.is_empty() {
            return bad(
                key("devices"),
                "must list the bus's devices, e.g. [{ id = \"counter-1\", unit = 1, map = \"people-counter\" }]".into(),
            );
        }
        for (j, d) in bus.devices.iter().enumerate() {
            let key = |k: &str| format!("modbus.buses[{i}].devices[{j}].{k}");
            if d.id.trim().is_empty() || d.id.len() > 128 || d.id.contains(char::is_control) {
                return bad(key("id"), "must be 1-128 printable characters".into());
            }
            if ids.contains(&d.id.as_str()) {
                return bad(key("id"), format!("`{}` is listed twice", d.id));
            }
            ids.push(&d.id);
            let rtu = bus.path.is_some();
            if rtu && !(1..=247).contains(&d.unit) {
                return bad(key("unit"), "must be 1-247 on a serial line".into());
            }
            if bus.devices[..j].iter().any(|o| o.unit == d.unit) && rtu {
                return bad(
                    key("unit"),
                    format!("unit {} is listed twice on this line", d.unit),
                );
            }
            if !modbus.maps.iter().any(|m| m.name == d.map) {
                let names: Vec<&str> = modbus.maps.iter().map(|m| m.name.as_str()).collect();
                return bad(
                    key("map"),
                    format!(
                        "no map `{}` in modbus.maps (there: {})",
                        d.map,
                        names.join(", ")
                    ),
                );
            }
            if d.interval.is_some_and(|t| t < Duration::from_millis(100)) {
                return bad(key("interval"), "must be at least 100ms".into());
            }
        }
    }
    Ok(())
}

/// One register's checks (`before`: the map's registers before it): the key within the
/// register that is wrong and why.
fn check_register(r: &Register, before: &[Register]) -> Result<(), (String, String)> {
    let bad = |k: &str, msg: String| Err((k.to_string(), msg));
    if r.field.trim().is_empty() {
        return bad("field", "must name the reading's field".into());
    }
    if before.iter().any(|o| o.field == r.field) {
        return bad("field", format!("`{}` is read twice in this map", r.field));
    }
    let kind = r.kind();
    if r.table.bits() != (kind == ValueType::Bool) {
        let msg = if r.table.bits() {
            "a coil or discrete input is a bit: its type is `bool`"
        } else {
            "a register is u16, i16, u32, i32 or f32 (a bit is in table `coil` or `discrete_input`)"
        };
        return bad("type", msg.into());
    }
    if u32::from(r.address) + u32::from(kind.width()) > 65536 {
        return bad("address", "its registers run past 65535".into());
    }
    if !r.scale.is_finite() || r.scale == 0.0 {
        return bad("scale", "must be a number other than 0".into());
    }
    if !r.offset.is_finite() {
        return bad("offset", "must be a number".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        modbus: ModbusConfig,
    }

    const MAP: &str = r#"
[[modbus.maps]]
name = "counter"
registers = [
  { field = "people_in", table = "input", address = 0, type = "u32" },
  { field = "presence", table = "discrete_input", address = 0 },
]
"#;

    fn check(text: &str) -> Result<(), String> {
        let file: File = toml::from_str(text).map_err(|e| format!("parse: {e}"))?;
        validate(&file.modbus, &[std::path::Path::new("/dev/ttyTAKEN")]).map_err(|(k, _)| k)
    }

    #[test]
    fn a_mistake_is_named_by_its_key() {
        let bus = |rest: &str| {
            format!("{MAP}\n[[modbus.buses]]\npath = \"/dev/ttyRS485\"\ndevices = [{{ id = \"c-1\", unit = 1, map = \"counter\" }}]\n{rest}")
        };
        let cases: Vec<(String, Result<(), String>)> = vec![
            (bus(""), Ok(())),
            (
                MAP.replace("type = \"u32\"", "type = \"bool\""),
                Err("modbus.maps[0].registers[0].type".into()),
            ),
            (
                MAP.replace(
                    "\"discrete_input\", address = 0 }",
                    "\"discrete_input\", address = 0, type = \"f32\" }",
                ),
                Err("modbus.maps[0].registers[1].type".into()),
            ),
            (
                MAP.replace("address = 0, type", "address = 65535, type"),
                Err("modbus.maps[0].registers[0].address".into()),
            ),
            (
                MAP.replace("\"presence\"", "\"people_in\""),
                Err("modbus.maps[0].registers[1].field".into()),
            ),
            (
                format!("{MAP}{}", MAP.replace("field = \"people_in\"", "field = \"x\"")),
                Err("modbus.maps[1].name".into()),
            ),
            (
                bus("").replace("map = \"counter\"", "map = \"counters\""),
                Err("modbus.buses[0].devices[0].map".into()),
            ),
            (
                bus("").replace("unit = 1", "unit = 0"),
                Err("modbus.buses[0].devices[0].unit".into()),
            ),
            (
                bus("address = \"10.0.0.9:502\""),
                Err("modbus.buses[0]".into()),
            ),
            (
                bus("").replace("/dev/ttyRS485", "/dev/ttyTAKEN"),
                Err("modbus.buses[0].path".into()),
            ),
            (bus("timeout = \"5ms\""), Err("modbus.buses[0].timeout".into())),
            (bus("retries = 9"), Err("modbus.buses[0].retries".into())),
            (
                bus("").replace("path = \"/dev/ttyRS485\"", "address = \"gateway\""),
                Err("modbus.buses[0].address".into()),
            ),
            (
                bus("").replace(
                    "devices = [{ id = \"c-1\", unit = 1, map = \"counter\" }]",
                    "devices = [{ id = \"c-1\", unit = 1, map = \"counter\" }, { id = \"c-1\", unit = 2, map = \"counter\" }]",
                ),
                Err("modbus.buses[0].devices[1].id".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(check(&text), want, "{text}");
        }
    }

    #[test]
    fn a_bits_type_is_bool_and_a_registers_is_u16_unless_said() {
        let file: File = toml::from_str(MAP).unwrap();
        let kinds: Vec<ValueType> = file.modbus.maps[0]
            .registers
            .iter()
            .map(|r| r.kind())
            .collect();
        assert_eq!(kinds, [ValueType::U32, ValueType::Bool]);
        let input: Register =
            toml::from_str("field = \"co2\"\ntable = \"input\"\naddress = 3").unwrap();
        assert_eq!(
            (input.kind(), input.scale, input.offset),
            (ValueType::U16, 1.0, 0.0)
        );
    }
}
