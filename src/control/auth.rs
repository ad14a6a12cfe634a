//! Who may call the local server: the API token (made at first start in the state directory,
//! mode 0600; `edgehook token` prints it) and the rules for each request, a pure function
//! ([`check`]) tested as a table.
//!
//! On loopback, reads need no token, but their `Host` must name this host (a page on some
//! other site that resolves its own name to 127.0.0.1 — DNS rebinding — gets nothing), and
//! every call that changes something needs the bearer token and, if a browser sent an
//! `Origin`, this server's own origin (no cross-site requests). Listening anywhere else
//! (with TLS: `telemetry.tls_cert`) every call but the console's page needs the token.

use std::path::Path;

use crate::secret::Secret;

/// The token's file in the state directory.
pub const TOKEN_FILE: &str = "api-token";

/// The API token in `state_dir`, made (32 random bytes, hex) on first use, readable by this
/// user alone.
pub fn load_or_create_token(state_dir: &Path) -> std::io::Result<Secret> {
    let path = state_dir.join(TOKEN_FILE);
    if let Some(token) = read_token(state_dir)? {
        return Ok(token);
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no randomness for the API token"))?;
    let token = hex::encode(bytes);
    crate::atomic_file::replace(&path, format!("{token}\n").as_bytes(), 0o600)?;
    Ok(Secret::new(token))
}

/// The API token in `state_dir`, if one was made.
pub fn read_token(state_dir: &Path) -> std::io::Result<Option<Secret>> {
    match std::fs::read_to_string(state_dir.join(TOKEN_FILE)) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(Secret::new(text.trim()))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the rules look at in one request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Whether it changes something (any method but GET, HEAD and OPTIONS).
    pub changes: bool,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// `Authorization`.
    pub authorization: Option<&'a str>,
    /// Whether the path is the console's page, which anyone who reaches the server may load
    /// (it holds no data; everything it then asks for carries the token off loopback).
    pub open: bool,
}

/// Where the server listens, as the rules need it.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Loopback: reads need no token.
    pub loopback: bool,
    /// The `host:port` names this server answers to (`127.0.0.1:9187`, `localhost:9187`, ...).
    pub hosts: Vec<String>,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl Listener {
    pub fn new(addr: std::net::SocketAddr, tls: bool) -> Listener {
        let port = addr.port();
        let mut hosts = vec![match addr {
            std::net::SocketAddr::V4(a) => format!("{}:{port}", a.ip()),
            std::net::SocketAddr::V6(a) => format!("[{}]:{port}", a.ip()),
        }];
        if addr.ip().is_loopback() {
            hosts.extend([
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ]);
        }
        hosts.dedup();
        Listener {
            loopback: addr.ip().is_loopback(),
            hosts,
            scheme: if tls { "https" } else { "http" },
        }
    }
}

/// Why a request is refused: the HTTP status and what to tell the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRefusal {
    pub status: u16,
    pub why: &'static str,
}

const BAD_HOST: ActionRefusal = ActionRefusal {
    status: 421,
    why: "the Host header does not name this server (use the address it listens on)",
};
const NO_TOKEN: ActionRefusal = ActionRefusal {
    status: 401,
    why: "this call needs the API token: Authorization: Bearer <token> (edgehook token prints it)",
};
const BAD_TOKEN: ActionRefusal = ActionRefusal {
    status: 401,
    why: "wrong API token (edgehook token prints the right one)",
};
const CROSS_SITE: ActionRefusal = ActionRefusal {
    status: 403,
    why: "cross-site request refused: the Origin is not this server",
};

/// Whether `request` may go on, on `listener`, with `token` the API token.
///
/// Off loopback the `Host` is not checked (every call but the console's page needs the token,
/// which a rebound name cannot give a page), and a browser's change must come from the origin
/// the request names.
pub fn check(request: &Request, listener: &Listener, token: &Secret) -> Result<(), ActionRefusal> {
    let host = request.host.map(str::to_ascii_lowercase);
    let known = |h: &str| {
        listener.hosts.iter().any(|known| {
            known == h || known.strip_suffix(&format!(":{}", port_of(known))) == Some(h)
        })
    };
    if listener.loopback && !host.as_deref().is_some_and(known) {
        return Err(BAD_HOST);
    }
    if let Some(origin) = request.origin {
        let same = if listener.loopback {
            listener
                .hosts
                .iter()
                .any(|h| origin.eq_ignore_ascii_case(&format!("{}://{h}", listener.scheme)))
        } else {
            host.as_deref()
                .is_some_and(|h| origin.eq_ignore_ascii_case(&format!("{}://{h}", listener.scheme)))
        };
        if !same && request.changes {
            return Err(CROSS_SITE);
        }
    }
    if !request.changes && (listener.loopback || request.open) {
        return Ok(());
    }
    match request.authorization.and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
    }) {
        None => Err(NO_TOKEN),
        Some(given) if constant_time_eq(given.trim().as_bytes(), token.expose().as_bytes()) => {
            Ok(())
        }
        Some(_) => Err(BAD_TOKEN),
    }
}

