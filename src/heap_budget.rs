//! A heap with a budget, for a process that evaluates what it cannot trust (the jq worker,
//! [`crate::jq`]): past the budget an allocation fails, and Rust's allocation-failure handler
//! aborts that process — not the daemon, which never sets a budget.
//!
//! Why an allocator and not `setrlimit(RLIMIT_DATA)`: the systemd unit forbids the `@resources`
//! system calls (setrlimit and prlimit among them), so a process of the service cannot lower
//! its own limits. Counting in the allocator needs no permission.
//!
//! Without a budget (the daemon, every command) the cost is one relaxed load per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

/// No budget: the daemon's state.
const UNLIMITED: usize = usize::MAX;

static LIMIT: AtomicUsize = AtomicUsize::new(UNLIMITED);
/// Bytes allocated since the budget was set (signed: what was allocated before it and freed
/// after it counts down, which only leaves room).
static USED: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, counted against [`set`]'s budget once one is set.
pub struct Budgeted;

/// From now on, allocations past `bytes` in all (counted from now) fail. Once per process, at
/// its start: the jq worker's first act.
pub fn set(bytes: usize) {
    USED.store(0, Relaxed);
    LIMIT.store(bytes.min(isize::MAX as usize), Relaxed);
}

/// Whether `size` more bytes fit the budget; counts them if they do.
fn take(size: usize) -> bool {
    let limit = LIMIT.load(Relaxed);
    if limit == UNLIMITED {
        return true;
    }
    let size = size.min(isize::MAX as usize) as isize;
    let before = USED.fetch_add(size, Relaxed);
    if before.saturating_add(size) > limit as isize {
        USED.fetch_sub(size, Relaxed);
        return false;
    }
    true
}

fn give(size: usize) {
    if LIMIT.load(Relaxed) != UNLIMITED {
        USED.fetch_sub(size.min(isize::MAX as usize) as isize, Relaxed);
    }
}

// SAFETY: every call is passed to the system allocator unchanged; the budget only refuses
// (a null pointer, which the caller must handle) before asking it.
unsafe impl GlobalAlloc for Budgeted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !take(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            give(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !take(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            give(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        give(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !take(new_size - old) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            if new_size > old {
                give(new_size - old);
            }
        } else if new_size < old {
            give(old - new_size);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accounting alone (the test binary's own allocator is this one without a budget,
    /// and a budget set here would hold every other test to it).
    #[test]
    fn unlimited_takes_everything_and_counts_nothing() {
        assert_eq!(LIMIT.load(Relaxed), UNLIMITED);
        let before = USED.load(Relaxed);
        assert!(take(usize::MAX));
        give(12345);
        assert_eq!(USED.load(Relaxed), before);
    }
}
