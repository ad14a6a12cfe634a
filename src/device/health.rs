//! Device health: online, offline, lost communication — as pure functions over
//! [`DeviceState`], driven by messages and by the clock.
//!
//! - Any message from a device (a reading, a birth, an `online` status) makes it online; if it
//!   was not online, that is `device.online`. A retained message (the broker's copy, at every
//!   subscribe) counts only when that is news ([`retained_is_news`]): never for a device lost
//!   or online.
//! - An offline report (last-will, `offline` status, serial link closed) starts the *debounce*
//!   window. If the device is heard from again within it, nothing is sent: a bounce is not news.
//!   If the window ends with the device still away, that is `device.offline`.
//! - A device with a heartbeat that has been silent for `lost_after` heartbeats is
//!   `device.lost_communication`: it may be fine but unreachable, which is not the same as
//!   having said goodbye. Its next message makes it online again.
//!
//! After a restart the state comes back from disk, so healthy devices are not re-announced.
//! A device's lost deadline is then never earlier than one heartbeat after the start, which
//! gives the broker time to deliver what the device sent while edgehook was down.

use serde::{Deserialize, Serialize};

use super::{DeviceState, Millis};

/// What upstream was last told about a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Never heard from (or only a retained offline report).
    #[default]
    Unknown,
    Online,
    Offline,
    /// Silent past its heartbeat deadline.
    Lost,
}

/// A change of health, kept with the device (its latest [`HISTORY`]) for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// When it changed (an offline after its debounce: when it was reported).
    pub at: Millis,
    pub health: Health,
}

/// Changes of health a device keeps: a flapping device costs no more than this.
pub const HISTORY: usize = 8;

/// `state` is now `health`, since `at`: remembered in its history.
fn become_(state: &mut DeviceState, health: Health, at: Millis) {
    state.health = health;
    let history = &mut state.health_history;
    if history.len() >= HISTORY {
        history.drain(..=history.len() - HISTORY);
    }
    history.push(Change { at, health });
}

/// The health rules of one device class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthPolicy {
    /// Expected reporting period; `None` disables lost-communication detection.
    pub heartbeat: Option<Millis>,
    /// Grace multiple of the heartbeat.
    pub lost_after: f64,
    pub debounce: Millis,
}

impl HealthPolicy {
    /// Silence after which a device is lost.
    fn lost_silence(&self) -> Option<Millis> {
        self.heartbeat
            .map(|h| (h as f64 * self.lost_after).round() as Millis)
    }
}

/// A health change that produces an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Online,
    /// Debounce over; `since` is when the offline report arrived.
    Offline {
        since: Millis,
    },
    Lost {
        last_seen: Millis,
    },
}

/// The device was heard from (anything but an offline report). Returns `Online` when that is
/// news. `dirty` is set when persisted state changed.
pub fn heard(state: &mut DeviceState, now: Millis, dirty: &mut bool) -> Option<Transition> {
    state.last_seen = now;
    if state.offline_since.take().is_some() {
        *dirty = true; // a bounce inside the debounce window: no events at all
    }
    if state.health == Health::Online {
        return None;
    }
    become_(state, Health::Online, now);
    *dirty = true;
    Some(Transition::Online)
}

/// Whether a retained message (the broker's copy of what the device said some time ago,
/// delivered at every subscribe: after a restart, after a reconnect) is heard from the device.
/// For one online, or lost, it is not: online, it was counted when it was new (and must not
/// put off the silence that makes the device lost); lost, it is older than that silence (a
/// device that went quiet without a last-will leaves its `online` birth retained), and the
/// device's next real message brings it back. For one never heard from, or offline, or inside
/// an offline's debounce, it is the broker's word on the device now (a retained `online`
/// replaced the retained last-will only if the device came back), and it is heard.
pub fn retained_is_news(state: &DeviceState) -> bool {
    match state.health {
        Health::Unknown | Health::Offline => true,
        Health::Online => state.offline_since.is_some(),
        Health::Lost => false,
    }
}