fn port_of(host: &str) -> &str {
    host.rsplit(':').next().unwrap_or("")
}

/// Compare without stopping at the first difference (the time taken tells nothing of where
/// a guessed token goes wrong).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_is_let_in_or_refused_as_the_rules_say() {
        let token = Secret::new("t0ken");
        let local = Listener::new("127.0.0.1:9187".parse().unwrap(), false);
        let remote = Listener::new("10.0.0.5:9443".parse().unwrap(), true);
        let req = |changes, host, origin, authorization, open| Request {
            changes,
            host,
            origin,
            authorization,
            open,
        };
        let ok = Ok(());
        #[rustfmt::skip]
        let table: Vec<(&str, Request, &Listener, Result<(), ActionRefusal>)> = vec![
            ("a loopback read needs no token", req(false, Some("127.0.0.1:9187"), None, None, false), &local, ok.clone()),
            ("localhost names this host", req(false, Some("localhost:9187"), None, None, false), &local, ok.clone()),
            ("the port may be left out", req(false, Some("localhost"), None, None, false), &local, ok.clone()),
            ("Host is case-insensitive", req(false, Some("LocalHost:9187"), None, None, false), &local, ok.clone()),
            ("another name is DNS rebinding", req(false, Some("evil.example:9187"), None, None, false), &local, Err(BAD_HOST)),
            ("another port is another server", req(false, Some("127.0.0.1:80"), None, None, false), &local, Err(BAD_HOST)),
            ("no Host at all", req(false, None, None, None, false), &local, Err(BAD_HOST)),
            ("a change needs the token", req(true, Some("127.0.0.1:9187"), None, None, false), &local, Err(NO_TOKEN)),
            ("a change with the token", req(true, Some("127.0.0.1:9187"), None, Some("Bearer t0ken"), false), &local, ok.clone()),
            ("a wrong token", req(true, Some("127.0.0.1:9187"), None, Some("Bearer t0ke"), false), &local, Err(BAD_TOKEN)),
            ("not a bearer token", req(true, Some("127.0.0.1:9187"), None, Some("Basic t0ken"), false), &local, Err(NO_TOKEN)),
            ("the console's own origin", req(true, Some("127.0.0.1:9187"), Some("http://127.0.0.1:9187"), Some("Bearer t0ken"), false), &local, ok.clone()),
            ("a cross-site change, even with the token", req(true, Some("127.0.0.1:9187"), Some("http://evil.example"), Some("Bearer t0ken"), false), &local, Err(CROSS_SITE)),
            ("another scheme is another origin", req(true, Some("127.0.0.1:9187"), Some("https://127.0.0.1:9187"), Some("Bearer t0ken"), false), &local, Err(CROSS_SITE)),
            ("a cross-site read is left to CORS (none is sent)", req(false, Some("127.0.0.1:9187"), Some("http://evil.example"), None, false), &local, ok.clone()),
            ("off loopback a read needs the token", req(false, Some("gw-1.example.com:9443"), None, None, false), &remote, Err(NO_TOKEN)),
            ("off loopback with the token", req(false, Some("10.0.0.5:9443"), None, Some("Bearer t0ken"), false), &remote, ok.clone()),
            ("off loopback /metrics needs the token too", req(false, Some("10.0.0.5:9443"), None, None, false), &remote, Err(NO_TOKEN)),
            ("off loopback the console page loads", req(false, Some("10.0.0.5:9443"), None, None, true), &remote, ok.clone()),
            ("off loopback any name, with the token", req(false, Some("gw-1.example.com:9443"), None, Some("Bearer t0ken"), false), &remote, ok.clone()),
            ("off loopback a change from its own origin", req(true, Some("gw-1.example.com:9443"), Some("https://gw-1.example.com:9443"), Some("Bearer t0ken"), false), &remote, ok.clone()),
            ("off loopback a cross-site change", req(true, Some("gw-1.example.com:9443"), Some("https://evil.example"), Some("Bearer t0ken"), false), &remote, Err(CROSS_SITE)),
            ("off loopback plain http is another origin", req(true, Some("gw-1.example.com:9443"), Some("http://gw-1.example.com:9443"), Some("Bearer t0ken"), false), &remote, Err(CROSS_SITE)),
            ("off loopback a wrong token", req(false, Some("10.0.0.5:9443"), None, Some("Bearer nope"), false), &remote, Err(BAD_TOKEN)),
            ("on loopback the page is open", req(false, Some("127.0.0.1:9187"), None, None, true), &local, ok.clone()),
        ];
        for (what, request, listener, want) in table {
            assert_eq!(check(&request, listener, &token), want, "{what}");
        }
    }

    #[test]
    fn the_token_is_made_once_and_readable_by_its_owner_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_token(dir.path()).unwrap(), None);
        let token = load_or_create_token(dir.path()).unwrap();
        assert_eq!(token.expose().len(), 64);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), token);
        assert_eq!(read_token(dir.path()).unwrap(), Some(token));
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
