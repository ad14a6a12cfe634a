//! The `/v1` routes: one table ([`ROUTES`]) says which methods each path takes and what
//! handles it, and the same table answers 404 (no such path) and 405 (not that method); a
//! test holds it to the OpenAPI document (`openapi.json`, served at `/v1/openapi.json`). Each
//! concern's handlers are a file of their own. Errors are `{"error": why, "field": the setting
//! at fault}` with a 4xx that says what kind.

mod actions;
mod deliveries;
mod devices;
mod endpoints;
mod outbox;

use hyper::body::Bytes;
use hyper::{Method, Response};
use tokio_util::sync::CancellationToken;

use super::endpoints::Change;
use super::http::{asset, error, ok, page, raw, Query, CONSOLE_CSS, CONSOLE_JS, OPENAPI};
use super::server::Body;
use super::Control;

/// What answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Console,
    ConsoleJs,
    ConsoleCss,
    OpenApi,
    Gateway,
    Devices,
    Device,
    ForgetDevice,
    Desire,
    SubmitAction,
    Action,
    CancelAction,
    Bookings,
    Workspaces,
    Endpoints,
    CreateEndpoint,
    Endpoint,
    ReplaceEndpoint,
    PatchEndpoint,
    DeleteEndpoint,
    Pause,
    Resume,
    Enable,
    Test,
    Outbox,
    OutboxEvents,
    Replay,
    Purge,
    Deliveries,
    Stream,
    Delivery,
}

/// A route: the methods it takes, its path (segments after the first `/`; `*` is one segment,
/// given to the handler), and what handles it.
struct Route {
    methods: &'static [&'static str],
    path: &'static str,
    op: Op,
}

const READ: &[&str] = &["GET", "HEAD"];

const fn r(methods: &'static [&'static str], path: &'static str, op: Op) -> Route {
    Route { methods, path, op }
}

/// Every route of the local listener.
const ROUTES: &[Route] = &[
    r(READ, "", Op::Console),
    r(READ, "console.js", Op::ConsoleJs),
    r(READ, "console.css", Op::ConsoleCss),
    r(READ, "v1", Op::OpenApi),
    r(READ, "v1/openapi.json", Op::OpenApi),
    r(READ, "v1/gateway", Op::Gateway),
    r(READ, "v1/devices", Op::Devices),
    r(READ, "v1/devices/*", Op::Device),
    r(&["DELETE"], "v1/devices/*", Op::ForgetDevice),
    r(&["PUT"], "v1/devices/*/desired", Op::Desire),
    r(&["POST"], "v1/actions", Op::SubmitAction),
    r(READ, "v1/actions/*", Op::Action),
    r(&["DELETE"], "v1/actions/*", Op::CancelAction),
    r(READ, "v1/bookings", Op::Bookings),
    r(READ, "v1/workspaces", Op::Workspaces),
    r(READ, "v1/endpoints", Op::Endpoints),
    r(&["POST"], "v1/endpoints", Op::CreateEndpoint),
    r(READ, "v1/endpoints/*", Op::Endpoint),
    r(&["PUT"], "v1/endpoints/*", Op::ReplaceEndpoint),
    r(&["PATCH"], "v1/endpoints/*", Op::PatchEndpoint),
    r(&["DELETE"], "v1/endpoints/*", Op::DeleteEndpoint),
    r(&["POST"], "v1/endpoints/*/pause", Op::Pause),
    r(&["POST"], "v1/endpoints/*/resume", Op::Resume),
    r(&["POST"], "v1/endpoints/*/enable", Op::Enable),
    r(&["POST"], "v1/endpoints/*/test", Op::Test),
    r(READ, "v1/outbox", Op::Outbox),
    r(READ, "v1/outbox/events", Op::OutboxEvents),
    r(&["POST"], "v1/outbox/replay", Op::Replay),
    r(&["POST"], "v1/outbox/purge", Op::Purge),
    r(READ, "v1/deliveries", Op::Deliveries),
    r(&["GET"], "v1/deliveries/stream", Op::Stream),
    r(&["GET"], "v1/deliveries/*", Op::Delivery),
];

/// The segments `segs` gives the `*`s of `pattern`, if it fits.
fn fit<'a>(pattern: &str, segs: &[&'a str]) -> Option<Vec<&'a str>> {
    if pattern.is_empty() {
        return (segs.is_empty() || segs == [""]).then(Vec::new);
    }
    let parts: Vec<&str> = pattern.split('/').collect();
    if parts.len() != segs.len() {
        return None;
    }
    let mut args = Vec::new();
    for (p, s) in parts.iter().zip(segs) {
        if *p == "*" {
            args.push(*s);
        } else if p != s {
            return None;
        }
    }
    Some(args)
}

/// The route `method` takes at `segs`, with the segments its `*`s stand for; else 405 (the
/// path is known, not the method) or 404.
fn find<'a>(method: &str, segs: &[&'a str]) -> Result<(&'static Route, Vec<&'a str>), u16> {
    let fits: Vec<(&Route, Vec<&str>)> = ROUTES
        .iter()
        .filter_map(|r| Some((r, fit(r.path, segs)?)))
        .collect();
    if fits.is_empty() {
        return Err(404);
    }
    fits.into_iter()
        .find(|(r, _)| r.methods.contains(&method))
        .ok_or(405)
}