/// An offline report arrived: start the debounce window, or, without one, go offline now.
pub fn offline_reported(
    state: &mut DeviceState,
    policy: &HealthPolicy,
    now: Millis,
    dirty: &mut bool,
) -> Option<Transition> {
    match state.health {
        Health::Online | Health::Lost if policy.debounce == 0 => {
            become_(state, Health::Offline, now);
            *dirty = true;
            Some(Transition::Offline { since: now })
        }
        Health::Online | Health::Lost => {
            if state.offline_since.is_none() {
                state.offline_since = Some(now);
                *dirty = true;
            }
            None
        }
        Health::Unknown => {
            // First heard through an offline report (a retained availability or last-will
            // at start): no flap to wait out, the broker's word on it now. Told once, so that
            // every receiver's view is the gateway's.
            become_(state, Health::Offline, now);
            *dirty = true;
            Some(Transition::Offline { since: now })
        }
        Health::Offline => None,
    }
}

/// When [`due`] next has something to do for this device, if ever.
pub fn deadline(state: &DeviceState, policy: &HealthPolicy, started: Millis) -> Option<Millis> {
    if let Some(since) = state.offline_since {
        return Some(since + policy.debounce);
    }
    match (state.health, policy.lost_silence()) {
        (Health::Online, Some(silence)) => {
            Some((state.last_seen + silence).max(started + policy.heartbeat.unwrap_or_default()))
        }
        _ => None,
    }
}

