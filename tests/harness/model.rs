//! The reference model: each simulated device, what it published, and what the documented
//! rules say edgehook must report of it.

use super::*;

/// How a device is connected.
pub enum Link {
    Mqtt(Box<SimDevice>),
    /// On the harness's serial port.
    Serial,
    /// It lost power (the broker published its last-will).
    Dead,
}

/// One simulated device and what the model knows of it.
pub struct Model {
    pub id: String,
    pub held: bool,
    /// Of the `quiet` class: a heartbeat of 1 s, lost after 2 s of silence.
    pub quiet: bool,
    pub link: Link,
    pub seq: u64,
    pub presence: bool,
    /// Temperature in tenths of a degree (moves are always even, never exactly the deadband).
    pub tenths: i64,
    /// Every published (seq, presence, tenths), in order.
    pub published: Vec<(u64, bool, i64)>,
    /// Where what edgehook saw may differ from what the device published: the seq published
    /// last when the broker restarted (the device resends what the broker had not
    /// acknowledged yet — QoS 1 from the device is at-least-once too — and edgehook rightly
    /// takes those as readings again, so older values may follow newer ones there).
    pub resent_up_to: Vec<u64>,
    /// Serial frames written around a crash (a second before it until the daemon is back):
    /// the line has no acknowledgements, so these may rightly be lost.
    pub maybe_lost: HashSet<u64>,
    /// When each serial frame was written (seq, when).
    pub written: Vec<(u64, Instant)>,
    /// Silences past its heartbeat the harness made, each checked to be reported lost.
    pub silences: usize,
    /// Whether it published since the last silence counted: a silence of a device already
    /// reported lost and not heard since is no news (seed 3969032782932316030: a quiet device
    /// not among a phase's readings, two silences in a row, one report of loss).
    pub heard: bool,
    /// Bytes of an unchanging field in each MQTT reading (larger events fill a small outbox).
    pub padding: usize,
}

impl Model {
    pub fn new(id: String, held: bool, link: Link, rng: &mut fastrand::Rng) -> Model {
        Model {
            quiet: id.starts_with("quiet-"),
            id,
            held,
            link,
            seq: 0,
            presence: rng.bool(),
            tenths: 200 + 2 * rng.i64(-10..10),
            published: Vec::new(),
            resent_up_to: Vec::new(),
            maybe_lost: HashSet::new(),
            written: Vec::new(),
            silences: 0,
            heard: true, // the setup waits for an event of each device
            padding: 0,
        }
    }

    pub fn alive(&self) -> bool {
        !matches!(self.link, Link::Dead)
    }

    /// Publish the next reading, chosen by `rng`: a change, a move inside the deadband, a
    /// repeat (only metadata moves).
    pub async fn step(&mut self, rng: &mut fastrand::Rng, serial: &mut SerialLink) {
        match rng.u8(..100) {
            0..=29 => self.presence = !self.presence,
            30..=54 => self.tenths += if rng.bool() { 10 } else { -10 },
            55..=79 => self.tenths += if rng.bool() { 2 } else { -2 },
            _ => {}
        }
        self.seq += 1;
        self.heard = true;
        self.published.push((self.seq, self.presence, self.tenths));
        let payload = json!({
            "presence": self.presence,
            "temperature": self.tenths as f64 / 10.0,
            "seq": self.seq,
        });
        match &mut self.link {
            Link::Mqtt(sim) => {
                let mut payload = payload;
                if self.padding > 0 {
                    // A field that never changes, only making the events larger.
                    payload["note"] = "n".repeat(self.padding).into();
                }
                sim.publish_raw(payload.to_string().into_bytes())
                    .await
                    .unwrap()
            }
            Link::Serial => {
                let frame = reading_frame(SerialFraming::Text, &self.id, &payload);
                self.written.push((self.seq, Instant::now()));
                write_noisy(serial, &self.id, frame, rng).await;
            }
            Link::Dead => panic!("{} is dead", self.id),
        }
    }

    /// Wait until the broker has everything it published (serial lines have no acks).
    pub async fn flushed(&mut self) {
        if let Link::Mqtt(sim) = &mut self.link {
            sim.flushed().await.unwrap();
        }
    }
}

