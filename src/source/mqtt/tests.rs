use super::*;
use serde_json::Value;

#[test]
fn patterns_parse_filter_and_capture() {
    let p = TopicPattern::parse("sensors/{device}/reading").unwrap();
    assert_eq!(p.filter(), "sensors/+/reading");
    assert_eq!(p.capture("sensors/occ-1/reading"), Some("occ-1"));
    assert_eq!(p.capture("sensors/occ-1/other"), None);
    assert_eq!(p.capture("sensors/occ-1/reading/extra"), None);
    assert_eq!(p.capture("sensors/occ-1"), None);

    let p = TopicPattern::parse("+/rooms/{device}/#").unwrap();
    assert_eq!(p.filter(), "+/rooms/+/#");
    assert_eq!(p.capture("site-a/rooms/r1/display/status"), Some("r1"));
    assert_eq!(p.capture("site-a/rooms/r1"), Some("r1"));
    assert_eq!(p.capture("site-a/desks/r1/x"), None);
}

/// `{device...}`: a device id of one or more levels (Zigbee2MQTT friendly names may hold
/// `/`), between what comes before and after it.
#[test]
fn a_device_of_several_levels_as_a_table() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("z/{device...}", "z/lamp", Some("lamp")),
        (
            "z/{device...}",
            "z/Living room/motion",
            Some("Living room/motion"),
        ),
        ("z/{device...}", "z", None),
        ("z/{device...}", "y/lamp", None),
        (
            "z/{device...}/availability",
            "z/a/b/availability",
            Some("a/b"),
        ),
        ("z/{device...}/availability", "z/availability", None),
        ("z/{device...}/availability", "z/a/b/state", None),
        ("+/{device...}/x", "site/a/b/x", Some("a/b")),
    ];
    for (pattern, topic, want) in cases {
        let p = TopicPattern::parse(pattern).unwrap();
        assert_eq!(p.capture(topic), *want, "{pattern} on {topic}");
    }
    assert_eq!(
        TopicPattern::parse("z/{device...}/availability")
            .unwrap()
            .filter(),
        "z/#"
    );
    assert!(TopicPattern::parse("z/{device...}/#").is_err());
    assert!(TopicPattern::parse("z/{device}/{device...}").is_err());
    let exclude = TopicPattern::parse_filter("z/bridge/#").unwrap();
    assert_eq!(exclude.capture("z/bridge/state"), Some(""));
    assert_eq!(exclude.capture("z/lamp"), None);
}