/// Apply whatever the clock decides at `now`: the end of a debounce window, or lost
/// communication.
pub fn due(
    state: &mut DeviceState,
    policy: &HealthPolicy,
    started: Millis,
    now: Millis,
) -> Option<Transition> {
    if deadline(state, policy, started).is_none_or(|d| now < d) {
        return None;
    }
    if let Some(since) = state.offline_since.take() {
        become_(state, Health::Offline, since);
        return Some(Transition::Offline { since });
    }
    become_(state, Health::Lost, now);
    Some(Transition::Lost {
        last_seen: state.last_seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a scenario: at time `t`, either a message (`Heard`, `OfflineReport`) or
    /// just the clock (`Tick`), and the transitions expected.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Heard,
        OfflineReport,
        Tick,
    }
    use Step::*;

    fn run(
        policy: &HealthPolicy,
        started: Millis,
        steps: &[(Millis, Step, &[Transition])],
    ) -> DeviceState {
        let mut state = DeviceState::default();
        for (i, (t, step, want)) in steps.iter().enumerate() {
            let mut dirty = false;
            let mut got: Vec<Transition> = Vec::new();
            got.extend(due(&mut state, policy, started, *t));
            match step {
                Heard => got.extend(heard(&mut state, *t, &mut dirty)),
                OfflineReport => got.extend(offline_reported(&mut state, policy, *t, &mut dirty)),
                Tick => {}
            }
            assert_eq!(&got, want, "step {i} at t={t} ({step:?}); state {state:?}");
        }
        state
    }

    fn history(state: &DeviceState) -> Vec<(Millis, Health)> {
        state
            .health_history
            .iter()
            .map(|c| (c.at, c.health))
            .collect()
    }

    /// Each change told is kept with its time (an offline after its debounce, from when it was
    /// reported; a bounce inside it, not at all), the latest HISTORY of them.
    #[test]
    fn the_latest_changes_of_health_are_kept_with_their_times() {
        let p = HealthPolicy {
            debounce: 1_000,
            heartbeat: Some(10_000),
            lost_after: 3.0,
        };
        let state = run(
            &p,
            0,
            &[
                (10, Heard, &[ON]),
                (100, OfflineReport, &[]),
                (500, Heard, &[]),
                (600, OfflineReport, &[]),
                (1_700, Tick, &[Transition::Offline { since: 600 }]),
                (2_000, Heard, &[ON]),
            ],
        );
        use Health::*;
        assert_eq!(
            history(&state),
            [(10, Online), (600, Offline), (2_000, Online)]
        );
        let silence = p.lost_silence().unwrap();
        let lost = run(
            &p,
            0,
            &[
                (10, Heard, &[ON]),
                (10 + silence, Tick, &[Transition::Lost { last_seen: 10 }]),
            ],
        );
        assert_eq!(history(&lost), [(10, Online), (10 + silence, Lost)]);
        // A flapping device keeps only the latest.
        let mut state = DeviceState::default();
        let mut dirty = false;
        let no_debounce = HealthPolicy::default();
        for t in 1..=20 {
            if t % 2 == 1 {
                heard(&mut state, t, &mut dirty);
            } else {
                offline_reported(&mut state, &no_debounce, t, &mut dirty);
            }
        }
        let kept = history(&state);
        assert_eq!(kept.len(), HISTORY);
        assert_eq!(kept.first(), Some(&(13, Online)));
        assert_eq!(kept.last(), Some(&(20, Offline)));
    }

    const ON: Transition = Transition::Online;

    /// (health, inside an offline's debounce) → whether a retained message is heard.
    #[test]
    fn a_retained_message_is_news_for_a_device_unknown_or_offline_only() {
        for (health, debouncing, news) in [
            (Health::Unknown, false, true),
            (Health::Offline, false, true),
            (Health::Online, false, false),
            (Health::Online, true, true),
            (Health::Lost, false, false),
        ] {
            let state = DeviceState {
                health,
                offline_since: debouncing.then_some(5),
                ..Default::default()
            };
            assert_eq!(retained_is_news(&state), news, "{health:?} {debouncing}");
        }
    }

    #[test]
    fn online_offline_with_and_without_debounce() {
        let no_debounce = HealthPolicy {
            debounce: 0,
            ..Default::default()
        };
        run(
            &no_debounce,
            0,
            &[
                // The retained will of a device never heard from: offline, told at once.
                (10, OfflineReport, &[Transition::Offline { since: 10 }]),
                (20, Heard, &[ON]),
                (30, Heard, &[]),
                (40, OfflineReport, &[Transition::Offline { since: 40 }]),
                (50, OfflineReport, &[]),
                (60, Heard, &[ON]),
            ],
        );
    }

    #[test]
    fn bounces_inside_the_debounce_window_are_silent() {
        let p = HealthPolicy {
            debounce: 1_000,
            ..Default::default()
        };
        run(
            &p,
            0,
            &[
                (0, Heard, &[ON]),
                (100, OfflineReport, &[]),
                (300, Heard, &[]), // back within 1 s: nothing
                (400, OfflineReport, &[]),
                (500, Heard, &[]),
                (600, OfflineReport, &[]),
                (900, OfflineReport, &[]), // a repeated will does not restart the window
                (1_599, Tick, &[]),
                (1_600, Tick, &[Transition::Offline { since: 600 }]), // settled offline: one event
                (1_700, Tick, &[]),
                (5_000, Heard, &[ON]), // settles online again: the pair's other half
            ],
        );
    }

    #[test]
    fn silence_past_the_heartbeat_grace_is_lost_not_offline() {
        let p = HealthPolicy {
            heartbeat: Some(1_000),
            lost_after: 3.0,
            debounce: 500,
        };
        run(
            &p,
            0,
            &[
                (0, Heard, &[ON]),
                (2_000, Heard, &[]),
                (4_999, Tick, &[]),
                (5_000, Tick, &[Transition::Lost { last_seen: 2_000 }]),
                (6_000, Tick, &[]), // once
                (7_000, Heard, &[ON]),
                // lost, then a will: offline after debounce
                (11_000, Tick, &[Transition::Lost { last_seen: 7_000 }]),
                (11_100, OfflineReport, &[]),
                (11_600, Tick, &[Transition::Offline { since: 11_100 }]),
                (60_000, Tick, &[]), // offline devices are never lost
            ],
        );
    }

    #[test]
    fn after_a_restart_the_lost_deadline_waits_one_heartbeat() {
        let p = HealthPolicy {
            heartbeat: Some(1_000),
            lost_after: 3.0,
            debounce: 0,
        };
        // Known online, last seen long before the restart at t=100_000.
        let mut state = DeviceState {
            health: Health::Online,
            last_seen: 10_000,
            ..Default::default()
        };
        assert_eq!(deadline(&state, &p, 100_000), Some(101_000));
        assert_eq!(due(&mut state, &p, 100_000, 100_500), None);
        // It speaks in time: healthy, nothing announced.
        let mut dirty = false;
        assert_eq!(heard(&mut state, 100_600, &mut dirty), None);
        assert_eq!(deadline(&state, &p, 100_000), Some(103_600));
        // Another one stays silent through the restart: reported one heartbeat after the start.
        let mut silent = DeviceState {
            health: Health::Online,
            last_seen: 10_000,
            ..Default::default()
        };
        assert_eq!(
            due(&mut silent, &p, 100_000, 101_000),
            Some(Transition::Lost { last_seen: 10_000 })
        );
    }
}
