//! Modbus source: one task per bus (an RTU line on a serial port, or a Modbus TCP gateway),
//! polling each of its devices' registers ([`registers`]) on its own interval, the earliest
//! due first ([`schedule`]), one request at a time as the protocol wants.
//!
//! - An answer becomes a reading of the fields the device's map names (a reading is a sign of
//!   life: the device stage registers the device and holds it online, heartbeat included).
//! - A request without an answer in `timeout`, or with a damaged one (bad CRC, another unit,
//!   another length), is sent again up to `retries` times, then the poll fails; a Modbus
//!   exception fails it at once. After `offline_after` failed polls in a row the device is
//!   reported offline (once); it is polled less and less often until it answers again. Each
//!   outcome is counted (`edgehook_modbus_requests_total{kind}`).
//! - The line going away (adapter unplugged) or the connection dropping reports every device
//!   on the bus offline and reopens with backoff, as the serial source does.
//!
//! Modbus has no acknowledgements and nothing to redeliver: a poll that a crash loses is
//! made again at the next start, and the registers hold the device's state until then.

pub mod config;
pub mod frame;
pub mod registers;
pub mod schedule;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Map;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::{Inbound, InboundBody};
use crate::fault_log::FaultLog;
use crate::source::metrics::SourceMetrics as Metrics;
use config::{BusConfig, ModbusConfig, Register};
use frame::{Answer, FrameError, Request};
use registers::Read;
use schedule::Schedule;

/// One device of the bus and what is known of it.
struct Polled {
    id: String,
    unit: u8,
    map: Arc<[Register]>,
    reads: Arc<[Read]>,
    /// Reported offline and not heard since.
    offline: bool,
}

/// One bus's task state.
pub struct ModbusSource {
    config: BusConfig,
    name: String,
    devices: Vec<Polled>,
    metrics: Arc<Metrics>,
    faults: FaultLog,
    /// Modbus TCP's transaction id, one more each request.
    transaction: u16,
}

/// What stopped polling.
enum Closed {
    Cancelled,
    Downstream,
    Lost(String),
}

/// Why a request got no answer to take.
enum Failure {
    Timeout,
    Frame(FrameError),
    /// The line or connection failed: it is closed and reopened.
    Io(String),
}

impl Failure {
    /// Its label in `edgehook_modbus_requests_total{kind}`.
    fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Frame(e) => e.kind(),
            Failure::Io(_) => "io",
        }
    }

    /// Whether sending the request again may help: not after an exception (the device
    /// answered, and said no) nor after the line failed.
    fn retryable(&self) -> bool {
        matches!(
            self,
            Failure::Timeout | Failure::Frame(FrameError::Crc | FrameError::Mismatch(_))
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("no answer"),
            Failure::Frame(e) => e.fmt(f),
            Failure::Io(e) => f.write_str(e),
        }
    }
}

/// A bus's connection: the serial line, or the TCP stream.
trait Line: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Line for T {}

impl ModbusSource {
    /// Bus `index` of `modbus` (validated: every device's map exists).
    pub fn new(modbus: &ModbusConfig, index: usize, metrics: Arc<Metrics>) -> ModbusSource {
        let config = modbus.buses[index].clone();
        let devices = config
            .devices
            .iter()
            .map(|d| {
                let registers = modbus
                    .maps
                    .iter()
                    .find(|m| m.name == d.map)
                    .map(|m| m.registers.clone())
                    .unwrap_or_default();
                Polled {
                    id: d.id.clone(),
                    unit: d.unit,
                    reads: registers::plan(&registers).into(),
                    map: registers.into(),
                    offline: false,
                }
            })
            .collect();
        ModbusSource {
            name: config.name(),
            config,
            devices,
            metrics,
            faults: FaultLog::new(Duration::from_secs(60)),
            transaction: 0,
        }
    }

