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

mod decoder;
#[cfg(test)]
mod tests;
mod topic;

pub use decoder::Decoder;
pub use topic::TopicPattern;

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
