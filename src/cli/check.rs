//! `edgehook check-config`: what a configuration will run, and the placeholders of the shipped
//! example left in it (a `change-me` secret, `example.com` hosts, a serial adapter that is not
//! there), as `nginx -t` or `vector validate` tell an operator before a restart.

use crate::config::Config;
use crate::secret::redact_url;

/// What will run, one line per part: sources, device classes, workspaces and groups,
/// endpoints with the event types each takes, listeners.
pub fn plan(c: &Config) -> Vec<String> {
    let mut lines = vec![format!(
        "gateway {}, state in {}",
        c.gateway_id,
        c.state_dir.display()
    )];
    let subscriptions = c.mqtt.all_subscriptions();
    let presets: Vec<String> = c
        .mqtt
        .presets
        .iter()
        .map(|p| {
            serde_json::to_value(p)
                .map_or_else(|_| "?".into(), |v| v.as_str().unwrap_or("?").to_string())
        })
        .collect();
    if subscriptions.is_empty() {
        lines.push("mqtt: no subscription (no device is read over MQTT)".into());
    } else {
        lines.push(format!(
            "mqtt: {}:{}, {} subscription(s): {}{}",
            c.mqtt.host,
            c.mqtt.port,
            subscriptions.len(),
            subscriptions
                .iter()
                .map(|s| s.topic.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if presets.is_empty() {
                String::new()
            } else {
                format!(" (presets: {})", presets.join(", "))
            }
        ));
    }
    for port in &c.serial_ports {
        lines.push(format!(
            "serial: {} at {} baud",
            port.path.display(),
            port.baud_rate
        ));
    }
    for bus in &c.modbus.buses {
        let devices: Vec<String> = bus
            .devices
            .iter()
            .map(|d| format!("{} (unit {}, {})", d.id, d.unit, d.map))
            .collect();
        let line = match &bus.path {
            Some(path) => format!(
                "modbus: RTU on {} at {} baud",
                path.display(),
                bus.baud_rate
            ),
            None => format!("modbus: TCP to {}", bus.address.as_deref().unwrap_or("?")),
        };
        lines.push(format!("{line}: {}", devices.join(", ")));
    }
    let classes: Vec<&str> = c.device_classes.iter().map(|d| d.name.as_str()).collect();
    lines.push(format!(
        "device classes: {}",
        if classes.is_empty() {
            "none (every device gets the default rules)".to_string()
        } else {
            classes.join(", ")
        }
    ));
    if !c.workspaces.is_empty() {
        lines.push(format!(
            "workspaces: {}",
            c.workspaces
                .iter()
                .map(|w| format!("{} ({} sensor(s))", w.id, w.sensors.len()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !c.groups.is_empty() {
        lines.push(format!("groups: {}", c.groups.len()));
    }
    for e in c.all_endpoints() {
        let events = if e.events.is_empty() || e.events.iter().all(|t| t == "*") {
            "every event".to_string()
        } else {
            e.events.join(", ")
        };
        let state = if e.active { "" } else { " (inactive)" };
        lines.push(format!(
            "endpoint {}{state}: {} — {events}",
            e.name,
            redact_url(&e.url)
        ));
    }
    let listen = &c.telemetry.listen;
    lines.push(if listen.is_empty() {
        "listener: none (no /healthz, metrics, API or console)".into()
    } else {
        format!(
            "listener: {listen} ({}): /healthz, /metrics, the API and the console",
            if c.telemetry.tls_cert.is_some() {
                "HTTPS"
            } else {
                "HTTP, loopback"
            }
        )
    });
    if let Some(push) = &c.upstream.push {
        lines.push(format!("upstream push listener: {}", push.listen));
    }
    if let Some(pull) = &c.upstream.pull {
        lines.push(format!("upstream pull: {}", redact_url(&pull.url)));
    }
    lines
}

/// The shipped example's placeholders left in `c`, each said with its key: a secret still
/// `change-me`, a host under `example.com`/`.org`/`.net` or `.example`, a serial port whose
/// device does not exist (`exists` asks the file system).
pub fn placeholders(c: &Config, exists: impl Fn(&std::path::Path) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    let placeholder_host = |url: &str| {
        reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .is_some_and(|h| {
                ["example.com", "example.org", "example.net", "example"]
                    .iter()
                    .any(|d| h == *d || h.ends_with(&format!(".{d}")))
            })
    };
    let webhook = (!c.webhook.url.is_empty()).then_some(&c.webhook);
    for (key, e) in crate::deliver::config::keyed(webhook, &c.endpoints) {
        if e.signing_secrets().iter().any(|s| {
            let s = s.expose().trim();
            s.eq_ignore_ascii_case("change-me") || s.eq_ignore_ascii_case("changeme")
        }) {
            found.push(format!("{key}.secret: still the example's placeholder: set the real one (in edgehook.env, as EDGEHOOK_WEBHOOK__SECRET for [webhook])"));
        }
        if placeholder_host(&e.url) {
            found.push(format!(
                "{key}.url: an example host ({})",
                redact_url(&e.url)
            ));
        }
    }
    if let Some(pull) = &c.upstream.pull {
        if placeholder_host(&pull.url) {
            found.push(format!(
                "upstream.pull.url: an example host ({})",
                redact_url(&pull.url)
            ));
        }
    }
    for (i, port) in c.serial_ports.iter().enumerate() {
        if !exists(&port.path) {
            found.push(format!(
                "serial_ports[{i}].path: {} does not exist (is the adapter plugged in? `ls /dev/serial/by-id/`)",
                port.path.display()
            ));
        }
    }
    for (i, bus) in c.modbus.buses.iter().enumerate() {
        if let Some(path) = bus.path.as_ref().filter(|p| !exists(p)) {
            found.push(format!(
                "modbus.buses[{i}].path: {} does not exist (is the RS-485 adapter plugged in? `ls /dev/serial/by-id/`)",
                path.display()
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml_str(&format!(
            "gateway_id = \"gw\"\n[mqtt]\npresets = [\"zigbee2mqtt\"]\n[webhook]\nurl = \"https://hooks.acme.io/in\"\nsecret = \"s3cret-value\"\n{extra}"
        ))
        .unwrap()
    }

    /// (configuration, what is said). The example's placeholders are found, with their keys;
    /// a real configuration has none.
    #[test]
    fn the_examples_placeholders_are_found_with_their_keys() {
        let serial =
            |path: &str| format!("[[serial_ports]]\npath = \"{path}\"\nframing = \"text\"\n");
        let cases: Vec<(String, Vec<&str>)> = vec![
            (String::new(), vec![]),
            (
                "[[endpoints]]\nname = \"ops\"\nurl = \"https://ops.example.com/hook\"\nsecret = \"change-me\"\n".into(),
                vec!["endpoints[0].secret", "endpoints[0].url"],
            ),
            (
                "[[endpoints]]\nname = \"x\"\nurl = \"https://gw.example/hook\"\nsecret = \"fine\"\n".into(),
                vec!["endpoints[0].url"],
            ),
            (
                "[[endpoints]]\nname = \"x\"\nurl = \"https://notexample.com/hook\"\nsecret = \"fine\"\n".into(),
                vec![],
            ),
            (serial("/dev/ttyGONE"), vec!["serial_ports[0].path"]),
            (serial("/dev/ttyHERE"), vec![]),
        ];
        for (extra, want) in cases {
            let found = placeholders(&config(&extra), |p| p.ends_with("ttyHERE"));
            let keys: Vec<&str> = found.iter().map(|f| f.split(':').next().unwrap()).collect();
            assert_eq!(keys, want, "{extra}: {found:?}");
        }
        let example = Config::from_toml_str(
            "gateway_id = \"gw\"\n[mqtt]\npresets = [\"shelly\"]\n[webhook]\nurl = \"https://events.example.com/edgehook\"\nsecret = \"change-me\"\n",
        )
        .unwrap();
        let found = placeholders(&example, |_| true);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|f| !f.contains("change-me")),
            "the secret is not repeated"
        );
    }

    #[test]
    fn the_plan_names_what_will_run() {
        let c = config(
            "[[endpoints]]\nname = \"ops\"\nurl = \"https://ops.acme.io/h?token=x\"\nsecret = \"y\"\nevents = [\"device.*\"]\n",
        );
        let plan = plan(&c).join("\n");
        for needle in [
            "gateway gw",
            "zigbee2mqtt/{device...}",
            "(presets: zigbee2mqtt)",
            "endpoint default: https://hooks.acme.io/in — every event",
            "endpoint ops: https://ops.acme.io/h",
            "— device.*",
            "listener: 127.0.0.1:9187",
        ] {
            assert!(plan.contains(needle), "{needle} in:\n{plan}");
        }
        assert!(!plan.contains("token=x"), "{plan}");
    }
}
