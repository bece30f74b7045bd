//! An error with its causes, printed once.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, `": "`-separated:
/// `cannot read a.toml: No such file or directory (os error 2)`.
///
/// Use it wherever an error is printed or logged (`error = %ErrorChain(&e)`):
/// an error's own `Display` does not repeat its source (the rustls/thiserror
/// convention), so printing only `Display` would drop the causes, and
/// printing a `Display` that embedded its source as well would say
/// everything twice.
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Report the error a command ended with, once, on stderr: `error: ` and
/// the chain for the text format; under `--log-format json`, one JSON log
/// line at level ERROR with the chain in `error` (so every stderr line
/// stays parseable). Call after [`crate::init_logging`].
pub fn report_error(format: crate::LogFormat, e: &(dyn Error + 'static)) {
    match format {
        crate::LogFormat::Text => eprintln!("error: {}", ErrorChain(e)),
        crate::LogFormat::Json => tracing::error!(error = %ErrorChain(e), "exiting with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot read a.toml")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_once_in_order() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(ErrorChain(&e).to_string(), "cannot read a.toml: disk on fire");
    }
}
