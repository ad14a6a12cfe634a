//! The one function of the C math library the daemon calls, `pow` (tokio's multi-threaded
//! scheduler uses it for its statistics), defined here from the `libm` crate — a port of musl's,
//! which jaq's math functions already link. With no symbol left to take from `libm.so.6`, the
//! linker (`--as-needed`) does not record it, and the daemon does not map it: about 0.5 MB less
//! resident (file-backed pages, shared with other processes, but counted in the daemon's RSS).
//! `scripts/cross-check` fails if the shipped binary needs `libm.so.6` again.

/// `pow(3)`: `x` raised to the power `y`.
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    /// The values the C library gives (exact where the result is representable).
    #[test]
    fn pow_is_the_c_librarys() {
        for (x, y, want) in [
            (2.0, 10.0, 1024.0),
            (2.0, -1.0, 0.5),
            (0.5, 2.0, 0.25),
            (9.0, 0.5, 3.0),
            (0.0, 0.0, 1.0),
            (-2.0, 3.0, -8.0),
            (10.0, -2.0, 0.01),
        ] {
            assert_eq!(super::pow(x, y), want, "{x}^{y}");
        }
        assert!(super::pow(-2.0, 0.5).is_nan());
        assert_eq!(super::pow(0.0, -1.0), f64::INFINITY);
    }
}
