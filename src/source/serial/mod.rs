//! Serial source (tokio-serial): one task per configured port. It opens the port, decodes its
//! frames ([`frame`]) and passes them to the device stage, and it survives the port going away.
//!
//! - A read error or end of file (USB adapter unplugged, cable pulled) closes the port: every
//!   device seen on it gets an offline report — debounced by the device stage like a last-will —
//!   and the port is reopened with exponential backoff until the device node returns.
//! - A port that cannot be opened (not there yet, wrong permissions) is retried the same way,
//!   logged once per outage with the reason.
//! - Faulty frames are counted per kind (`edgehook_serial_frame_errors_total`) and logged at
//!   most once a minute per port and kind; the decoder resynchronises on the next frame.
//!
//! - Actions for a device heard on this port are written to it as command frames (see
//!   [`frame`]), one at a time as the device stage sends them; its answers come back as result
//!   frames. While the port is closed its devices are offline, so the device stage sends them
//!   nothing; a command queued as the port closed is dropped (the action times out and is told).
//!
//! Serial has no acknowledgements: bytes read are handed on at once, and are durable once the
//! outbox writer has flushed them (milliseconds later). A device on a serial line that needs
//! delivery guarantees across a power cut of the gateway itself must resend, as the MQTT ones do.

pub mod frame;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::{Inbound, InboundBody};
use crate::fault_log::FaultLog;
use crate::source::config::{Parity, SerialFraming, SerialPortConfig};
use crate::source::metrics::SourceMetrics as Metrics;
use frame::{Format, FrameDecoder};

/// Devices remembered per port for offline reports when it closes; more are not tracked.
const MAX_DEVICES_PER_PORT: usize = 1024;

/// One serial port's task state.
pub struct SerialSource {
    config: SerialPortConfig,
    /// `path` for logs.
    name: String,
    metrics: Arc<Metrics>,
    faults: FaultLog,
    /// Devices heard on this port, which go offline when it closes.
    devices: BTreeSet<String>,
    /// Where the device stage's actions find this port's devices.
    router: super::Router,
    commands_tx: mpsc::Sender<super::Outgoing>,
    commands: mpsc::Receiver<super::Outgoing>,
}

/// Commands queued for one port.
const COMMAND_QUEUE: usize = 64;
/// A command frame must be written within this (a stuck line closes the port).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why reading stopped.
enum Closed {
    Cancelled,
    /// The device stage has gone.
    Downstream,
    /// The port failed or disappeared.
    Lost(String),
}

impl SerialSource {
    pub fn new(
        config: SerialPortConfig,
        metrics: Arc<Metrics>,
        router: super::Router,
    ) -> SerialSource {
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        SerialSource {
            router,
            commands_tx,
            commands,
            name: config.path.display().to_string(),
            config,
            metrics,
            faults: FaultLog::new(Duration::from_secs(60)),
            devices: BTreeSet::new(),
        }
    }

    fn format(&self) -> Format {
        match self.config.framing {
            SerialFraming::JsonLines => Format::JsonLines {
                device_field: self.config.device_field.clone(),
            },
            SerialFraming::Text => Format::Text {
                sentences: self.config.sentences.clone(),
            },
        }
    }

    fn decoder(&self) -> FrameDecoder {
        FrameDecoder::new(
            self.format(),
            self.config.metadata_fields.clone().into(),
            self.config.max_frame_bytes,
        )
    }

    fn open(&self) -> tokio_serial::Result<tokio_serial::SerialStream> {
        let c = &self.config;
        open_port(&c.path, c.baud_rate, c.data_bits, c.parity, c.stop_bits)
    }

