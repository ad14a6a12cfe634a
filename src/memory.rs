//! Memory given back: glibc's malloc keeps what the daemon freed in its arenas (one per worker
//! thread), so after a burst the resident size stays at the burst's peak for good. Once a
//! minute, while the daemon runs, `malloc_trim` returns the free pages of every arena to the
//! system (a few milliseconds for a heap of a few MB). Elsewhere than glibc this does nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often freed memory is given back.
const EVERY: Duration = Duration::from_secs(60);

/// Give freed memory back every [`EVERY`] until `cancel`.
pub async fn give_back(cancel: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is at once
    loop {
        tokio::select! {
            _ = tick.tick() => trim(),
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas, under their locks; it takes no
    // pointer from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
