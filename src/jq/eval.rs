//! A filter compiled and run by jaq in this process: what the worker ([`super::worker`]) runs,
//! and how the daemon checks a filter's code when the configuration loads. Never given input
//! from outside in the daemon itself: jaq bounds neither time, memory nor recursion.
//!
//! A filter is a function of its input alone, so that the same input always gives the same
//! output (a retried webhook sends the same bytes; a redelivered message maps the same way):
//! jq's standard library is there (`map`, `select`, `to_entries`, `test`, `@base64`,
//! `strftime`, `fromdate`, ...), but what reads the clock, the environment, the local time
//! zone or further input (`now`, `env`, `$ENV`, `localtime`, `strflocaltime`, `input`) is not:
//! a filter that uses one does not compile. `halt` fails the filter (it must not stop the
//! daemon); `debug` and `stderr` write nothing. A filter gives at most one value.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::native::Fun;
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Cv, Error, Exn, ValXs, Vars};
use jaq_json::Val;

use super::RunError;

type Data = data::JustLut<Val>;

/// Natives left out, which no definition uses: a filter that calls one does not compile.
/// They read the clock, the environment or the local time zone.
const LEFT_OUT: [&str; 4] = ["now", "env", "localtime", "strflocaltime"];
/// Natives the standard library's definitions use, made harmless: `halt` fails the filter
/// (it would stop the daemon), `debug` and `stderr` write nothing.
const FAILS: [&str; 1] = ["halt"];
const SILENT: [&str; 2] = ["debug_empty", "stderr_empty"];

fn fails(_: Cv<'_, Data>) -> ValXs<'_, Val> {
    Box::new(core::iter::once(Err(Exn::from(Error::str(
        "halt is not available here",
    )))))
}

fn silent(_: Cv<'_, Data>) -> ValXs<'_, Val> {
    Box::new(core::iter::empty())
}

/// `fromjson` with the daemon's nesting bound ([`super::depth`]): jaq's reader recurses once
/// per level, so a device's string of 20,000 `[` would overflow the worker's stack.
fn fromjson(cv: Cv<'_, Data>) -> ValXs<'_, Val> {
    let fail =
        |e: String| -> ValXs<'_, Val> { Box::new(core::iter::once(Err(Exn::from(Error::str(e))))) };
    let bytes = match cv.1.try_as_utf8_bytes_owned() {
        Ok(bytes) => bytes,
        Err(e) => return Box::new(core::iter::once(Err(Exn::from(e)))),
    };
    if super::depth::deeper_than(&bytes, super::depth::MAX_DEPTH) {
        return fail(format!(
            "cannot parse a string as JSON: it nests deeper than {} arrays and objects",
            super::depth::MAX_DEPTH
        ));
    }
    let values: Vec<_> = jaq_json::read::parse_many(&bytes)
        .map(|r| {
            r.map_err(|e| Exn::from(Error::str(format!("cannot parse a string as JSON: {e}"))))
        })
        .collect();
    Box::new(values.into_iter())
}

/// The natives a filter has.
fn natives() -> impl Iterator<Item = Fun<Data>> {
    jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| !LEFT_OUT.contains(name))
        .map(|(name, binds, native)| {
            if name == "fromjson" {
                jaq_core::native::run::<Data>((name, binds, fromjson))
            } else if FAILS.contains(&name) {
                jaq_core::native::run::<Data>((name, binds, fails))
            } else if SILENT.contains(&name) {
                jaq_core::native::run::<Data>((name, binds, silent))
            } else {
                (name, binds, native)
            }
        })
}

/// A compiled filter.
pub struct Program {
    filter: jaq_core::Filter<Data>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("jq::Program")
    }
}

impl Program {
    /// Compile `code`; the error says what is wrong (it `does not parse: ...`, it `uses what
    /// is not defined here: ...`).
    pub fn compile(code: &str) -> Result<Program, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errors| {
                let what: Vec<String> = errors.into_iter().map(|(_, e)| format!("{e:?}")).collect();
                format!("does not parse: {}", what.join("; "))
            })?;
        let filter = Compiler::default()
            .with_funs(natives())
            .compile(modules)
            .map_err(|errors| {
                let names: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, e)| e.into_iter().map(|(name, _)| format!("`{name}`")))
                    .collect();
                format!(
                    "uses what is not defined here: {} (the clock, the environment and input are left out: a filter is a function of its input)",
                    names.join(", ")
                )
            })?;
        Ok(Program { filter })
    }

    /// The filter's value for the JSON text `input`, as JSON text; `None` when it gives
    /// nothing (`empty`, `select` false).
    pub fn run(&self, input: &[u8]) -> Result<Option<Vec<u8>>, RunError> {
        let input =
            jaq_json::read::parse_single(input).map_err(|e| RunError::Input(e.to_string()))?;
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, input)).map(unwrap_valr).take(2);
        let first = match outputs.next() {
            None => return Ok(None),
            Some(Err(e)) => return Err(RunError::Failed(e.to_string())),
            Some(Ok(v)) => v,
        };
        if outputs.next().is_some() {
            return Err(RunError::Many);
        }
        Ok(Some(first.to_string().into_bytes()))
    }
}
