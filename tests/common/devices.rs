//! Simulated devices (`firmware-sim`) and plain MQTT publishers.

use super::*;

/// A simulated device connected to the broker on `port` (seed 7).
pub async fn device(
    port: u16,
    id: &str,
    class: firmware_sim::DeviceClass,
) -> firmware_sim::SimDevice {
    let firmware = firmware_sim::Firmware::new(id, class, 7);
    firmware_sim::SimDevice::connect("127.0.0.1", port, firmware, firmware_sim::Topics::default())
        .await
        .unwrap()
}

/// Publish `n` readings, wait for the broker's acks, and return the payloads of those that
/// changed a tracked field.
pub async fn publish(dev: &mut firmware_sim::SimDevice, n: usize, change_ratio: f64) -> Vec<Value> {
    let mut changes = Vec::new();
    for _ in 0..n {
        let (payload, changed) = dev.publish_next(change_ratio).await.unwrap();
        if changed {
            changes.push(payload);
        }
    }
    dev.flushed().await.unwrap();
    changes
}

/// Occupancy sensors `<prefix>-<i>` each publishing a change `pause` apart, until `each`
/// readings are out or `stop` turns true. Returns every (device, seq) the broker acknowledged.
pub fn publishers(
    port: u16,
    prefix: &'static str,
    devices: usize,
    each: Option<usize>,
    pause: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::collections::BTreeSet<(String, u64)>> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..devices {
            let stop = stop.clone();
            tasks.spawn(async move {
                let id = format!("{prefix}-{i}");
                let mut dev = device(port, &id, firmware_sim::DeviceClass::OccupancySensor).await;
                let mut keys = Vec::new();
                while each.is_none_or(|n| keys.len() < n) && !*stop.borrow() {
                    let (payload, changed) = dev.publish_next(1.0).await.unwrap();
                    assert!(changed);
                    keys.push((id.clone(), payload["seq"].as_u64().unwrap()));
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                tokio::time::timeout(Duration::from_secs(60), dev.flushed())
                    .await
                    .expect("the broker acknowledges every publish")
                    .unwrap();
                keys
            });
        }
        let mut all = std::collections::BTreeSet::new();
        while let Some(keys) = tasks.join_next().await {
            all.extend(keys.unwrap());
        }
        all
    })
}

/// The key that identifies one published reading in the events: (device id, seq).
pub fn reading_key(event: &Value) -> (String, u64) {
    (
        event["data"]["device_id"].as_str().unwrap().to_string(),
        event["data"]["fields"]["seq"].as_u64().unwrap(),
    )
}

/// Publish each `(topic, payload)` at QoS 1, not retained, from a plain client with no birth,
/// last-will or retained message of its own; returns once the broker acknowledged them all.
pub async fn publish_plain(port: u16, client_id: &str, messages: &[(&str, &str)]) {
    let messages: Vec<(String, Vec<u8>)> = messages
        .iter()
        .map(|(t, p)| (t.to_string(), p.as_bytes().to_vec()))
        .collect();
    publish_bytes(port, client_id, &messages).await;
}

/// [`publish_plain`] with payloads of any bytes (not UTF-8, not JSON).
pub async fn publish_bytes(port: u16, client_id: &str, messages: &[(String, Vec<u8>)]) {
    publish_with(port, client_id, messages, false).await
}

/// [`publish_plain`], each message retained by the broker (as Zigbee2MQTT's availability).
pub async fn publish_retained(port: u16, client_id: &str, messages: &[(&str, &str)]) {
    let messages: Vec<(String, Vec<u8>)> = messages
        .iter()
        .map(|(t, p)| (t.to_string(), p.as_bytes().to_vec()))
        .collect();
    publish_with(port, client_id, &messages, true).await
}

async fn publish_with(port: u16, client_id: &str, messages: &[(String, Vec<u8>)], retain: bool) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_inflight(100)
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (acked_tx, mut acked) = tokio::sync::watch::channel(0usize);
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked_tx.send_modify(|n| *n += 1),
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let want = messages.len();
    let run = async {
        for (topic, payload) in messages {
            client
                .publish(topic.as_str(), QoS::AtLeastOnce, retain, payload.clone())
                .await
                .unwrap();
        }
        acked
            .wait_for(|n| *n >= want)
            .await
            .expect("the publisher's connection stays up");
        client.disconnect().await.unwrap();
        poller.await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the broker acknowledges every publish");
}
