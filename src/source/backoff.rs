//! The reconnect backoff every source shares: doubling from `min` up to `max`, each wait
//! spread by ±25 % so that many gateways (or ports) do not retry in lock-step; back to `min`
//! once connected again.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// Connected again: the next failure waits `min`.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// How long to wait after a failure. `unit` is a random number in [0, 1).
    pub fn delay(&mut self, unit: f64) -> Duration {
        let delay = self.next.mul_f64(0.75 + unit.clamp(0.0, 1.0) * 0.5);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// [`Backoff::delay`] with a fresh random spread.
    pub fn jittered(&mut self) -> Duration {
        self.delay(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_spread_by_a_quarter_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(500), ms(4_000));
        // unit 0.5 is the middle of the spread: the plain doubling.
        let waits: Vec<Duration> = (0..6).map(|_| b.delay(0.5)).collect();
        assert_eq!(waits, [500, 1_000, 2_000, 4_000, 4_000, 4_000].map(ms));
        b.reset();
        assert_eq!(b.delay(0.0), ms(375), "-25 %");
        assert_eq!(b.delay(1.0), ms(1_250), "+25 %");
        b.reset();
        assert_eq!(b.delay(0.5), ms(500));
    }
}
