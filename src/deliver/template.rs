//! Templates: an endpoint's body made by a jq filter (run by jaq) over the stored envelope
//! (`{"id","type","timestamp","gateway","data"}`), so the next receiver's shape is
//! configuration, not code.
//!
//! - The filter gives one value per event: that value, as JSON, is the body. `empty` (say,
//!   `select(.type != "device.offline")`) sends nothing for that event; more than one value
//!   is an error.
//! - Deterministic: every retry sends the same bytes ([`crate::jq`]: no clock, environment,
//!   time zone or input; `halt` fails the template; `debug` writes nothing).
//! - Compiled when the configuration is checked (`check-config`, start) and run there on a
//!   sample of every event type the endpoint subscribes to, so a template that fails on an
//!   event type fails the check, with the type and the error.
//! - A template that fails on a real event makes that event a dead letter with the error
//!   (retrying would fail the same way).

use crate::jq::Filter;

/// A compiled template.
#[derive(Debug)]
pub struct Template {
    filter: Filter,
}

impl Template {
    /// Compile `code`; the error says what is wrong (a parse error, an undefined filter).
    pub fn compile(code: &str) -> Result<Template, String> {
        Filter::compile(code, crate::jq::Budget::TEMPLATE)
            .map(|filter| Template { filter })
            .map_err(|e| format!("the template {e}"))
    }

    /// The body for the stored envelope `stored`; `None` when the template gives nothing.
    pub fn render(&self, stored: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.filter.run(stored).map_err(|e| match e {
            crate::jq::RunError::Input(e) => format!("stored event is not JSON: {e}"),
            crate::jq::RunError::Failed(e) => format!("template: {e}"),
            crate::jq::RunError::Many => "template: it gives more than one value for this event (a body is one value; wrap them in [...])".into(),
            crate::jq::RunError::Budget(e) => format!("template: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READING: &str = r#"{"id":"019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a23","type":"sensor.reading.updated","timestamp":"2026-11-23T10:15:02.481Z","gateway":"gw-1","data":{"device_id":"occ-1","fields":{"presence":true,"temperature":21.5},"changed":["presence"]}}"#;

    fn render(code: &str) -> Result<Option<String>, String> {
        Template::compile(code)?
            .render(READING.as_bytes())
            .map(|b| b.map(|b| String::from_utf8(b).unwrap()))
    }

    #[test]
    fn templates_as_a_table() {
        #[rustfmt::skip]
        let table: &[(&str, Result<Option<&str>, &str>)] = &[
            (".", Ok(Some(READING))),
            (r#"{event: .type, device: .data.device_id, at: .timestamp}"#,
                Ok(Some(r#"{"event":"sensor.reading.updated","device":"occ-1","at":"2026-11-23T10:15:02.481Z"}"#))),
            (r#".data.fields | to_entries | map({name: .key, value}) "#,
                Ok(Some(r#"[{"name":"presence","value":true},{"name":"temperature","value":21.5}]"#))),
            (r#"{id, kind: (.type | split(".") | .[0])}"#,
                Ok(Some(r#"{"id":"019ab1c2-7d3e-7f41-9a0b-6c2d5e8f1a23","kind":"sensor"}"#))),
            (r#"select(.type == "device.online")"#, Ok(None)),
            (".data.fields | tojson | fromjson | .presence", Ok(Some("true"))),
            (r#".data.fields | tojson"#, Ok(Some(r#""{\"presence\":true,\"temperature\":21.5}""#))),
            (".data.fields[]", Err("more than one value")),
            (".data.device_id | .x", Err("template:")),
            ("{now: now}", Err("`now`")),
            ("env.HOME", Err("`env`")),
            ("$ENV.HOME", Err("not defined")),
            ("input", Err("`input`")),
            ("halt", Err("halt is not available")),
            ("debug | .type", Ok(Some(r#""sensor.reading.updated""#))),
            ("localtime", Err("`localtime`")),
            (r#".timestamp | fromdate | strftime("%Y-%m-%d")"#, Ok(Some(r#""2026-11-23""#))),
            (r#".data.device_id | test("^occ-")"#, Ok(Some("true"))),
            (r#".data.device_id | @base64"#, Ok(Some(r#""b2NjLTE=""#))),
            ("{a: ", Err("does not parse")),
        ];
        for (code, want) in table {
            let got = render(code);
            match (want, &got) {
                (Ok(want), Ok(got)) => assert_eq!(got.as_deref(), *want, "{code}"),
                (Err(part), Err(e)) => assert!(e.contains(part), "{code}: {e}"),
                _ => panic!("{code}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_same_bytes_every_time() {
        let t =
            Template::compile(r#"{fields: .data.fields, keys: (.data.fields | keys)}"#).unwrap();
        let first = t.render(READING.as_bytes()).unwrap();
        for _ in 0..10 {
            assert_eq!(t.render(READING.as_bytes()).unwrap(), first);
        }
    }
}
