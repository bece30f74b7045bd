//! The tracing subscriber every binary installs.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines on stderr are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event: time, level, target, message,
    /// then `key=value` fields. Coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers: `timestamp` (RFC 3339),
    /// `level`, `target`, `message` and the event's fields as top-level keys.
    Json,
}

/// The logging flags of every binary (flattened into its `Cli`).
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr: `text` for people, `json` (one object per
    /// line) for log shippers. `RUST_LOG` sets the filter; colour appears
    /// only on a terminal, and never with `NO_COLOR` set.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Whether to write ANSI colour codes: only to a terminal, and not when
/// `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
/// Everything else (a file, a pipe, journald) gets plain text.
pub fn use_colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Install the global subscriber on stderr. `default_filter` applies when
/// `RUST_LOG` is unset or invalid (e.g. `"info,quinn=warn,rustls=warn"`).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
            builder.with_ansi(colour).init();
        }
        // The JSON writer never colours, whatever the terminal.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None), "files and pipes get plain text");
    }
}
