//! Memory given back: glibc's malloc keeps what the daemon freed in its arena (by default one
//! per thread), so after a burst the resident size stays at the burst's peak for good. Once a
//! minute, while the daemon runs, `malloc_trim` returns the free pages of every arena to the
//! system (a few milliseconds for a heap of a few MB). Elsewhere than glibc this does nothing.
//!
//! Before that, at start, glibc's malloc is set for a small daemon ([`tune_allocator`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Set glibc's malloc for a small daemon; call before any thread starts. A setting the operator
/// made (`GLIBC_TUNABLES=glibc.malloc.*`, `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) is left
/// as it is.
/// - One arena: by default each thread that allocates gets its own (up to eight per core), and
///   what one thread frees stays in its arena for that thread alone.
/// - A fixed mmap threshold: by default it rises to the largest block freed so far, so after
///   sled's 512 KiB write buffers come and go, every later buffer of that size comes from the
///   heap, where it fragments and stays.
///
/// Bench, burst with a slow receiver (`BENCH_RECEIVER_DELAY_MS=20`), two runs each: peak RSS
/// 25.6 and 27.0 MB with glibc's defaults, 20.7 and 21.1 MB with these; CPU per event no higher
/// (README: The allocator).
pub fn tune_allocator() {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let (arena, mmap) = ours(
        &tunables,
        std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some(),
    );
    set(arena, mmap);
}

/// Which of (the arena limit, the mmap threshold) to set, given the operator's settings.
fn ours(tunables: &str, arena_env: bool, mmap_env: bool) -> (bool, bool) {
    let tuned = |name: &str| {
        tunables
            .split(':')
            .any(|t| t.split('=').next() == Some(name))
    };
    (
        !arena_env && !tuned("glibc.malloc.arena_max"),
        !mmap_env && !tuned("glibc.malloc.mmap_threshold"),
    )
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(arena: bool, mmap: bool) {
    /// Allocations from this size up get pages of their own, returned when freed.
    const MMAP_THRESHOLD: i32 = 128 * 1024;
    // SAFETY: mallopt only changes glibc's own allocator parameters; it takes no pointer.
    unsafe {
        if arena {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
        if mmap {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_arena: bool, _mmap: bool) {}

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

#[cfg(test)]
mod tests {
    use super::ours;

    #[test]
    fn the_operators_malloc_settings_win() {
        #[rustfmt::skip]
        let table: &[(&str, bool, bool, (bool, bool))] = &[
            ("", false, false, (true, true)),
            ("", true, false, (false, true)),
            ("", false, true, (true, false)),
            ("glibc.malloc.arena_max=4", false, false, (false, true)),
            ("glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=65536", false, false, (true, false)),
            ("glibc.malloc.arena_max_x=4", false, false, (true, true)),
            ("glibc.elision.enable=1", false, false, (true, true)),
        ];
        for (tunables, arena_env, mmap_env, want) in table {
            assert_eq!(ours(tunables, *arena_env, *mmap_env), *want, "{tunables}");
        }
    }
}
