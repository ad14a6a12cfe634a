//! MQTT source (rumqttc): subscribe to the configured topic patterns at QoS 1, decode each
//! message, and pass it to the device stage with a deferred PUBACK.
//!
//! Acknowledgement is manual: the PUBACK for a message is sent only by the outbox writer, after
//! the events the message produced are flushed to disk. The session is persistent (clean session
//! off, stable client id), so a message that was not acknowledged — because edgehook crashed, was
//! killed, or lost the connection — is redelivered by the broker.
//!
//! Acks carry the connection *generation* they were received on and are dropped if the
//! connection has been re-established since: after a reconnect the broker redelivers every
//! unacknowledged message with its original packet id, and an ack from the old connection could
//! otherwise acknowledge a different message that reused the id. rumqttc itself drops acks still
//! queued when a connection breaks.
//!
//! A message the broker redelivers after a lost connection, which edgehook had already applied
//! (its acknowledgement went with the connection), is recognised and acknowledged without being
//! applied twice (`source::redelivery`).
//!
//! Undecodable messages (not JSON, not an object, over `max_payload_bytes`, a bad status, a bad
//! device id) are counted, logged at most once a minute per topic and kind, and acknowledged:
//! redelivering them would not make them better.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeFilter, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::acks::{AckQueue, Fed};
use super::backoff::Backoff;
use super::config::{MqttConfig, PayloadKind};
use super::metrics::SourceMetrics as Metrics;
use super::redelivery::{Arrival, Redeliveries};
use super::{
    check_device_id, decode_action_result, decode_fields, decode_status, Ack, DecodeError, Inbound,
    InboundBody,
};
use crate::fault_log::FaultLog;

/// The largest packet the client will read once, to acknowledge and skip a message over
/// `mqtt.max_packet_bytes` that the broker keeps redelivering (see [`MqttSource::run`]).
const SKIP_CEILING: usize = 16 * 1024 * 1024;

/// How long a stop waits for the writer's last commit and the acknowledgements of what it
/// made durable (within systemd's `TimeoutStopSec`, 30 s in the unit).
const DRAIN: Duration = Duration::from_secs(10);
/// Capacity of rumqttc's request channel: acknowledgements (at most `acks::IN_CHANNEL` at a
/// time), actions and subscriptions. It grows only as it fills.
const REQUEST_CHANNEL: usize = 16 * 1024;

/// One segment of a topic pattern.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    /// `{device}`: matches one level and captures it as the device id.
    Device,
    /// `{device...}`: matches one or more levels (a Zigbee2MQTT friendly name may hold `/`)
    /// and captures them, `/` included, as the device id.
    DeviceLevels,
    /// `+`
    Any,
    /// `#` (last segment only)
    Rest,
}

/// A subscription topic with a `{device}` capture, e.g. `sensors/{device}/reading`, or
/// `{device...}` for a device id of several levels, e.g. `zigbee2mqtt/{device...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPattern {
    segments: Vec<Segment>,
}

impl TopicPattern {
    /// A subscription's topic: exactly one `{device}` or `{device...}` level.
    pub fn parse(pattern: &str) -> Result<TopicPattern, String> {
        let p = Self::parse_filter(pattern)?;
        match p.segments.iter().filter(|s| s.is_device()).count() {
            1 => Ok(p),
            0 => Err(format!(
                "`{pattern}` has no `{{device}}` level to take the device id from"
            )),
            _ => Err(format!("`{pattern}` has more than one `{{device}}` level")),
        }
    }