#[test]
fn a_pointer_and_flattening_pick_the_fields() {
    let payload = br#"{"meta":{"id":1},"object":{"t":21.5,"nested":{"a":1}}}"#;
    let got = decode_fields(payload, 1024, "/object", false).unwrap();
    assert_eq!(
        Value::Object(got),
        serde_json::json!({"t": 21.5, "nested": {"a": 1}})
    );
    let got = decode_fields(payload, 1024, "/object", true).unwrap();
    assert_eq!(
        Value::Object(got),
        serde_json::json!({"t": 21.5, "nested.a": 1})
    );
    assert_eq!(
        decode_fields(payload, 1024, "/missing", false),
        Err(DecodeError::NoFields("/missing".into()))
    );
    assert_eq!(
        decode_fields(br#"{"object": 3}"#, 1024, "/object", false),
        Err(DecodeError::NoFields("/object".into()))
    );
}

#[test]
fn bad_patterns_say_why() {
    for (pattern, needle) in [
        ("sensors/all", "no `{device}`"),
        ("{device}/{device}", "more than one"),
        ("a/#/{device}", "last level"),
        ("a/dev{device}", "as a whole level"),
        ("", "empty"),
    ] {
        let e = TopicPattern::parse(pattern).unwrap_err();
        assert!(e.contains(needle), "{pattern}: {e}");
    }
}

/// The decoder of a configuration with these `subscriptions` (TOML inline tables), or the
/// configuration's error.
fn decoder(subscriptions: &str) -> Result<Decoder, String> {
    let text = format!(
        "gateway_id = \"gw\"\n[mqtt]\nsubscriptions = [{subscriptions}]\n[webhook]\nurl = \"http://127.0.0.1:1/\"\nsecret = \"x\"\n"
    );
    let config = crate::config::Config::from_toml_str(&text).map_err(|e| e.to_string())?;
    Decoder::new(&config.mqtt)
}

/// Issue 20: a jq mapping shapes a payload no pointer can (a device's own JSON): fields
/// renamed and picked, a status from a nested value, `empty` for what is no device
/// message, a failure counted as `mapping`; a filter that cannot work is a check-config
/// error naming the key.
#[test]
fn a_jq_mapping_shapes_the_payload_first() {
    let d = decoder(
        r#"{ topic = "v/{device}/data", kind = "reading", jq = 'select(.sensors.t_dc != null) | {presence: (.sensors.pir == 1), temperature: (.sensors.t_dc / 10)}' },
          { topic = "v/{device}/conn", kind = "status", jq = '.link.up' }"#,
    )
    .unwrap();
    let (dev, body) = d
        .decode(
            "v/desk-1/data",
            br#"{"sensors":{"pir":1,"t_dc":215},"rssi":-70}"#,
        )
        .unwrap()
        .unwrap();
    assert_eq!(dev, "desk-1");
    match body {
        InboundBody::Reading { fields, .. } => assert_eq!(
            Value::Object(fields),
            serde_json::json!({"presence": true, "temperature": 21.5})
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.decode("v/desk-1/conn", br#"{"link":{"up":false}}"#)
            .unwrap()
            .unwrap()
            .1,
        InboundBody::Status { online: false }
    );
    // `select` gave nothing: no device message, skipped quietly.
    assert!(d
        .decode("v/desk-1/data", br#"{"sensors":{"pir":0}}"#)
        .unwrap()
        .is_none());
    // The filter fails on this payload (a string divided): a mapping error.
    let e = d
        .decode("v/desk-1/data", br#"{"sensors":{"pir":0,"t_dc":"x"}}"#)
        .unwrap_err();
    assert_eq!(e.kind(), "mapping", "{e}");
    assert_eq!(
        d.decode("v/desk-1/data", b"nope").unwrap_err().kind(),
        "not_json"
    );
    for (jq, kind, want) in [
        ("{a: ", "reading", "does not parse"),
        ("now", "reading", "`now`"),
        (".", "online", "reads no payload"),
    ] {
        let sub = format!("{{ topic = \"v/{{device}}/x\", kind = \"{kind}\", jq = '{jq}' }}");
        let e = decoder(&sub).err().expect("refused");
        assert!(
            e.contains("mqtt.subscriptions[0].jq") && e.contains(want),
            "{jq}: {e}"
        );
    }
}

/// Issue 20: the device id may be in the payload (`device`, a JSON pointer): then the
/// topic needs no `{device}` level and the payload's id wins; a payload without one is a
/// `no_device` decode error.
#[test]
fn the_device_id_may_come_from_the_payload() {
    let d = decoder(
        r#"{ topic = "lora/uplinks", kind = "reading", device = "/dev/eui", fields = "/obj" },
          { topic = "lora/{device}/x", kind = "reading", device = "/id" }"#,
    )
    .unwrap();
    let (dev, _) = d
        .decode("lora/uplinks", br#"{"dev":{"eui":"a1b2"},"obj":{"t":1}}"#)
        .unwrap()
        .unwrap();
    assert_eq!(dev, "a1b2");
    let (dev, _) = d
        .decode("lora/topic-id/x", br#"{"id":42,"t":1}"#)
        .unwrap()
        .unwrap();
    assert_eq!(dev, "42", "the payload's id wins; a number as written");
    assert_eq!(
        d.decode("lora/uplinks", br#"{"obj":{"t":1}}"#)
            .unwrap_err()
            .kind(),
        "no_device"
    );
    for (sub, want) in [
        (
            r#"{ topic = "a/b", kind = "reading", device = "dev" }"#,
            "not a JSON pointer",
        ),
        (
            r#"{ topic = "a/b", kind = "reading" }"#,
            "no `{device}` level",
        ),
    ] {
        let e = decoder(sub).err().expect("refused");
        assert!(
            e.contains("mqtt.subscriptions[0]") && e.contains(want),
            "{sub}: {e}"
        );
    }
}

#[test]
fn decoder_routes_by_topic_and_kind() {
    let config = crate::config::Config::from_toml_str(
        r#"
        gateway_id = "gw"
        [mqtt]
        max_payload_bytes = 64
        subscriptions = [
          { topic = "s/{device}/reading", kind = "reading", metadata_fields = ["seq"] },
          { topic = "s/{device}/status", kind = "status" },
        ]
        [webhook]
        url = "http://127.0.0.1:1/"
        secret = "x"
        "#,
    )
    .unwrap();
    let d = Decoder::new(&config.mqtt).unwrap();
    let (dev, body) = d
        .decode("s/a1/reading", br#"{"t":1,"seq":2}"#)
        .unwrap()
        .unwrap();
    assert_eq!(dev, "a1");
    match body {
        InboundBody::Reading { fields, metadata } => {
            assert_eq!(fields.len(), 2);
            assert_eq!(&*metadata, ["seq".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.decode("s/a1/status", b"offline").unwrap().unwrap().1,
        InboundBody::Status { online: false }
    );
    assert!(d.decode("x/a1/reading", b"{}").unwrap().is_none());
    assert_eq!(
        d.decode("s/a1/reading", b"nope").unwrap_err().kind(),
        "not_json"
    );
    assert_eq!(
        d.decode("s/a1/reading", &[b'1'; 65]).unwrap_err().kind(),
        "oversize"
    );
}
