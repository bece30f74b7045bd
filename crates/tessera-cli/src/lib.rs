//! `tessera-cli` holds the conventions the three binaries
//! (`tessera-aggregator`, `tessera-client`, `tessera-sim`) share, so they
//! are written once:
//!
//! - [`LogArgs`] and [`init_logging`]: the global `--log-format text|json`
//!   flag, and a tracing subscriber on stderr that writes colour only to a
//!   terminal and never when `NO_COLOR` is set ([`use_colour`]), so log
//!   files and journald get plain text.
//! - [`ErrorChain`] and [`report_error`]: an error printed once, followed by
//!   its `source()` chain. The workspace's error types follow the
//!   rustls/thiserror convention this relies on: an error's `Display` says
//!   what failed at its own level and does not repeat its source; whoever
//!   prints walks the chain.
//! - [`rfc3339_ms`]: timestamps as RFC 3339 UTC, the one format every
//!   command prints.
//! - [`missing_help`]: every argument and subcommand of a clap command tree
//!   that has no help line; [`assert_complete_help`] is what each binary's
//!   unit test calls.
//!
//! It must NOT depend on any other Tessera crate: every crate may use it.

#![warn(missing_docs)]

mod help;
mod logging;
mod report;
mod time;

pub use help::{assert_complete_help, missing_help};
pub use logging::{LogArgs, LogFormat, init_logging, use_colour};
pub use report::{ErrorChain, report_error};
pub use time::rfc3339_ms;
