//! SIGTERM and SIGINT as a stop request for the daemon.
//!
//! Why not let the signal kill the process: a member that just vanishes
//! sends no QUIC close, so the aggregator only notices at its idle timeout
//! (about 35 s with keep-alives), and the round in progress stalls that long
//! for everyone. On a stop request the driver closes the connection with a
//! code and waits briefly for the close to leave (see
//! [`ClientOptions::stop`](crate::ClientOptions::stop)), so the aggregator
//! sees a clean drop at once. A second signal exits immediately, in case
//! that wait ever hangs.

use tokio::sync::watch;

/// A stop request: `None` until a signal arrives, then the signal's name.
pub type StopRequest = watch::Receiver<Option<String>>;

/// Turn the first SIGTERM or SIGINT into a stop request (the receiver turns
/// `Some("SIGTERM")` or `Some("SIGINT")`); a second one exits the process
/// at once with status 1. Call inside a tokio runtime.
pub fn stop_on_signals() -> std::io::Result<StopRequest> {
    let (tx, rx) = watch::channel(None);
    let mut signals = Signals::new()?;
    tokio::spawn(async move {
        let name = signals.next().await;
        tracing::info!(signal = name, "stop requested; closing the connection to the aggregator");
        let _ = tx.send(Some(name.to_string()));
        let again = signals.next().await;
        eprintln!("{again} again: exiting at once");
        std::process::exit(1);
    });
    Ok(rx)
}

#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
