//! The thin async driver around a member state machine
//! ([`tessera_protocol::Participant`], or a wrapper of one): dial out (with backoff),
//! move frames, run training and evaluation on a bounded worker pool, record
//! every outgoing frame in the egress ledger before it leaves, and reconnect
//! after a network loss or an aggregator restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_core::{AggregatorMsg, CodecError, EvalMetrics, Limits, encode_frame};
use tessera_learn::LocalModel;
use tessera_transport::{BackoffPolicy, Dialer, FrameSender, TransportError, close_code, connect_with_backoff};
use tokio::sync::{Semaphore, mpsc};

use crate::signals::StopRequest;

/// How long a stopping member waits for its close to leave (the endpoint
/// to go idle) before it returns anyway. On a live path the close leaves
/// within a round trip; the draining period after it is three probe
/// timeouts, well under this on any working network.
pub const CLOSE_FLUSH: Duration = Duration::from_secs(2);

use crate::egress::{EgressError, EgressLedger};
use tessera_protocol::member::{Event, LocalFailure, MemberMachine, Output, TrainedUpdate};

/// How the driver runs a member; the daemon uses the defaults.
#[derive(Clone)]
pub struct ClientOptions {
    /// Frame and chunk size limits for encoding outgoing messages.
    pub limits: Limits,
    /// Delays between dial attempts (at start and after a lost connection).
    pub backoff: BackoffPolicy,
    /// Reconnect after the connection drops (daemon); the simulator's
    /// members simply stop.
    pub reconnect: bool,
    /// Bounds concurrent local work (training, evaluation) across all
    /// members sharing it: one permit each (the default holds one).
    pub workers: Arc<Semaphore>,
    /// A stop request (the daemon's: SIGTERM or SIGINT, from
    /// [`stop_on_signals`](crate::stop_on_signals)). When it turns `Some`,
    /// the member closes its connection with [`close_code::NORMAL`], waits
    /// up to [`CLOSE_FLUSH`] for the close to leave, and returns
    /// [`ClientExit::Stopped`]; while dialling, it just returns. `None`:
    /// never stopped from outside.
    pub stop: Option<StopRequest>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            backoff: BackoffPolicy::default(),
            reconnect: true,
            workers: Arc::new(Semaphore::new(1)),
            stop: None,
        }
    }
}

/// Why the member stopped with an error rather than a [`ClientExit`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Dialing failed for good: at once on an admission refusal, a
    /// certificate failure or a bad configuration, otherwise once the
    /// backoff policy's attempts are spent.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Nothing may leave unrecorded, so a ledger that cannot be written
    /// (a full disk, a read-only mount) stops the member; reconnecting
    /// would not fix it.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// An outgoing message exceeds the limits; sending part of it is not an option.
    #[error("could not encode an outgoing message")]
    Encode(#[from] CodecError),
}

/// How the member's run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientExit {
    /// The aggregator said the run is over.
    Shutdown {
        /// The aggregator's reason.
        reason: String,
    },
    /// The connection closed and reconnecting is off.
    Disconnected {
        /// What closed it.
        reason: String,
    },
    /// A stop request ([`ClientOptions::stop`]) ended the run on this side;
    /// the connection was closed gracefully.
    Stopped {
        /// The request's reason (the signal's name).
        reason: String,
    },
}

enum Work {
    Trained(u64, Result<TrainedUpdate, LocalFailure>),
    Evaluated(u64, Result<EvalMetrics, LocalFailure>),
    Counted(u64, Result<tessera_core::LocalStatistics, LocalFailure>),
}

/// Why a connection's loop stopped, other than the run's end.
enum Stop {
    /// The connection is gone: reconnect (daemon) or stop (simulator).
    Lost(String),
    /// The member cannot go on on any connection.
    Fatal(ClientError),
}

impl Stop {
    /// A live connection's failure. The aggregator closing it as an
    /// admission refusal (revoked, no longer a member) is final: dialling
    /// again would only be refused, so the member stops with that error
    /// instead of retrying forever.
    fn from_transport(e: TransportError) -> Self {
        if matches!(e, TransportError::Refused { .. }) {
            Stop::Fatal(ClientError::Transport(e))
        } else {
            Stop::Lost(e.to_string())
        }
    }
}