    /// A pattern that may have no device level (an `exclude` entry).
    pub fn parse_filter(pattern: &str) -> Result<TopicPattern, String> {
        if pattern.is_empty() {
            return Err("topic pattern is empty".into());
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "{device}" => Segment::Device,
                "{device...}" => Segment::DeviceLevels,
                "+" => Segment::Any,
                "#" if i == parts.len() - 1 => Segment::Rest,
                "#" => return Err(format!("`{pattern}`: `#` is only allowed as the last level")),
                p if p.contains(['+', '#', '{', '}']) => {
                    return Err(format!(
                        "`{pattern}`: level `{p}` mixes wildcards or braces with text; use `{{device}}`, `{{device...}}`, `+` or `#` as a whole level"
                    ))
                }
                p => Segment::Literal(p.to_string()),
            });
        }
        if segments.contains(&Segment::DeviceLevels) && segments.contains(&Segment::Rest) {
            return Err(format!(
                "`{pattern}`: `{{device...}}` takes every level it can; it cannot be used with `#`"
            ));
        }
        if segments.iter().filter(|s| s.is_device()).count() > 1 {
            return Err(format!("`{pattern}` has more than one `{{device}}` level"));
        }
        Ok(TopicPattern { segments })
    }

    /// The MQTT subscription filter (`{device}` becomes `+`; `{device...}` and what follows
    /// it become `#`, and the pattern itself picks the topics that match).
    pub fn filter(&self) -> String {
        let mut levels = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            levels.push(match s {
                Segment::Literal(l) => l.as_str(),
                Segment::Device | Segment::Any => "+",
                Segment::Rest | Segment::DeviceLevels => "#",
            });
            if *s == Segment::DeviceLevels {
                break;
            }
        }
        levels.join("/")
    }

    /// Whether `topic` matches, and the device id it captures (`Some("")` for a pattern
    /// without a device level).
    pub fn capture<'t>(&self, topic: &'t str) -> Option<&'t str> {
        if let Some(d) = self
            .segments
            .iter()
            .position(|s| *s == Segment::DeviceLevels)
        {
            return self.capture_levels(topic, d);
        }
        let mut device = Some("");
        let mut levels = topic.split('/');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return device,
                _ => {
                    let level = levels.next()?;
                    match seg {
                        Segment::Literal(l) if l != level => return None,
                        Segment::Device => device = Some(level),
                        _ => {}
                    }
                }
            }
        }
        if levels.next().is_some() {
            return None;
        }
        device
    }

    /// `capture` for a pattern whose segment `d` is `{device...}`: the levels before it and
    /// after it match one each, and the device is every level between (at least one).
    fn capture_levels<'t>(&self, topic: &'t str, d: usize) -> Option<&'t str> {
        let (before, after) = (&self.segments[..d], &self.segments[d + 1..]);
        let levels: Vec<&str> = topic.split('/').collect();
        if levels.len() < before.len() + after.len() + 1 {
            return None;
        }
        let tail = levels.len() - after.len();
        let fits = |seg: &Segment, level: &str| match seg {
            Segment::Literal(l) => l == level,
            _ => true,
        };
        let matched = before.iter().zip(&levels[..d]).all(|(s, l)| fits(s, l))
            && after.iter().zip(&levels[tail..]).all(|(s, l)| fits(s, l));
        if !matched {
            return None;
        }
        // The device's levels, as one slice of `topic`.
        let start: usize = levels[..d].iter().map(|l| l.len() + 1).sum();
        let len = levels[d..tail].iter().map(|l| l.len() + 1).sum::<usize>() - 1;
        Some(&topic[start..start + len])
    }
}

impl Segment {
    fn is_device(&self) -> bool {
        matches!(self, Segment::Device | Segment::DeviceLevels)
    }
}

/// A subscription, compiled.
struct Compiled {
    pattern: TopicPattern,
    exclude: Vec<TopicPattern>,
    kind: PayloadKind,
    metadata: Arc<[String]>,
    /// JSON pointer to the fields (empty: the payload), and whether to flatten them.
    fields: String,
    flatten: bool,
    /// The subscription's jq mapping, applied to the payload first.
    jq: Option<crate::jq::Filter>,
    /// A JSON pointer to the device id in the payload (as received).
    device: Option<String>,
}

/// Topic patterns and payload rules: turns (topic, payload) into a device message.
pub struct Decoder {
    routes: Vec<Compiled>,
    max_payload: usize,
}