/// Answer `method path?query` with `body`.
pub async fn route(
    control: &Control,
    method: &Method,
    path: &str,
    query: &str,
    body: Bytes,
    cancel: CancellationToken,
) -> Response<Body> {
    let q = Query::parse(query);
    let segments: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (route, args) = match find(method.as_str(), &segs) {
        Ok(found) => found,
        Err(405) => return error(405, None, "method not allowed here (see /v1/openapi.json)"),
        Err(_) if segs.first() == Some(&"v1") => {
            return error(404, None, "no such route (see /v1/openapi.json)")
        }
        Err(_) => return error(404, None, "try /, /v1/openapi.json, /healthz or /metrics"),
    };
    let arg = args.first().copied().unwrap_or_default();
    match route.op {
        Op::Console => page(),
        Op::ConsoleJs => asset("text/javascript; charset=utf-8", CONSOLE_JS),
        Op::ConsoleCss => asset("text/css; charset=utf-8", CONSOLE_CSS),
        Op::OpenApi => raw(200, "application/json", OPENAPI),
        Op::Gateway => ok(devices::gateway(control).await),
        Op::Devices => devices::list(control, &q).await,
        Op::Device => devices::one(control, arg).await,
        Op::ForgetDevice => devices::forget(control, arg).await,
        Op::Desire => devices::desire(control, arg, &body).await,
        Op::SubmitAction => actions::submit(control, &body).await,
        Op::Action => actions::one(control, arg).await,
        Op::CancelAction => actions::cancel(control, arg).await,
        Op::Bookings => actions::bookings(control).await,
        Op::Workspaces => devices::workspaces_list(control).await,
        Op::Endpoints => endpoints::list(control).await,
        Op::CreateEndpoint => endpoints::change(control, &body, Change::Create, 201).await,
        Op::Endpoint => endpoints::one_endpoint(control, arg, 200).await,
        Op::ReplaceEndpoint => {
            let name = arg.to_string();
            endpoints::change(control, &body, |v| Change::Replace(name, v), 200).await
        }
        Op::PatchEndpoint => {
            let name = arg.to_string();
            endpoints::change(control, &body, |v| Change::Patch(name, v), 200).await
        }
        Op::DeleteEndpoint => endpoints::delete(control, arg, &q).await,
        Op::Pause => endpoints::pause(control, arg, true).await,
        Op::Resume => endpoints::pause(control, arg, false).await,
        Op::Enable => endpoints::enable(control, arg).await,
        Op::Test => endpoints::test_event(control, arg).await,
        Op::Outbox => ok(outbox::outbox_status(control).await),
        Op::OutboxEvents => outbox::outbox_events(control, &q),
        Op::Replay => match super::http::parse_body(&body) {
            Ok(v) => outbox::replay(control, &v).await,
            Err(r) => *r,
        },
        Op::Purge => match super::http::parse_body(&body) {
            Ok(v) => outbox::purge(control, &v).await,
            Err(r) => *r,
        },
        Op::Deliveries => deliveries::deliveries(control, &q),
        Op::Stream => deliveries::stream(control, &q, cancel),
        Op::Delivery => deliveries::one(control, arg, &q),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route table and the OpenAPI document say the same: every documented operation of
    /// the local listener is routed, and every route but the console's page is documented.
    #[test]
    fn the_route_table_is_the_openapi_documents() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented = std::collections::BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            if path == "/v1/commands" {
                continue; // the push listener's, not this one's
            }
            let pattern: Vec<&str> = path
                .trim_start_matches('/')
                .split('/')
                .map(|s| if s.starts_with('{') { "*" } else { s })
                .collect();
            for method in ops.as_object().unwrap().keys() {
                documented.insert((method.to_ascii_uppercase(), pattern.join("/")));
            }
        }
        let routed: std::collections::BTreeSet<(String, String)> = ROUTES
            .iter()
            .filter(|r| !r.path.is_empty() && r.path != "v1" && !r.path.starts_with("console."))
            .flat_map(|r| {
                r.methods
                    .iter()
                    .filter(|m| **m != "HEAD")
                    .map(|m| (m.to_string(), r.path.to_string()))
            })
            .collect();
        assert_eq!(routed, documented);
    }

    /// (path, method) → the route's handler, or the status a wrong path or method gets.
    #[test]
    fn a_path_and_method_find_their_route_or_say_why_not() {
        let find = |method: &str, path: &str| -> Result<Op, u16> {
            let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
            find(method, &segs).map(|(r, _)| r.op)
        };
        let cases = [
            ("GET", "/", Ok(Op::Console)),
            ("GET", "/v1/devices", Ok(Op::Devices)),
            ("HEAD", "/v1/devices/", Ok(Op::Devices)),
            ("GET", "/v1/devices/occ-1", Ok(Op::Device)),
            ("DELETE", "/v1/devices/occ-1", Ok(Op::ForgetDevice)),
            ("PUT", "/v1/devices/occ-1/desired", Ok(Op::Desire)),
            ("POST", "/v1/devices/occ-1", Err(405)),
            ("POST", "/v1/endpoints/crm/pause", Ok(Op::Pause)),
            ("GET", "/v1/endpoints/crm/pause", Err(405)),
            ("GET", "/v1/deliveries/stream", Ok(Op::Stream)),
            ("GET", "/v1/deliveries/0192-e1", Ok(Op::Delivery)),
            ("HEAD", "/v1/deliveries/stream", Err(405)),
            ("GET", "/v1/nothing", Err(404)),
            ("GET", "/v1/devices/a/b/c", Err(404)),
            ("POST", "/", Err(405)),
        ];
        for (method, path, want) in cases {
            assert_eq!(find(method, path), want, "{method} {path}");
        }
    }
}