impl From<ClientError> for Stop {
    fn from(e: ClientError) -> Self {
        Stop::Fatal(e)
    }
}

/// Everything the driver carries across connections besides the
/// participant: where local work runs, where egress is recorded, and what
/// the run's last messages said.
struct Member<'a, M> {
    model: Arc<Mutex<M>>,
    egress: &'a mut EgressLedger,
    opts: ClientOptions,
    work_tx: mpsc::UnboundedSender<Work>,
    /// The aggregator ended the run, with this reason.
    shutdown: Option<String>,
}

/// Run the member until the aggregator shuts the run down: dial with
/// `opts.backoff`, hand every frame to `participant`, run the training and
/// evaluation it asks for on `model` (one [`ClientOptions::workers`] permit
/// each), and record every outgoing frame in `egress` before sending it.
/// After a lost connection it dials again when `opts.reconnect` is set and
/// returns [`ClientExit::Disconnected`] otherwise.
pub async fn run<P, M>(
    dialer: Dialer,
    participant: &mut P,
    model: Arc<Mutex<M>>,
    egress: &mut EgressLedger,
    opts: ClientOptions,
) -> Result<ClientExit, ClientError>
where
    P: MemberMachine,
    M: LocalModel,
{
    let (work_tx, mut work_rx) = mpsc::unbounded_channel::<Work>();
    let mut stop_rx = opts.stop.clone();
    let mut member = Member { model, egress, opts, work_tx, shutdown: None };
    loop {
        let conn = tokio::select! {
            conn = connect_with_backoff(&dialer, &member.opts.backoff) => conn?,
            reason = stop_requested(&mut stop_rx) => return Ok(ClientExit::Stopped { reason }),
        };
        let (mut tx, mut rx) = conn.split();
        tracing::info!(member = %participant.member(), "connected to the aggregator");
        participant.hello();
        let mut stop = member.flush(participant, &mut tx).await.err();
        while stop.is_none() && member.shutdown.is_none() {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Ok(Some(payload)) => match payload.decode::<AggregatorMsg>() {
                        Ok(msg) => { let _ = participant.handle(msg); }
                        Err(e) => stop = Some(Stop::Lost(format!("undecodable frame from the aggregator: {e}"))),
                    },
                    Ok(None) => stop = Some(Stop::Lost("aggregator closed the connection".into())),
                    Err(e) => stop = Some(Stop::from_transport(e)),
                },
                Some(done) = work_rx.recv() => match done {
                    Work::Trained(round, r) => participant.training_done(round, r),
                    Work::Evaluated(round, r) => participant.evaluation_done(round, r),
                    Work::Counted(round, r) => participant.statistics_done(round, r),
                },
                reason = stop_requested(&mut stop_rx) => {
                    tracing::info!(member = participant.member(), %reason, "stopping; closing the connection");
                    tx.close_gracefully(close_code::NORMAL, &format!("member stopping ({reason})"), CLOSE_FLUSH).await;
                    return Ok(ClientExit::Stopped { reason });
                }
            }
            if stop.is_none() {
                stop = member.flush(participant, &mut tx).await.err();
            }
        }
        if let Some(reason) = member.shutdown.take() {
            let _ = tx.finish().await;
            return Ok(ClientExit::Shutdown { reason });
        }
        let reason = match stop {
            Some(Stop::Fatal(e)) => {
                tracing::error!(member = %participant.member(), error = %tessera_cli::ErrorChain(&e), "stopping; not reconnecting");
                let _ = tx.finish().await;
                return Err(e);
            }
            Some(Stop::Lost(reason)) => reason,
            None => "the connection ended".to_string(),
        };
        tracing::warn!(member = %participant.member(), %reason, "connection lost");
        if !member.opts.reconnect {
            return Ok(ClientExit::Disconnected { reason });
        }
    }
}