impl Decoder {
    pub fn new(config: &MqttConfig) -> Result<Decoder, String> {
        let routes = config
            .all_subscriptions()
            .into_iter()
            .map(|s| {
                Ok(Compiled {
                    pattern: if s.device.is_empty() {
                        TopicPattern::parse(&s.topic)?
                    } else {
                        TopicPattern::parse_filter(&s.topic)?
                    },
                    device: Some(s.device.clone()).filter(|d| !d.is_empty()),
                    exclude: s
                        .exclude
                        .iter()
                        .map(|e| TopicPattern::parse_filter(e))
                        .collect::<Result<_, String>>()?,
                    kind: s.kind,
                    metadata: s.metadata_fields.into(),
                    fields: s.fields,
                    flatten: s.flatten,
                    jq: match s.jq.as_str() {
                        "" => None,
                        code => Some(
                            crate::jq::Filter::compile(code, crate::jq::Budget::MAPPING)
                                .map_err(|e| format!("the jq filter {e}"))?,
                        ),
                    },
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Decoder {
            routes,
            max_payload: config.max_payload_bytes,
        })
    }

    /// The MQTT filters to subscribe to, each once.
    pub fn filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = Vec::new();
        for f in self.routes.iter().map(|r| r.pattern.filter()) {
            if !filters.contains(&f) {
                filters.push(f);
            }
        }
        filters
    }

    /// Decode one message. `Ok(None)` means no subscription takes the topic (none matches, or
    /// the one that matches excludes it).
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<Option<(String, InboundBody)>, DecodeError> {
        let Some((route, device)) = self
            .routes
            .iter()
            .find_map(|r| r.pattern.capture(topic).map(|d| (r, d)))
        else {
            return Ok(None);
        };
        if route.exclude.iter().any(|e| e.capture(topic).is_some()) {
            return Ok(None);
        }
        let named;
        let device = match &route.device {
            None => device,
            Some(pointer) => {
                named = device_in(payload, self.max_payload, pointer)?;
                named.as_str()
            }
        };
        check_device_id(device)?;
        let mapped;
        let payload = match &route.jq {
            None => payload,
            Some(filter) => {
                if payload.len() > self.max_payload {
                    return Err(DecodeError::Oversize {
                        size: payload.len(),
                        limit: self.max_payload,
                    });
                }
                match filter.run(payload) {
                    Ok(Some(out)) => {
                        mapped = out;
                        mapped.as_slice()
                    }
                    // The mapping says this is no device message.
                    Ok(None) => return Ok(None),
                    Err(crate::jq::RunError::Input(e)) => return Err(DecodeError::NotJson(e)),
                    Err(e) => return Err(DecodeError::Mapping(e.to_string())),
                }
            }
        };
        let body = match route.kind {
            PayloadKind::Reading => {
                match decode_fields(payload, self.max_payload, &route.fields, route.flatten) {
                    Ok(fields) if !fields.is_empty() => InboundBody::Reading {
                        fields,
                        metadata: route.metadata.clone(),
                    },
                    // The device's message without fields (a LoRaWAN uplink without a decoded
                    // payload, a notification with nothing to read): still a sign of life.
                    Ok(_) | Err(DecodeError::NoFields(_)) => InboundBody::Status { online: true },
                    Err(e) => return Err(e),
                }
            }
            PayloadKind::Status => InboundBody::Status {
                online: decode_status(payload, self.max_payload)?,
            },
            PayloadKind::Online => InboundBody::Status { online: true },
            PayloadKind::ActionResult => decode_action_result(payload, self.max_payload)?,
        };
        Ok(Some((device.to_string(), body)))
    }
}

/// The device id at JSON pointer `pointer` in `payload` (a string, or a number as written).
fn device_in(payload: &[u8], limit: usize, pointer: &str) -> Result<String, DecodeError> {
    let value = super::parse_json(payload, limit)?;
    match value.pointer(pointer) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        _ => Err(DecodeError::NoDevice(pointer.to_string())),
    }
}

/// The MQTT source task's state.
pub struct MqttSource {
    /// Messages awaiting their acknowledgement, to recognise their redeliveries.
    redeliveries: Arc<Redeliveries>,
    options: MqttOptions,
    /// `mqtt.max_packet_bytes`.
    max_packet: usize,
    decoder: Decoder,
    reconnect_min: Duration,
    reconnect_max: Duration,
    metrics: Arc<Metrics>,
    faults: FaultLog,
    host: String,
}

impl MqttSource {
    /// Build the client options (`client_id`: see `Config::mqtt_client_id`); fails on
    /// unreadable TLS files, before anything connects.
    pub fn new(
        m: &MqttConfig,
        client_id: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<MqttSource> {
        let mut options = MqttOptions::new(client_id, m.host.clone(), m.port);
        options
            .set_keep_alive(m.keep_alive)
            .set_clean_session(!m.persistent_session)
            .set_manual_acks(true)
            .set_max_packet_size(m.max_packet_bytes, 64 * 1024)
            .set_request_channel_capacity(REQUEST_CHANNEL);
        if !m.username.is_empty() {
            options.set_credentials(m.username.clone(), m.password.expose());
        }
        if m.tls.enabled {
            let client = m
                .tls
                .client_cert
                .as_deref()
                .zip(m.tls.client_key.as_deref());
            let tls = crate::tls::client_config_with(m.tls.ca_file.as_deref(), client)?;
            options.set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
            ));
        }
        Ok(MqttSource {
            redeliveries: Arc::new(Redeliveries::default()),
            options,
            max_packet: m.max_packet_bytes,
            decoder: Decoder::new(m).map_err(anyhow::Error::msg)?,
            reconnect_min: m.reconnect_min,
            reconnect_max: m.reconnect_max,
            metrics,
            faults: FaultLog::new(Duration::from_secs(60)),
            host: format!("{}:{}", m.host, m.port),
        })
    }

