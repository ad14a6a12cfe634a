//! Templates: an endpoint's body made by a jq filter (run by jaq) over the stored envelope
//! (`{"id","type","timestamp","gateway","data"}`), so the next receiver's shape is
//! configuration, not code.
//!
//! - The filter gives one value per event: that value, as JSON, is the body. `empty` (say,
//!   `select(.type != "device.offline")`) sends nothing for that event; more than one value
//!   is an error.
//! - Deterministic: every retry sends the same bytes. jq's standard library is there
//!   (`map`, `select`, `to_entries`, `test`, `@base64`, `strftime`, `fromdate`, ...) but what
//!   reads the clock, the environment, the local time zone or input (`now`, `env`, `$ENV`,
//!   `localtime`, `strflocaltime`, `input`) is not: a template using one does not compile.
//!   `halt` fails the template (it must not stop the daemon); `debug` and `stderr` write
//!   nothing.
//! - Compiled when the configuration is checked (`check-config`, start) and run there on a
//!   sample of every event type the endpoint subscribes to, so a template that fails on an
//!   event type fails the check, with the type and the error.
//! - A template that fails on a real event makes that event a dead letter with the error
//!   (retrying would fail the same way).

use jaq_core::load::{Arena, File, Loader};
use jaq_core::native::Fun;
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Cv, Error, Exn, ValXs, Vars};
use jaq_json::Val;

type Data = data::JustLut<Val>;

/// Natives left out, which no definition uses: a template that calls one does not compile.
/// They read the clock, the environment or the local time zone.
const LEFT_OUT: [&str; 4] = ["now", "env", "localtime", "strflocaltime"];
/// Natives the standard library's definitions use, made harmless: `halt` fails the template
/// (it would stop the daemon), `debug` and `stderr` write nothing.
const FAILS: [&str; 1] = ["halt"];
const SILENT: [&str; 2] = ["debug_empty", "stderr_empty"];

fn fails(_: Cv<'_, Data>) -> ValXs<'_, Val> {
    Box::new(core::iter::once(Err(Exn::from(Error::str(
        "halt is not available in a template",
    )))))
}

fn silent(_: Cv<'_, Data>) -> ValXs<'_, Val> {
    Box::new(core::iter::empty())
}

/// The natives a template has.
fn natives() -> impl Iterator<Item = Fun<Data>> {
    jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| !LEFT_OUT.contains(name))
        .map(|(name, binds, native)| {
            if FAILS.contains(&name) {
                jaq_core::native::run::<Data>((name, binds, fails))
            } else if SILENT.contains(&name) {
                jaq_core::native::run::<Data>((name, binds, silent))
            } else {
                (name, binds, native)
            }
        })
}

/// Values a template may give for one event.
const MAX_OUTPUTS: usize = 1;

/// A compiled template.
pub struct Template {
    filter: jaq_core::Filter<Data>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Template")
    }
}

impl Template {
    /// Compile `code`; the error says what is wrong (a parse error, an undefined filter).
    pub fn compile(code: &str) -> Result<Template, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = natives();
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errors| {
                let what: Vec<String> = errors.into_iter().map(|(_, e)| format!("{e:?}")).collect();
                format!("the template does not parse: {}", what.join("; "))
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let names: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, e)| e.into_iter().map(|(name, _)| format!("`{name}`")))
                    .collect();
                format!(
                    "the template uses what is not defined here: {} (the clock, the environment and input are left out: a template is a function of the event)",
                    names.join(", ")
                )
            })?;
        Ok(Template { filter })
    }

    /// The body for the stored envelope `stored`; `None` when the template gives nothing.
    pub fn render(&self, stored: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let input = jaq_json::read::parse_single(stored)
            .map_err(|e| format!("stored event is not JSON: {e}"))?;
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self
            .filter
            .id
            .run((ctx, input))
            .map(unwrap_valr)
            .take(MAX_OUTPUTS + 1);
        let first = match outputs.next() {
            None => return Ok(None),
            Some(Err(e)) => return Err(format!("template: {e}")),
            Some(Ok(v)) => v,
        };
        if outputs.next().is_some() {
            return Err("template: it gives more than one value for this event (a body is one value; wrap them in [...])".into());
        }
        Ok(Some(first.to_string().into_bytes()))
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