/// Write `frame` to the serial line, maybe with noise before it (garbage bytes, a frame with a
/// bad checksum carrying a seq nobody published, an over-long line) or split in two writes.
pub async fn write_noisy(
    serial: &mut SerialLink,
    id: &str,
    frame: Vec<u8>,
    rng: &mut fastrand::Rng,
) {
    match rng.u8(..10) {
        0 => serial.send(b"\x00\xff#~noise".to_vec()).await.unwrap(),
        1 => {
            let body = format!("OCC,{id},1,99.9,{}", 1_000_000 + rng.u32(..1000));
            let bad = format!("${body}*{:02X}\r\n", checksum(&body) ^ 0x5a);
            serial.send(bad.into_bytes()).await.unwrap();
        }
        2 => {
            let long = format!("${}\n", "X".repeat(400));
            serial.send(long.into_bytes()).await.unwrap();
        }
        3 => {
            let cut = rng.usize(1..frame.len());
            serial.send(frame[..cut].to_vec()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(rng.u64(1..20))).await;
            serial.send(frame[cut..].to_vec()).await.unwrap();
            return;
        }
        _ => {}
    }
    serial.send(frame).await.unwrap();
}

/// The deadband rule (a change of presence, or of the temperature by half a degree or more,
/// from the last report) replayed over what a device published, where each frame in
/// `maybe_lost` may or may not have reached edgehook: the seqs edgehook reports whichever
/// were lost (a change from every last report it may hold), and the last reports it may end
/// with. Without lost frames that is one exact story. With them, a lost frame leaves edgehook
/// comparing with an older report than the model's, so a later reading the model calls a
/// change may be none (found by seed 125716985809567577: frame 3 lost in a power cut, 4 seen
/// as the change from 1, and 7 then inside 4's deadband though outside 3's).
pub fn deadband(
    published: &[(u64, bool, i64)],
    maybe_lost: &HashSet<u64>,
) -> (Vec<u64>, Vec<(bool, i64)>) {
    let mut surely = Vec::new();
    // Every last report edgehook may hold (None: nothing reported yet).
    let mut last: Vec<Option<(bool, i64)>> = vec![None];
    for &(seq, p, t) in published {
        let change =
            |r: &Option<(bool, i64)>| r.is_none_or(|(rp, rt)| rp != p || (rt - t).abs() >= 5);
        let changes = last.iter().filter(|r| change(r)).count();
        if changes == last.len() && !maybe_lost.contains(&seq) {
            surely.push(seq);
            last = vec![Some((p, t))];
        } else if changes > 0 {
            // Seen by a story where it is a change: that story now holds it.
            if !maybe_lost.contains(&seq) {
                last.retain(|r| !change(r));
            }
            if !last.contains(&Some((p, t))) {
                last.push(Some((p, t)));
            }
        }
    }
    (surely, last.into_iter().flatten().collect())
}

impl Model {
    /// The seqs that must be reported (classes without `min_interval`).
    pub fn must(&self) -> Vec<u64> {
        if self.held {
            return Vec::new();
        }
        deadband(&self.published, &self.maybe_lost).0
    }

    /// What upstream may end knowing of the device: its last report in each story of lost
    /// frames (one, for a device whose readings all reached edgehook; none before any).
    pub fn ends(&self) -> Vec<(bool, i64)> {
        deadband(&self.published, &self.maybe_lost).1
    }

    /// Whether the must-report `seq` may rightly be missing: just after a broker restart (the
    /// device resent what the broker had not acknowledged, edgehook applied those again: older
    /// values), `seq` repeats values edgehook saw last, so it was no change to edgehook.
    pub fn excused(&self, seq: u64) -> bool {
        let values = |s: u64| self.published.iter().find(|p| p.0 == s).map(|p| (p.1, p.2));
        let Some((presence, tenths)) = values(seq) else {
            return false;
        };
        self.resent_up_to.iter().any(|&mark| {
            seq > mark
                && seq - mark <= 20
                && self.published.iter().any(|&(s, p, t)| {
                    s <= mark && mark - s < 200 && p == presence && (t - tenths).abs() < 5
                })
        })
    }
}