    /// The fingerprints of the messages applied in the last batches before this start
    /// (`Outbox::applied_before`): the broker's first redeliveries that match are recognised.
    pub fn after_restart(self, applied: Vec<u64>) -> MqttSource {
        self.redeliveries.applied_before_restart(applied);
        self
    }

    /// Run until cancelled. Reconnects with exponential backoff and resubscribes on every
    /// connection (a restarted broker may have lost our session).
    /// Run until cancelled: messages in to `out`, and what `outgoing` brings (actions,
    /// already durable) published at QoS 1.
    pub async fn run(
        mut self,
        out: mpsc::Sender<Inbound>,
        mut outgoing: mpsc::Receiver<super::Outgoing>,
        cancel: CancellationToken,
    ) {
        let (client, mut eventloop) = AsyncClient::new(self.options.clone(), REQUEST_CHANNEL);
        // Small packets both ways (acknowledgements, actions, their answers): without
        // TCP_NODELAY, Nagle's algorithm holds one back until the broker's delayed ACK, about
        // 40 ms, on every round trip.
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let generation = Arc::new(AtomicU64::new(0));
        let redeliveries = self.redeliveries.clone();
        let acks = Arc::new(AckQueue::default());
        let mut fed = Fed::default();
        let try_ack = |qos, pkid| try_ack(&client, qos, pkid);
        // The generation of the last connection that came up (failed attempts count too).
        let mut previous_connection = 0;
        let filters: Vec<SubscribeFilter> = self
            .decoder
            .filters()
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
            .collect();
        let mut backoff = Backoff::new(self.reconnect_min, self.reconnect_max);
        let mut failures = 0u32;
        loop {
            acks.feed(generation.load(Ordering::SeqCst), &mut fed, try_ack);
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = acks.added(), if fed.has_room() => continue,
                Some(message) = outgoing.recv() => {
                    publish_action(&client, &message);
                    continue;
                }
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    let now = generation.fetch_add(1, Ordering::SeqCst) + 1;
                    redeliveries.forget_before(previous_connection);
                    previous_connection = now;
                    self.metrics.set_mqtt_connected(true);
                    tracing::info!(broker = %self.host, session_present = ack.session_present, "connected to MQTT broker");
                    backoff.reset();
                    failures = 0;
                    if let Err(e) = client.try_subscribe_many(filters.clone()) {
                        tracing::error!(error = %e, "cannot queue subscriptions");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    for (code, filter) in ack.return_codes.iter().zip(&filters) {
                        if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                            tracing::error!(topic = %filter.path, "broker refused the subscription (check its ACL)");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.metrics.message_received();
                    let fingerprint = Redeliveries::fingerprint(&publish.topic, &publish.payload);
                    if publish.qos != QoS::AtMostOnce {
                        let now = generation.load(Ordering::SeqCst);
                        let arrival =
                            redeliveries.arrived(fingerprint, publish.pkid, now, publish.dup);
                        tracing::trace!(topic = %publish.topic, pkid = publish.pkid, dup = publish.dup, connection = now, ?arrival, "message arrived");
                        if let Arrival::Redelivered { ack_now } = arrival {
                            self.metrics.mqtt_redelivery_recognised();
                            if ack_now {
                                acks.push(now, publish.qos, publish.pkid);
                            }
                            continue;
                        }
                    }
                    if publish.payload.len() > self.max_packet {
                        // The one read at a raised limit: later connections are back to normal.
                        eventloop
                            .mqtt_options
                            .set_max_packet_size(self.max_packet, 64 * 1024);
                    }
                    let ack = make_ack(&acks, &generation, &redeliveries, fingerprint, &publish);
                    if let Some(inbound) = self.decode(&publish, ack) {
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            sent = out.send(inbound) => if sent.is_err() { break },
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))) => fed.sent(),
                Ok(_) => {}
                Err(e) => {
                    fed.dropped();
                    // Acks of messages from the lost connection must not go out on the next
                    // one: the broker redelivers those, and by then their packet ids may name
                    // other messages (rumqttc drops only the acks queued before the error).
                    generation.fetch_add(1, Ordering::SeqCst);
                    if let Some(size) = oversize(&e) {
                        self.metrics.set_mqtt_connected(false);
                        if size <= SKIP_CEILING {
                            if let Some(suppressed) =
                                self.faults.admit("oversize", "(packet)", Instant::now())
                            {
                                tracing::warn!(broker = %self.host, bytes = size, max_packet_bytes = self.max_packet, suppressed, "a message larger than mqtt.max_packet_bytes is waiting at the broker; reconnecting once with a limit that fits it, to acknowledge and skip it. Set the broker's max_packet_size to at most mqtt.max_packet_bytes so that it refuses such messages when they are published");
                            }
                            eventloop
                                .mqtt_options
                                .set_max_packet_size(size + 8, 64 * 1024);
                            continue; // reconnect at once, no backoff: nothing is wrong with the broker
                        }
                        self.metrics.decode_error("oversize");
                        tracing::error!(broker = %self.host, bytes = size, ceiling = SKIP_CEILING, "a message too large to read even once is waiting at the broker, and it blocks every message behind it on this session. Remove it at the broker (or raise nothing: edgehook will not read it), and set the broker's max_packet_size to at most mqtt.max_packet_bytes");
                    }
                    if self.metrics.mqtt_connected() || failures == 0 {
                        tracing::warn!(broker = %self.host, error = %e, "MQTT connection lost or refused; reconnecting with backoff");
                    } else {
                        tracing::debug!(broker = %self.host, error = %e, failures, "MQTT reconnect failed");
                    }
                    self.metrics.set_mqtt_connected(false);
                    failures += 1;
                    let delay = backoff.jittered();
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Nothing more goes to the device stage: it ends when every source has, and the writer
        // then commits what it was given. Everything it makes durable is acknowledged before
        // leaving — the broker would redeliver it, and the next start must then recognise the
        // copy to not apply it twice (`source::redelivery`) — so the connection
        // stays until the writer is done (it holds the last sender of `outgoing`), then until
        // the acknowledgements are out; at most `DRAIN` in all, and only while connected.
        drop(out);
        if self.metrics.mqtt_connected() {
            let now = generation.load(Ordering::SeqCst);
            let mut writer_done = false;
            let _ = tokio::time::timeout(DRAIN, async {
                loop {
                    acks.feed(now, &mut fed, try_ack);
                    if writer_done && acks.is_empty() && fed.is_empty() {
                        break;
                    }
                    tokio::select! {
                        message = outgoing.recv(), if !writer_done => match message {
                            Some(message) => publish_action(&client, &message),
                            None => writer_done = true,
                        },
                        _ = acks.added(), if fed.has_room() => {}
                        event = eventloop.poll() => match event {
                            Ok(Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))) => {
                                fed.sent()
                            }
                            Ok(_) => {} // a message arriving now is redelivered next time
                            Err(_) => break,
                        },
                    }
                }
            })
            .await;
        }
        self.metrics.set_mqtt_connected(false);
        // A clean DISCONNECT; unacknowledged messages stay with the broker for next time.
        if client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
        tracing::debug!("MQTT source stopped");
    }

