use std::time::Duration;

use super::*;

#[test]
fn metrics_render_as_prometheus_text() {
    let m = Metrics::default();
    m.source.decode_error("not_json");
    m.deliver
        .endpoint("crm")
        .delivered("device.online", Duration::from_millis(20));
    let text = m.render();
    for line in [
        "edgehook_decode_errors_total{kind=\"not_json\"} 1\n",
        // every kind the source names is there from the start
        "edgehook_decode_errors_total{kind=\"oversize\"} 0\n",
        "edgehook_events_delivered_total{endpoint=\"crm\",type=\"device.online\"} 1\n",
        "edgehook_events_delivered_total{endpoint=\"crm\",type=\"sensor.reading.updated\"} 0\n",
        "edgehook_events_created_total{type=\"workspace.status.updated\"} 0\n",
        "edgehook_delivery_latency_seconds_bucket{endpoint=\"crm\",le=\"0.01\"} 0\n",
        "edgehook_delivery_latency_seconds_bucket{endpoint=\"crm\",le=\"0.025\"} 1\n",
        "edgehook_delivery_latency_seconds_count{endpoint=\"crm\"} 1\n",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    m.outbox.committed(Duration::from_millis(3));
    let text = m.render();
    for line in [
        "edgehook_outbox_commit_seconds_bucket{le=\"0.0025\"} 0\n",
        "edgehook_outbox_commit_seconds_bucket{le=\"0.005\"} 1\n",
        "edgehook_outbox_commit_seconds_bucket{le=\"+Inf\"} 1\n",
        "edgehook_outbox_commit_seconds_sum 0.003\n",
        "edgehook_outbox_commit_seconds_count 1\n",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
}

#[test]
fn readiness_names_what_is_wrong() {
    let m = Metrics::default();
    assert_eq!(m.readiness(true), Ok(()));
    assert_eq!(m.readiness(false), Err("outbox not writable"));
    m.source.set_mqtt_enabled(true);
    assert_eq!(m.readiness(true), Err("mqtt broker not connected"));
    m.source.set_mqtt_connected(true);
    m.outbox.set_full(true);
    assert_eq!(m.readiness(true), Err("outbox full (outbox.max_size)"));
    m.outbox.set_full(false);
    m.deliver.endpoint("crm").set_disabled(true);
    assert!(m.readiness(true).unwrap_err().contains("410 Gone"));
    m.deliver.endpoint("crm").set_disabled(false);
    assert_eq!(m.readiness(true), Ok(()));
}

/// Every metric family and the label names of its series, as dashboards and alerts use them:
/// a change here breaks someone's dashboard, so it is deliberate (and said in the README).
const PINNED: &[(&str, &str)] = &[
    ("edgehook_action_answers_ignored_total", "reason"),
    ("edgehook_dead_letters", ""),
    ("edgehook_dead_letters_bytes", ""),
    ("edgehook_dead_letters_let_go_total", ""),
    ("edgehook_dead_letters_total", "endpoint"),
    ("edgehook_decode_errors_total", "kind"),
    ("edgehook_delivery_attempts_total", "endpoint,result"),
    ("edgehook_delivery_client_errors_total", "endpoint"),
    ("edgehook_delivery_latency_seconds", "endpoint"),
    ("edgehook_delivery_window_bytes", "endpoint"),
    ("edgehook_delivery_window_events", "endpoint"),
    ("edgehook_device_messages_refused_total", "reason"),
    ("edgehook_devices", ""),
    ("edgehook_endpoint_disabled", "endpoint"),
    ("edgehook_endpoint_dropped_total", "endpoint"),
    ("edgehook_endpoint_paused", "endpoint"),
    ("edgehook_endpoint_pending", "endpoint"),
    ("edgehook_events_created_total", "type"),
    ("edgehook_events_delivered_total", "endpoint,type"),
    ("edgehook_events_filtered_total", "endpoint"),
    ("edgehook_events_unrouted_total", ""),
    ("edgehook_messages_received_total", ""),
    ("edgehook_modbus_bus_closures_total", ""),
    ("edgehook_modbus_buses_open", ""),
    ("edgehook_modbus_requests_total", "kind"),
    ("edgehook_mqtt_connected", ""),
    ("edgehook_mqtt_connects_total", ""),
    ("edgehook_mqtt_redeliveries_skipped_total", ""),
    ("edgehook_outbox_bytes", ""),
    ("edgehook_outbox_checkpoints_total", ""),
    ("edgehook_outbox_commit_seconds", ""),
    ("edgehook_outbox_depth", ""),
    ("edgehook_outbox_dropped_total", ""),
    ("edgehook_outbox_full", ""),
    ("edgehook_outbox_max_bytes", ""),
    ("edgehook_outbox_oldest_pending_seconds", "endpoint"),
    ("edgehook_outbox_write_failures_total", ""),
    ("edgehook_serial_frame_errors_total", "kind"),
    ("edgehook_serial_port_closures_total", ""),
    ("edgehook_serial_ports_open", ""),
    ("edgehook_upstream_poll_failures_total", ""),
    ("edgehook_upstream_refused_total", "via,reason"),
];

/// `name{labels}` → (family, label names), with a histogram's series under its family.
fn families(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let series = l.split(' ').next().unwrap_or("");
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let keys: Vec<&str> = labels
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                .filter(|k| *k != "le")
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            (family.to_string(), keys.join(","))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The names and label sets dashboards use, the same before and after the exposition moved
/// from a hand-written renderer to `prometheus-client` (this list was pinned before the move).
#[test]
fn every_metric_name_and_label_set_is_pinned() {
    let m = Metrics::default();
    // what a scrape of a daemon with one endpoint has: delivery's series and the outbox's
    // (read off the store at scrape time)
    m.deliver.endpoint("default");
    m.outbox.set_pending("default", 0, Duration::ZERO);
    let got = families(&m.render());
    let want: Vec<(String, String)> = PINNED
        .iter()
        .map(|(f, l)| (f.to_string(), l.to_string()))
        .collect();
    let shown: Vec<String> = got
        .iter()
        .map(|(f, l)| format!("    (\"{f}\", \"{l}\"),"))
        .collect();
    assert_eq!(got, want, "the metrics now:\n{}", shown.join("\n"));
}
