//! edgehook: a gateway daemon that turns device messages into durable, signed webhooks.
//!
//! # Layout
//! The daemon is a pipeline. Each stage is one task that owns its state and talks to the next
//! over a bounded channel, so a slow stage pushes back on the one before it — ultimately on the
//! MQTT broker, which stops sending once its in-flight window is full.
//!
//! ```text
//!  source::mqtt ───┐                                                   ┌▶ deliver ──HTTPS──▶ receiver
//!  (QoS 1, PUBACK  ├─Inbound─▶ device ──────Commit──▶ outbox ═══sled═══╡  (one per endpoint:
//!   deferred)      │          (registry, health,      (batch, 1 write,  │   lanes per device,
//!  source::serial ─┤           change detection,       a queue per      └▶  sign, retry,
//!  (frames, port   │           workspaces, timers;     endpoint, fsync,     remove on 2xx)
//!   reopen)        │           event::Envelope)        then acks)
//!  source::modbus ─┘
//!  (polled registers)
//! ```
//!
//! - [`source`]: transports. [`source::mqtt`] subscribes at QoS 1 with manual acks;
//!   [`source::serial`] reads framed lines from serial ports and reopens them when they vanish;
//!   [`source::modbus`] polls devices' registers over Modbus RTU or TCP.
//! - [`device`]: what each device last said, its health and its workspaces; decides which
//!   messages (and which silences, on its own clock) are events.
//! - [`event`]: the event types and the JSON envelope (`id`, `type`, `timestamp`, `gateway`, `data`).
//! - [`outbox`]: the sled store; its module doc states the key layout and durability invariants
//!   (its files: the record formats, the store and its syncs, the writer, dead letters, the
//!   endpoints' facts).
//! - [`deliver`]: per endpoint, a dispatcher over lanes; what an attempt's outcome means is a
//!   pure rule (`deliver::schedule`), the network is behind a seam (`deliver::transport`), and
//!   `Dispatcher::step` is one turn of its loop (the tests drive it on paused time).
//! - [`clock`]: time, and what every stage does when the system clock is unset or steps.
//! - [`metrics`] (the registry and its exposition, by `prometheus-client`; it knows no stage:
//!   each stage's `metrics` module registers and updates its own series), [`fault_log`],
//!   [`atomic_file`]
//!   (rate-limited fault logs), [`secret`], [`sign`] (the signature schemes, for webhooks and
//!   for upstream's commands), [`size`], [`tls`], [`address`] (URLs taken without reaching
//!   the host-name code that panics), [`jq`] (filters, each run in a worker process
//!   held to a budget), [`heap_budget`] (the allocator that holds a worker to its heap),
//!   [`memory`] (glibc's malloc set at start, freed memory given back) and [`c_math`] (`pow`,
//!   so that libm is not mapped): primitives. Every bound on input is listed in
//!   `docs/bounds.md`.
//! - [`upstream`]: commands from upstream (actions, bookings), pure: the Standard Webhooks
//!   gate, the commands, the pull protocol.
//! - [`config`] loads the file and environment and aggregates each stage's own section
//!   (`source::config`, `device::config`, `outbox::config`, `deliver::config`, each with its
//!   checks); [`telemetry`] (logs, systemd, readiness over the stages' metrics, the scrape);
//!   [`control`] (the local listener: `/healthz`, `/metrics`, the `/v1` API, the console, and
//!   the endpoints changed while running); [`daemon`] (the wiring: stages started, reloads,
//!   signals); [`cli`].
//!
//! Layers, lowest first, with no import cycles (`tests/module_graph.rs`): primitives → source →
//! device → upstream → outbox → deliver → config → [`daemon`] (the wiring), telemetry, control, demo → cli.
//!
//! # Where a change goes
//! - A new input source: a module under [`source`] whose task sends [`source::Inbound`], its
//!   configuration section checked in its own `validate`, and one spawn in
//!   `daemon::spawn_sources` (as [`source::modbus`]).
//! - A new wire format for receivers: [`deliver::format`] (the body) and [`sign`] (its
//!   signature), named in `deliver::config`.
//! - A new event type: [`event`] (its name and envelope), made by a rule in [`device`]
//!   (`device::events` builds each one), listed in `docs/events.md`.
//! - A new piece of persisted state: a field of `device::registry::Applied` (what a message
//!   changed), carried by [`device::Commit`] (`Applied::seal`), written by the outbox in
//!   `outbox::write` and read back in `outbox::states`.
//!
//! # Shutdown
//! One `CancellationToken`. The source stops reading and drops its sender; the device stage
//! and the outbox writer drain what is already in their channels, the writer flushes, and delivery
//! lets in-flight requests finish. The MQTT source keeps its connection until the writer is done
//! and acknowledges what it made durable (for at most 10 s); anything not acknowledged to the
//! broker is redelivered on the next start.

pub mod address;
pub mod atomic_file;
pub mod c_math;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod deliver;
#[cfg(feature = "demo")]
pub mod demo;
pub mod device;
pub mod event;
pub mod fault_log;
pub mod heap_budget;
pub mod jq;
pub mod memory;
pub mod metrics;
pub mod outbox;
#[cfg(test)]
pub mod schema;
pub mod secret;
pub mod sign;
pub mod size;
pub mod source;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use daemon::{reload_on_sighup, run, run_with_reloads, shutdown_on_signals};

/// The system allocator, counted against a budget only in a jq worker ([`heap_budget`]).
#[global_allocator]
static HEAP: heap_budget::Budgeted = heap_budget::Budgeted;