    /// Decode a publish; on failure count it, log it (rate-limited) and acknowledge it.
    fn decode(&mut self, publish: &Publish, ack: Option<Ack>) -> Option<Inbound> {
        let topic = publish.topic.as_str();
        match self.decoder.decode(topic, &publish.payload) {
            Ok(Some((device_id, body))) => Some(Inbound {
                device_id,
                body,
                ack,
                retained: publish.retain,
            }),
            Ok(None) => {
                tracing::debug!(%topic, "message on a topic no subscription matches; skipped");
                if let Some(ack) = ack {
                    ack.send();
                }
                None
            }
            Err(e) => {
                self.metrics.decode_error(e.kind());
                if let Some(suppressed) = self.faults.admit(e.kind(), topic, Instant::now()) {
                    tracing::warn!(%topic, error = %e, bytes = publish.payload.len(), suppressed, "skipping undecodable message");
                }
                if let Some(ack) = ack {
                    ack.send();
                }
                None
            }
        }
    }
}

/// The size of the packet the client refused as over its limit, if that is what `e` is.
fn oversize(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}

/// Put the PUBACK of packet `pkid` in rumqttc's request channel; false when it is full.
fn try_ack(client: &AsyncClient, qos: QoS, pkid: u16) -> bool {
    // The ack needs only the packet id and QoS; no payload is kept for it.
    let mut stub = Publish::new("", qos, Vec::new());
    stub.pkid = pkid;
    client.try_ack(&stub).is_ok()
}