impl<M: LocalModel> Member<'_, M> {
    /// Carry out everything the participant asked for. A transport error
    /// loses the connection; an egress or encoding failure is fatal.
    async fn flush<P: MemberMachine>(&mut self, participant: &mut P, tx: &mut FrameSender) -> Result<(), Stop> {
        while let Some(out) = participant.poll_output() {
            match out {
                Output::Send(msg) => {
                    let frame = encode_frame(&msg, &self.opts.limits).map_err(ClientError::from)?;
                    self.egress.record(msg.round(), msg.kind().as_str(), &frame).map_err(ClientError::from)?;
                    tx.send(frame).await.map_err(Stop::from_transport)?;
                }
                Output::Train { round, model: params, mut settings, dp } => {
                    settings.seed = member_seed(settings.seed, participant.member());
                    self.spawn_work(
                        move |m| {
                            Work::Trained(
                                round,
                                m.train(&params, &settings, dp.as_ref()).map_err(|e| LocalFailure::from_error(&e)),
                            )
                        },
                        move |e| Work::Trained(round, Err(LocalFailure::new(format!("training task failed: {e}")))),
                    );
                }
                Output::Evaluate { round, model: params } => {
                    self.spawn_work(
                        move |m| Work::Evaluated(round, m.evaluate(&params).map_err(|e| LocalFailure::from_error(&e))),
                        move |e| Work::Evaluated(round, Err(LocalFailure::new(format!("evaluation task failed: {e}")))),
                    );
                }
                Output::Statistics { round, release } => {
                    self.spawn_work(
                        move |m| Work::Counted(round, m.statistics(&release).map_err(|e| LocalFailure::from_error(&e))),
                        move |e| Work::Counted(round, Err(LocalFailure::new(format!("statistics task failed: {e}")))),
                    );
                }
                Output::Event(ev) => match ev {
                    Event::Refused { round, reason } => {
                        tracing::warn!(member = %participant.member(), round, %reason, "refused an aggregator request");
                        self.egress.record_refusal(round, &reason).map_err(ClientError::from)?;
                    }
                    Event::Shutdown { reason } => {
                        tracing::info!(member = %participant.member(), %reason, "run finished");
                        self.shutdown = Some(reason);
                    }
                    Event::PrivacyRefunded { round, epsilon } => tracing::info!(
                        member = %participant.member(),
                        round,
                        epsilon,
                        "the round ended before this member's update left: its privacy charge is refunded"
                    ),
                    Event::RoundEnded { round, accepted, reason } => {
                        tracing::info!(
                            member = %participant.member(),
                            round,
                            accepted,
                            reason = (!reason.is_empty()).then_some(reason.as_str()),
                            "round ended"
                        )
                    }
                    other => tracing::debug!(member = %participant.member(), event = ?other),
                },
            }
        }
        Ok(())
    }

    /// Run `job` on the local model on a blocking worker, bounded by the
    /// shared worker pool, and hand its result back to the run loop.
    fn spawn_work(
        &self,
        job: impl FnOnce(&mut M) -> Work + Send + 'static,
        failed: impl FnOnce(String) -> Work + Send + 'static,
    ) {
        let (m, w, workers) = (self.model.clone(), self.work_tx.clone(), self.opts.workers.clone());
        tokio::spawn(async move {
            let _permit = workers.acquire_owned().await;
            let done = tokio::task::spawn_blocking(move || match m.lock() {
                Ok(mut m) => Ok(job(&mut m)),
                Err(_) => Err("local model poisoned by an earlier panic".to_string()),
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            let _ = w.send(done.unwrap_or_else(failed));
        });
    }
}

/// The reason of the stop request once there is one; never ready without
/// a request channel (or once its sender is gone without a request).
async fn stop_requested(rx: &mut Option<StopRequest>) -> String {
    if let Some(r) = rx {
        loop {
            if let Some(reason) = r.borrow_and_update().clone() {
                return reason;
            }
            if r.changed().await.is_err() {
                break;
            }
        }
        *rx = None;
    }
    std::future::pending().await
}

/// Each member shuffles and samples with its own stream, derived from the
/// round seed the aggregator chose and the member's name.
pub(crate) fn member_seed(round_seed: u64, member: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::new().chain_update(round_seed.to_le_bytes()).chain_update(member.as_bytes()).finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}
