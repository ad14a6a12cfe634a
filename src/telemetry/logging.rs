//! Logs: stderr, one line per fact with structured fields. Under systemd (`JOURNAL_STREAM`
//! set) lines carry no timestamp or colour, since journald adds its own, and start with their
//! syslog priority (`<4>` for a warning) instead of a level word, which journald records.

/// Set up the global tracing subscriber. `EDGEHOOK_LOG` (or `RUST_LOG`) selects levels.
pub fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (name, value) = match std::env::var("EDGEHOOK_LOG") {
        Ok(v) => ("EDGEHOOK_LOG", Some(v)),
        Err(_) => ("RUST_LOG", std::env::var("RUST_LOG").ok()),
    };
    let (filter, refused) = match directives(value.as_deref().unwrap_or("")) {
        Ok(filter) => (filter, None),
        Err(why) => (
            directives("").unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO)),
            Some(why),
        ),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false)
            .with_ansi(false)
            .with_target(false);
        registry
            .with(layer.with_ansi(false).event_format(JournalPriority(format)))
            .init();
    } else {
        registry
            .with(layer.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init();
    }
    if let Some(why) = refused {
        tracing::warn!("{name} is not understood ({why}); logging at info. It takes levels (error, warn, info, debug, trace, off) and target=level directives, comma-separated: EDGEHOOK_LOG=info,edgehook::deliver=debug");
    }
}

/// The log filter of `text`: comma-separated `level` and `target=level` directives, after
/// the daemon's own (`rumqttd` off, `sled` at warn; the text can change them). A bare word
/// that is not a level is refused, not taken as a target (which would turn every other log
/// off): `EDGEHOOK_LOG=degub` must not silence the daemon. Nothing (unset, empty) is info.
fn directives(text: &str) -> Result<tracing_subscriber::filter::Targets, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let text = if text.trim().is_empty() { "info" } else { text };
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!("`{directive}`: `{level}` is not a level"));
        }
    }
    format!("rumqttd=off,sled=warn,{text}")
        .parse()
        .map_err(|e| format!("{e}"))
}

/// Under journald: each line starts with its syslog priority (`<3>` error, `<4>` warning,
/// `<6>` info, `<7>` debug), which journald strips and records, so `journalctl -p warning` works.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::directives;
    use tracing::Level;

    #[test]
    fn a_log_filter_takes_levels_and_target_directives_and_refuses_the_rest() {
        // (text, Ok: whether (target, level) is enabled for each probe) or the refusal's words
        let probes = [
            ("edgehook::deliver", Level::INFO),
            ("edgehook::deliver", Level::DEBUG),
            ("edgehook::outbox", Level::INFO),
            ("sled::pagecache", Level::INFO),
            ("rumqttd::router", Level::ERROR),
        ];
        let table: [(&str, Result<[bool; 5], &str>); 9] = [
            ("", Ok([true, false, true, false, false])),
            ("info", Ok([true, false, true, false, false])),
            ("DEBUG", Ok([true, true, true, false, false])),
            (
                "info,edgehook::deliver=debug",
                Ok([true, true, true, false, false]),
            ),
            ("warn,sled=info", Ok([false, false, false, true, false])),
            ("edgehook=trace", Ok([true, true, true, false, false])),
            ("degub", Err("`degub` is not a level")),
            (
                "info,edgehook::deliver",
                Err("`edgehook::deliver` is not a level"),
            ),
            ("edgehook=loud", Err("`loud` is not a level")),
        ];
        for (text, want) in table {
            let got = directives(text)
                .map(|f| probes.map(|(target, level)| f.would_enable(target, &level)));
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text:?}"),
                (Err(why), Err(words)) => assert!(why.contains(words), "{text:?}: {why}"),
                (got, want) => panic!("{text:?}: {got:?}, want {want:?}"),
            }
        }
    }
}