/// Queue an action for the broker: sent (again, after a reconnect) until acknowledged.
fn publish_action(client: &AsyncClient, message: &super::Outgoing) {
    if let Err(e) = client.try_publish(
        message.topic.clone(),
        QoS::AtLeastOnce,
        false,
        message.payload(),
    ) {
        tracing::warn!(error = %e, "cannot queue an action for the broker; it times out and is told so");
    }
}

/// The deferred PUBACK for `publish` (none for QoS 0), fired once what it changed is durable.
/// On the connection it came on, it acknowledges the message itself; if that connection is
/// gone, it acknowledges the copies the broker redelivered since (see `source::redelivery`).
fn make_ack(
    acks: &Arc<AckQueue>,
    generation: &Arc<AtomicU64>,
    redeliveries: &Arc<Redeliveries>,
    fingerprint: u64,
    publish: &Publish,
) -> Option<Ack> {
    if publish.qos == QoS::AtMostOnce {
        return None;
    }
    let acks = acks.clone();
    let generation = generation.clone();
    let redeliveries = redeliveries.clone();
    let received_on = generation.load(Ordering::SeqCst);
    let (qos, pkid) = (publish.qos, publish.pkid);
    Some(Ack::with_fingerprint(fingerprint, move || {
        let now = generation.load(Ordering::SeqCst);
        let (own, copies) = redeliveries.durable(fingerprint, received_on, now);
        if own {
            acks.push(now, qos, pkid);
        }
        for copy in copies {
            acks.push(now, qos, copy);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn patterns_parse_filter_and_capture() {
        let p = TopicPattern::parse("sensors/{device}/reading").unwrap();
        assert_eq!(p.filter(), "sensors/+/reading");
        assert_eq!(p.capture("sensors/occ-1/reading"), Some("occ-1"));
        assert_eq!(p.capture("sensors/occ-1/other"), None);
        assert_eq!(p.capture("sensors/occ-1/reading/extra"), None);
        assert_eq!(p.capture("sensors/occ-1"), None);

        let p = TopicPattern::parse("+/rooms/{device}/#").unwrap();
        assert_eq!(p.filter(), "+/rooms/+/#");
        assert_eq!(p.capture("site-a/rooms/r1/display/status"), Some("r1"));
        assert_eq!(p.capture("site-a/rooms/r1"), Some("r1"));
        assert_eq!(p.capture("site-a/desks/r1/x"), None);
    }

    /// `{device...}`: a device id of one or more levels (Zigbee2MQTT friendly names may hold
    /// `/`), between what comes before and after it.
    #[test]
    fn a_device_of_several_levels_as_a_table() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("z/{device...}", "z/lamp", Some("lamp")),
            (
                "z/{device...}",
                "z/Living room/motion",
                Some("Living room/motion"),
            ),
            ("z/{device...}", "z", None),
            ("z/{device...}", "y/lamp", None),
            (
                "z/{device...}/availability",
                "z/a/b/availability",
                Some("a/b"),
            ),
            ("z/{device...}/availability", "z/availability", None),
            ("z/{device...}/availability", "z/a/b/state", None),
            ("+/{device...}/x", "site/a/b/x", Some("a/b")),
        ];
        for (pattern, topic, want) in cases {
            let p = TopicPattern::parse(pattern).unwrap();
            assert_eq!(p.capture(topic), *want, "{pattern} on {topic}");
        }
        assert_eq!(
            TopicPattern::parse("z/{device...}/availability")
                .unwrap()
                .filter(),
            "z/#"
        );
        assert!(TopicPattern::parse("z/{device...}/#").is_err());
        assert!(TopicPattern::parse("z/{device}/{device...}").is_err());
        let exclude = TopicPattern::parse_filter("z/bridge/#").unwrap();
        assert_eq!(exclude.capture("z/bridge/state"), Some(""));
        assert_eq!(exclude.capture("z/lamp"), None);
    }

    #[test]
    fn a_pointer_and_flattening_pick_the_fields() {
        let payload = br#"{"meta":{"id":1},"object":{"t":21.5,"nested":{"a":1}}}"#;
        let got = decode_fields(payload, 1024, "/object", false).unwrap();
        assert_eq!(
            Value::Object(got),
            serde_json::json!({"t": 21.5, "nested": {"a": 1}})
        );
        let got = decode_fields(payload, 1024, "/object", true).unwrap();
        assert_eq!(
            Value::Object(got),
            serde_json::json!({"t": 21.5, "nested.a": 1})
        );
        assert_eq!(
            decode_fields(payload, 1024, "/missing", false),
            Err(DecodeError::NoFields("/missing".into()))
        );
        assert_eq!(
            decode_fields(br#"{"object": 3}"#, 1024, "/object", false),
            Err(DecodeError::NoFields("/object".into()))
        );
    }

    #[test]
    fn bad_patterns_say_why() {
        for (pattern, needle) in [
            ("sensors/all", "no `{device}`"),
            ("{device}/{device}", "more than one"),
            ("a/#/{device}", "last level"),
            ("a/dev{device}", "as a whole level"),
            ("", "empty"),
        ] {
            let e = TopicPattern::parse(pattern).unwrap_err();
            assert!(e.contains(needle), "{pattern}: {e}");
        }
    }

    /// The decoder of a configuration with these `subscriptions` (TOML inline tables), or the
    /// configuration's error.
    fn decoder(subscriptions: &str) -> Result<Decoder, String> {
        let text = format!(
            "gateway_id = \"gw\"\n[mqtt]\nsubscriptions = [{subscriptions}]\n[webhook]\nurl = \"http://127.0.0.1:1/\"\nsecret = \"x\"\n"
        );
        let config = crate::config::Config::from_toml_str(&text).map_err(|e| e.to_string())?;
        Decoder::new(&config.mqtt)
    }

    /// Issue 20: a jq mapping shapes a payload no pointer can (a device's own JSON): fields
    /// renamed and picked, a status from a nested value, `empty` for what is no device
    /// message, a failure counted as `mapping`; a filter that cannot work is a check-config
    /// error naming the key.
    #[test]
    fn a_jq_mapping_shapes_the_payload_first() {
        let d = decoder(
            r#"{ topic = "v/{device}/data", kind = "reading", jq = 'select(.sensors.t_dc != null) | {presence: (.sensors.pir == 1), temperature: (.sensors.t_dc / 10)}' },
              { topic = "v/{device}/conn", kind = "status", jq = '.link.up' }"#,
        )
        .unwrap();
        let (dev, body) = d
            .decode(
                "v/desk-1/data",
                br#"{"sensors":{"pir":1,"t_dc":215},"rssi":-70}"#,
            )
            .unwrap()
            .unwrap();
        assert_eq!(dev, "desk-1");
        match body {
            InboundBody::Reading { fields, .. } => assert_eq!(
                Value::Object(fields),
                serde_json::json!({"presence": true, "temperature": 21.5})
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            d.decode("v/desk-1/conn", br#"{"link":{"up":false}}"#)
                .unwrap()
                .unwrap()
                .1,
            InboundBody::Status { online: false }
        );
        // `select` gave nothing: no device message, skipped quietly.
        assert!(d
            .decode("v/desk-1/data", br#"{"sensors":{"pir":0}}"#)
            .unwrap()
            .is_none());
        // The filter fails on this payload (a string divided): a mapping error.
        let e = d
            .decode("v/desk-1/data", br#"{"sensors":{"pir":0,"t_dc":"x"}}"#)
            .unwrap_err();
        assert_eq!(e.kind(), "mapping", "{e}");
        assert_eq!(
            d.decode("v/desk-1/data", b"nope").unwrap_err().kind(),
            "not_json"
        );
        for (jq, kind, want) in [
            ("{a: ", "reading", "does not parse"),
            ("now", "reading", "`now`"),
            (".", "online", "reads no payload"),
        ] {
            let sub = format!("{{ topic = \"v/{{device}}/x\", kind = \"{kind}\", jq = '{jq}' }}");
            let e = decoder(&sub).err().expect("refused");
            assert!(
                e.contains("mqtt.subscriptions[0].jq") && e.contains(want),
                "{jq}: {e}"
            );
        }
    }

    /// Issue 20: the device id may be in the payload (`device`, a JSON pointer): then the
    /// topic needs no `{device}` level and the payload's id wins; a payload without one is a
    /// `no_device` decode error.
    #[test]
    fn the_device_id_may_come_from_the_payload() {
        let d = decoder(
            r#"{ topic = "lora/uplinks", kind = "reading", device = "/dev/eui", fields = "/obj" },
              { topic = "lora/{device}/x", kind = "reading", device = "/id" }"#,
        )
        .unwrap();
        let (dev, _) = d
            .decode("lora/uplinks", br#"{"dev":{"eui":"a1b2"},"obj":{"t":1}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(dev, "a1b2");
        let (dev, _) = d
            .decode("lora/topic-id/x", br#"{"id":42,"t":1}"#)
            .unwrap()
            .unwrap();
        assert_eq!(dev, "42", "the payload's id wins; a number as written");
        assert_eq!(
            d.decode("lora/uplinks", br#"{"obj":{"t":1}}"#)
                .unwrap_err()
                .kind(),
            "no_device"
        );
        for (sub, want) in [
            (
                r#"{ topic = "a/b", kind = "reading", device = "dev" }"#,
                "not a JSON pointer",
            ),
            (
                r#"{ topic = "a/b", kind = "reading" }"#,
                "no `{device}` level",
            ),
        ] {
            let e = decoder(sub).err().expect("refused");
            assert!(
                e.contains("mqtt.subscriptions[0]") && e.contains(want),
                "{sub}: {e}"
            );
        }
    }

    #[test]
    fn decoder_routes_by_topic_and_kind() {
        let config = crate::config::Config::from_toml_str(
            r#"
            gateway_id = "gw"
            [mqtt]
            max_payload_bytes = 64
            subscriptions = [
              { topic = "s/{device}/reading", kind = "reading", metadata_fields = ["seq"] },
              { topic = "s/{device}/status", kind = "status" },
            ]
            [webhook]
            url = "http://127.0.0.1:1/"
            secret = "x"
            "#,
        )
        .unwrap();
        let d = Decoder::new(&config.mqtt).unwrap();
        let (dev, body) = d
            .decode("s/a1/reading", br#"{"t":1,"seq":2}"#)
            .unwrap()
            .unwrap();
        assert_eq!(dev, "a1");
        match body {
            InboundBody::Reading { fields, metadata } => {
                assert_eq!(fields.len(), 2);
                assert_eq!(&*metadata, ["seq".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            d.decode("s/a1/status", b"offline").unwrap().unwrap().1,
            InboundBody::Status { online: false }
        );
        assert!(d.decode("x/a1/reading", b"{}").unwrap().is_none());
        assert_eq!(
            d.decode("s/a1/reading", b"nope").unwrap_err().kind(),
            "not_json"
        );
        assert_eq!(
            d.decode("s/a1/reading", &[b'1'; 65]).unwrap_err().kind(),
            "oversize"
        );
    }
}