    /// Run until cancelled: open, read, and reopen with backoff whenever the port goes away.
    pub async fn run(mut self, out: mpsc::Sender<Inbound>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.config.reopen_min, self.config.reopen_max);
        let mut failing_since: Option<Instant> = None;
        loop {
            match self.open() {
                Ok(stream) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(port = %self.name, after = ?since.elapsed(), "serial port back");
                    } else {
                        tracing::info!(port = %self.name, baud = self.config.baud_rate, "serial port open");
                    }
                    backoff.reset();
                    self.metrics.serial_port_opened();
                    let closed = self.read(stream, &out, &cancel).await;
                    self.metrics.serial_port_closed();
                    match closed {
                        Closed::Cancelled | Closed::Downstream => break,
                        Closed::Lost(why) => {
                            tracing::warn!(port = %self.name, reason = %why, devices = self.devices.len(), "serial port lost; its devices are reported offline, reopening with backoff");
                            failing_since = Some(Instant::now());
                            self.router.left_serial(&self.devices);
                            let mut dropped = 0;
                            while self.commands.try_recv().is_ok() {
                                dropped += 1;
                            }
                            if dropped > 0 {
                                tracing::warn!(port = %self.name, dropped, "actions queued for the closed port are dropped; they time out and are told so");
                            }
                            if !self.report_offline(&out).await {
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    if failing_since.is_none() {
                        tracing::warn!(port = %self.name, error = %e, "cannot open serial port; retrying with backoff");
                        failing_since = Some(Instant::now());
                    } else {
                        tracing::debug!(port = %self.name, error = %e, "serial port still unavailable");
                    }
                }
            }
            let delay = backoff.jittered();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        tracing::debug!(port = %self.name, "serial source stopped");
    }

    async fn read(
        &mut self,
        stream: tokio_serial::SerialStream,
        out: &mpsc::Sender<Inbound>,
        cancel: &CancellationToken,
    ) -> Closed {
        let mut decoder = self.decoder();
        let format = self.format();
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut buf = vec![0u8; 4096];
        let mut frames = Vec::new();
        loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => return Closed::Cancelled,
                Some(command) = self.commands.recv() => {
                    let bytes = frame::encode_action(&format, &command.device, &command.message);
                    if bytes.len() > self.config.max_frame_bytes {
                        // The device reads lines of at most that many bytes, as edgehook does:
                        // the action is not written, and times out (told so upstream).
                        tracing::warn!(port = %self.name, device_id = %command.device, bytes = bytes.len(), max_frame_bytes = self.config.max_frame_bytes, "an action's frame is longer than max_frame_bytes; not written (it times out)");
                        continue;
                    }
                    let write = async {
                        writer.write_all(&bytes).await?;
                        writer.flush().await
                    };
                    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                        Ok(Ok(())) => {
                            tracing::debug!(port = %self.name, device_id = %command.device, "action written");
                            continue;
                        }
                        Ok(Err(e)) => return Closed::Lost(format!("writing an action: {e}")),
                        Err(_) => return Closed::Lost("writing an action timed out".into()),
                    }
                }
                read = reader.read(&mut buf) => match read {
                    Ok(0) => return Closed::Lost("end of file".into()),
                    Ok(n) => n,
                    Err(e) => return Closed::Lost(e.to_string()),
                },
            };
            decoder.push(&buf[..n], &mut frames);
            for decoded in frames.drain(..) {
                let frame = match decoded {
                    Ok(frame) => frame,
                    Err(e) => {
                        self.metrics.serial_frame_error(e.kind());
                        if let Some(suppressed) =
                            self.faults.admit(e.kind(), &self.name, Instant::now())
                        {
                            tracing::warn!(port = %self.name, error = %e, suppressed, "skipping serial frame");
                        }
                        continue;
                    }
                };
                self.metrics.message_received();
                if self.devices.len() < MAX_DEVICES_PER_PORT
                    || self.devices.contains(&frame.device_id)
                {
                    self.devices.insert(frame.device_id.clone());
                    self.router
                        .heard_on_serial(&frame.device_id, &self.commands_tx);
                }
                let inbound = Inbound {
                    device_id: frame.device_id,
                    body: frame.body,
                    ack: None,
                    retained: false,
                };
                tokio::select! {
                    _ = cancel.cancelled() => return Closed::Cancelled,
                    sent = out.send(inbound) => if sent.is_err() { return Closed::Downstream },
                }
            }
        }
    }

    /// Offline reports for every device heard on this port. False if the device stage is gone.
    async fn report_offline(&self, out: &mpsc::Sender<Inbound>) -> bool {
        for device in &self.devices {
            let report = Inbound {
                device_id: device.clone(),
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

/// Open the serial port at `path` with these line settings (also the Modbus RTU source's).
pub fn open_port(
    path: &std::path::Path,
    baud_rate: u32,
    data_bits: u8,
    parity: Parity,
    stop_bits: u8,
) -> tokio_serial::Result<tokio_serial::SerialStream> {
    tokio_serial::new(path.to_string_lossy(), baud_rate)
        .data_bits(match data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(match stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        })
        .open_native_async()
}
