//! Real parts for integration tests, a fixture per file: [`broker`] (mosquitto on a free port),
//! [`receiver`] (an HTTP receiver that verifies every signature with its own HMAC code, not
//! edgehook's `Signer`, records events and can be told to fail), [`daemon`] (the `edgehook`
//! binary as a child process, its configuration, clock and power-cut disk) and [`devices`]
//! (simulated devices and plain publishers). What they share is here.
#![allow(dead_code, unused_imports)]

mod api;
mod broker;
mod daemon;
mod devices;
mod receiver;
mod rig;
mod upstream;

pub use api::*;
pub use broker::*;
pub use daemon::*;
pub use devices::*;
pub use receiver::*;
pub use rig::*;
pub use upstream::*;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use sha2::Sha256;

pub const SECRET: &str = "test-secret-7f3a";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on {port} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal blocking HTTP GET on localhost.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

fn unsafe_kill(pid: u32, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Poll `ready` every 20 ms until it holds; past `deadline`, fail the test with `failed()` (what
/// was awaited, the state, the daemon's log). The one poll loop of the integration tests: they
/// wait for what they expect, never for a fixed time, except to show that something does *not*
/// happen.
pub async fn until(
    deadline: Instant,
    mut ready: impl FnMut() -> bool,
    failed: impl FnOnce() -> String,
) {
    while !ready() {
        if Instant::now() >= deadline {
            panic!("{}", failed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