    async fn open(&self) -> Result<Box<dyn Line>, String> {
        let c = &self.config;
        if let Some(path) = &c.path {
            let port =
                super::serial::open_port(path, c.baud_rate, c.data_bits, c.parity, c.stop_bits)
                    .map_err(|e| e.to_string())?;
            return Ok(Box::new(port));
        }
        let address = c.address.as_deref().unwrap_or_default();
        let connect = tokio::net::TcpStream::connect(address);
        match tokio::time::timeout(c.timeout.max(Duration::from_secs(2)), connect).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connecting timed out".into()),
        }
    }

    /// Run until cancelled: open, poll, and reopen with backoff whenever the bus goes away.
    pub async fn run(mut self, out: mpsc::Sender<Inbound>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.config.reopen_min, self.config.reopen_max);
        let intervals = self
            .config
            .devices
            .iter()
            .map(|d| d.interval.unwrap_or(self.config.interval));
        let mut schedule = Schedule::new(intervals, Instant::now());
        let mut failing_since: Option<Instant> = None;
        loop {
            match self.open().await {
                Ok(line) => {
                    match failing_since.take() {
                        Some(since) => {
                            tracing::info!(bus = %self.name, after = ?since.elapsed(), "Modbus bus back")
                        }
                        None => {
                            tracing::info!(bus = %self.name, devices = self.devices.len(), "Modbus bus open")
                        }
                    }
                    backoff.reset();
                    self.metrics.modbus_bus_opened();
                    schedule.all_due(Instant::now());
                    let closed = self.poll(line, &mut schedule, &out, &cancel).await;
                    self.metrics.modbus_bus_closed();
                    match closed {
                        Closed::Cancelled | Closed::Downstream => break,
                        Closed::Lost(why) => {
                            tracing::warn!(bus = %self.name, reason = %why, "Modbus bus lost; its devices are reported offline, reopening with backoff");
                            failing_since = Some(Instant::now());
                            if !self.all_offline(&out).await {
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    if failing_since.is_none() {
                        tracing::warn!(bus = %self.name, error = %e, "cannot open Modbus bus; retrying with backoff");
                        failing_since = Some(Instant::now());
                    } else {
                        tracing::debug!(bus = %self.name, error = %e, "Modbus bus still unavailable");
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff.jittered()) => {}
            }
        }
        tracing::debug!(bus = %self.name, "Modbus source stopped");
    }

    /// Poll the devices in turn until the line fails or the task is cancelled.
    async fn poll(
        &mut self,
        mut line: Box<dyn Line>,
        schedule: &mut Schedule,
        out: &mpsc::Sender<Inbound>,
        cancel: &CancellationToken,
    ) -> Closed {
        while let Some((i, due)) = schedule.next() {
            tokio::select! {
                _ = cancel.cancelled() => return Closed::Cancelled,
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            let polled = tokio::select! {
                _ = cancel.cancelled() => return Closed::Cancelled,
                polled = self.read_device(&mut line, i) => polled,
            };
            let fields = match polled {
                Ok(fields) => Some(fields),
                Err(Failure::Io(why)) => return Closed::Lost(why),
                Err(failure) => {
                    self.log_failure(i, &failure);
                    None
                }
            };
            let failures = schedule.done(i, Instant::now(), fields.is_some());
            let device = &mut self.devices[i];
            let body = match fields {
                Some(fields) => {
                    device.offline = false;
                    self.metrics.message_received();
                    InboundBody::Reading {
                        fields,
                        metadata: Arc::from([]),
                    }
                }
                None if failures >= self.config.offline_after && !device.offline => {
                    device.offline = true;
                    tracing::warn!(bus = %self.name, device_id = %device.id, unit = device.unit, polls = failures, "Modbus device not answering; reported offline");
                    InboundBody::Status { online: false }
                }
                None => continue,
            };
            let inbound = Inbound {
                device_id: device.id.clone(),
                body,
                ack: None,
                retained: false,
            };
            tokio::select! {
                _ = cancel.cancelled() => return Closed::Cancelled,
                sent = out.send(inbound) => if sent.is_err() { return Closed::Downstream },
            }
        }
        // No devices (validation forbids it): nothing to poll until cancelled.
        cancel.cancelled().await;
        Closed::Cancelled
    }

    fn log_failure(&mut self, i: usize, failure: &Failure) {
        let device = &self.devices[i];
        if let Some(suppressed) = self
            .faults
            .admit(failure.kind(), &device.id, Instant::now())
        {
            tracing::warn!(bus = %self.name, device_id = %device.id, unit = device.unit, error = %failure, suppressed, "Modbus poll failed");
        }
    }

    /// Every read of device `i`, each tried up to 1 + `retries` times: its fields, or why not.
    async fn read_device(
        &mut self,
        line: &mut Box<dyn Line>,
        i: usize,
    ) -> Result<Map<String, serde_json::Value>, Failure> {
        let (unit, map, reads) = {
            let d = &self.devices[i];
            (d.unit, d.map.clone(), d.reads.clone())
        };
        let mut fields = Map::new();
        for read in reads.iter() {
            let request = Request {
                unit,
                table: read.table,
                address: read.address,
                count: read.count,
            };
            let mut tries = 0;
            let answer = loop {
                let outcome = self.exchange(line, &request).await;
                let kind = outcome.as_ref().map_or_else(Failure::kind, |_| "ok");
                self.metrics.modbus_request(kind);
                match outcome {
                    Ok(answer) => break answer,
                    Err(failure) if !failure.retryable() || tries >= self.config.retries => {
                        return Err(failure)
                    }
                    Err(_) => {
                        tries += 1;
                        self.settle(line).await?;
                    }
                }
            };
            registers::decode(&map, read, &answer, &mut fields);
        }
        Ok(fields)
    }

    /// One request and its answer, within `timeout`.
    async fn exchange(
        &mut self,
        line: &mut Box<dyn Line>,
        request: &Request,
    ) -> Result<Answer, Failure> {
        let rtu = self.config.path.is_some();
        self.transaction = self.transaction.wrapping_add(1);
        let transaction = self.transaction;
        let bytes = if rtu {
            // The line is quiet 3.5 characters between frames (at least 1.75 ms).
            let char_time = 11.0 / f64::from(self.config.baud_rate.max(1));
            let gap = Duration::from_secs_f64((3.5 * char_time).max(0.00175));
            tokio::time::sleep(gap).await;
            request.rtu()
        } else {
            request.tcp(transaction)
        };
        let io = |e: std::io::Error| Failure::Io(e.to_string());
        tokio::time::timeout(self.config.timeout, async {
            line.write_all(&bytes).await.map_err(io)?;
            line.flush().await.map_err(io)
        })
        .await
        .map_err(|_| Failure::Io("writing a request timed out".into()))??;
        let read = async {
            let mut frame = Vec::with_capacity(64);
            let mut buf = [0u8; 256];
            loop {
                let want = if rtu {
                    request.rtu_len(&frame)
                } else {
                    Request::tcp_len(&frame)
                };
                if let Some(n) = want {
                    if frame.len() >= n {
                        frame.truncate(n);
                        return Ok(frame);
                    }
                }
                let n = line.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    return Err(Failure::Io("end of file".into()));
                }
                frame.extend_from_slice(&buf[..n]);
                if frame.len() > frame::MAX_TCP {
                    return Err(Failure::Frame(FrameError::Mismatch("too long")));
                }
            }
        };
        let frame = match tokio::time::timeout(self.config.timeout, read).await {
            Ok(frame) => frame?,
            Err(_) => return Err(Failure::Timeout),
        };
        let answer = if rtu {
            request.read_rtu(&frame)
        } else {
            request.read_tcp(transaction, &frame)
        };
        answer.map_err(Failure::Frame)
    }

    /// After a failed request: let a late or damaged answer finish arriving, and drop it.
    async fn settle(&self, line: &mut Box<dyn Line>) -> Result<(), Failure> {
        let mut buf = [0u8; 256];
        let quiet = Duration::from_millis(20);
        for _ in 0..64 {
            match tokio::time::timeout(quiet, line.read(&mut buf)).await {
                Err(_) => return Ok(()),
                Ok(Ok(0)) => return Err(Failure::Io("end of file".into())),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return Err(Failure::Io(e.to_string())),
            }
        }
        Ok(())
    }

    /// Offline reports for every device on the bus not reported so already. False if the
    /// device stage is gone.
    async fn all_offline(&mut self, out: &mpsc::Sender<Inbound>) -> bool {
        for device in self.devices.iter_mut().filter(|d| !d.offline) {
            device.offline = true;
            let report = Inbound {
                device_id: device.id.clone(),
                body: InboundBody::Status { online: false },
                ack: None,
                retained: false,
            };
            if out.send(report).await.is_err() {
                return false;
            }
        }
        true
    }
}
