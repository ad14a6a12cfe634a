//! PUBACKs on their way to the broker, held compactly until rumqttc's request channel takes
//! them.
//!
//! An acknowledgement is made by the outbox writer, once what its message changed is durable,
//! and sent by rumqttc's event loop — which takes one request per turn while it reads up to ten
//! messages per turn, so in a burst acknowledgements wait. Queued in rumqttc's channel, each
//! waiting one is a whole `Request` (about 70 bytes, in a queue that grew to a megabyte and
//! never shrinks); here it is a packet id and the connection it belongs to (16 bytes, in a
//! queue given back once empty). The MQTT loop feeds them to the channel between polls of the
//! event loop, at most [`IN_CHANNEL`] at a time, leaving the rest of the channel to actions and
//! subscriptions.
//!
//! The connection matters: after a reconnect the broker redelivers every unacknowledged message
//! with its original packet id, and an acknowledgement meant for the old connection could
//! acknowledge another message that reuses the id. An acknowledgement is fed only on the
//! connection it was made for, and only the MQTT loop feeds — between polls, so never between
//! rumqttc dropping the acknowledgements in its channel at a broken connection and the loop
//! counting the new connection.

use std::collections::VecDeque;
use std::sync::Mutex;

use rumqttc::QoS;
use tokio::sync::Notify;

/// Acknowledgements in rumqttc's request channel at once, at most.
pub(super) const IN_CHANNEL: usize = 256;

/// Once empty, a queue that grew past this many entries gives its memory back.
const KEEP: usize = 1024;

/// One acknowledgement: the connection (its generation) and the packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    generation: u64,
    pkid: u16,
    qos: QoS,
}

/// Acknowledgements waiting for the request channel (see the module docs).
#[derive(Debug, Default)]
pub(super) struct AckQueue {
    waiting: Mutex<VecDeque<Waiting>>,
    added: Notify,
}

/// What the MQTT loop knows of rumqttc's channel: how many acknowledgements it fed that the
/// event loop has not sent yet.
#[derive(Debug, Default)]
pub(super) struct Fed {
    in_channel: usize,
}

impl Fed {
    /// The event loop sent one (`Outgoing::PubAck` / `PubRec`).
    pub(super) fn sent(&mut self) {
        self.in_channel = self.in_channel.saturating_sub(1);
    }

    /// The connection broke: rumqttc dropped every acknowledgement in its channel.
    pub(super) fn dropped(&mut self) {
        self.in_channel = 0;
    }

    /// None fed is waiting to be sent.
    pub(super) fn is_empty(&self) -> bool {
        self.in_channel == 0
    }

    /// The channel takes more acknowledgements now.
    pub(super) fn has_room(&self) -> bool {
        self.in_channel < IN_CHANNEL
    }
}

impl AckQueue {
    /// Queue the acknowledgement of packet `pkid`, made for connection `generation`. Never
    /// waits (the outbox writer calls it).
    pub(super) fn push(&self, generation: u64, qos: QoS, pkid: u16) {
        self.lock().push_back(Waiting {
            generation,
            pkid,
            qos,
        });
        self.added.notify_one();
    }

    /// Until something was queued since the last call (at once if it was already).
    pub(super) async fn added(&self) {
        self.added.notified().await
    }

    /// Move waiting acknowledgements of connection `generation` into rumqttc's channel
    /// (`try_send`: false when it is full) while fewer than [`IN_CHANNEL`] are there; drop
    /// those of older connections (the broker redelivers their messages). Returns how many
    /// were fed.
    pub(super) fn feed(
        &self,
        generation: u64,
        fed: &mut Fed,
        mut try_send: impl FnMut(QoS, u16) -> bool,
    ) -> usize {
        let mut waiting = self.lock();
        let mut n = 0;
        while fed.has_room() {
            let Some(ack) = waiting.pop_front() else {
                break;
            };
            if ack.generation != generation {
                continue;
            }
            if !try_send(ack.qos, ack.pkid) {
                // The channel is full of other requests: try again on the next turn.
                waiting.push_front(ack);
                break;
            }
            fed.in_channel += 1;
            n += 1;
        }
        if waiting.is_empty() && waiting.capacity() > KEEP {
            waiting.shrink_to(KEEP / 4);
        }
        n
    }

    /// Acknowledgements waiting.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rumqttc's channel as the tests see it: what was sent, and room for `room` more.
    struct Channel {
        sent: Vec<u16>,
        room: usize,
    }

    impl Channel {
        fn take(&mut self) -> impl FnMut(QoS, u16) -> bool + '_ {
            |_, pkid| {
                if self.room == 0 {
                    return false;
                }
                self.room -= 1;
                self.sent.push(pkid);
                true
            }
        }
    }

    /// What reaches rumqttc's channel, for which connection, and how many at once.
    #[test]
    fn acknowledgements_reach_the_channel_only_for_their_connection_and_only_so_many() {
        let queue = AckQueue::default();
        let mut fed = Fed::default();
        let mut channel = Channel {
            sent: Vec::new(),
            room: usize::MAX,
        };
        // Connection 1's two, then 2's: feeding on connection 2 drops 1's.
        queue.push(1, QoS::AtLeastOnce, 10);
        queue.push(1, QoS::AtLeastOnce, 11);
        queue.push(2, QoS::AtLeastOnce, 10);
        assert_eq!(queue.feed(2, &mut fed, channel.take()), 1);
        assert_eq!((queue.len(), &channel.sent[..]), (0, &[10][..]));
        fed.sent();
        channel.sent.clear();
        // At most IN_CHANNEL in the channel: the rest wait, in order, until some are sent.
        let n = IN_CHANNEL as u16 + 5;
        for pkid in 0..n {
            queue.push(2, QoS::AtLeastOnce, pkid);
        }
        assert_eq!(queue.feed(2, &mut fed, channel.take()), IN_CHANNEL);
        assert_eq!(queue.len(), 5);
        for _ in 0..3 {
            fed.sent();
        }
        assert_eq!(queue.feed(2, &mut fed, channel.take()), 3);
        assert_eq!(queue.len(), 2);
        // A channel full of other requests: nothing is lost, the rest wait for the next turn.
        fed.dropped();
        channel.room = 1;
        assert_eq!(queue.feed(2, &mut fed, channel.take()), 1);
        assert_eq!(queue.len(), 1);
        channel.room = usize::MAX;
        assert_eq!(queue.feed(2, &mut fed, channel.take()), 1);
        let want: Vec<u16> = (0..n).collect();
        assert_eq!(channel.sent, want, "every one once, in order");
        // Nothing waiting: nothing fed.
        assert_eq!(queue.feed(2, &mut fed, channel.take()), 0);
    }

    /// A queue that grew in a burst gives its memory back once empty.
    #[test]
    fn a_grown_queue_shrinks_once_empty() {
        let queue = AckQueue::default();
        let mut fed = Fed::default();
        for pkid in 0..20_000u32 {
            queue.push(1, QoS::AtLeastOnce, pkid as u16);
        }
        assert!(queue.lock().capacity() >= 20_000);
        let mut sent = 0;
        while !queue.is_empty() {
            sent += queue.feed(1, &mut fed, |_, _| true);
            for _ in 0..IN_CHANNEL {
                fed.sent();
            }
        }
        assert_eq!(sent, 20_000);
        assert!(
            queue.lock().capacity() <= KEEP,
            "{}",
            queue.lock().capacity()
        );
    }
}
