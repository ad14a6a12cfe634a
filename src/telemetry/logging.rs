//! Logs: stderr, one line per fact with structured fields. Under systemd (`JOURNAL_STREAM`
//! set) lines carry no timestamp or colour, since journald adds its own, and start with their
//! syslog priority (`<4>` for a warning) instead of a level word, which journald records.

/// Set up the global tracing subscriber. `EDGEHOOK_LOG` (or `RUST_LOG`) selects levels.
pub fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("EDGEHOOK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    // `target=level` directives and a bare default level (not EnvFilter's span and field
    // filters, whose regular expressions the daemon would carry only for this).
    let filter: Targets = format!("rumqttd=off,sled=warn,{filter}")
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
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
