//! The thin async driver around a [`Participant`]: dial out (with backoff),
//! move frames, run training and evaluation on a bounded worker pool, record
//! every outgoing frame in the egress ledger before it leaves, and reconnect
//! after a network loss or an aggregator restart.

use std::sync::{Arc, Mutex};

use rand_core::{CryptoRng, RngCore};
use tessera_core::codec::{self, Limits};
use tessera_core::round::{DpSettings, TrainSettings};
use tessera_core::{AggregatorMsg, ClientMsg, EvalMetrics, ModelParams};
use tessera_transport::{BackoffPolicy, Dialer, FrameSender, TransportError, connect_with_backoff};
use tokio::sync::{Semaphore, mpsc};

use crate::egress::{EgressError, EgressLedger};
use crate::participant::{Event, Output, Participant, TrainedUpdate};

/// What a member trains and evaluates. Implementations hold the private
/// data; only parameters and aggregate metrics come out.
pub trait LocalModel: Send + 'static {
    /// Train from `model`. With `dp` (record-level DP), train with DP-SGD
    /// under those settings: the result must already be private.
    fn train(
        &mut self,
        model: &ModelParams,
        settings: &TrainSettings,
        dp: Option<&DpSettings>,
    ) -> Result<TrainedUpdate, String>;
    fn evaluate(&mut self, model: &ModelParams) -> Result<EvalMetrics, String>;
}

#[derive(Clone)]
pub struct ClientOptions {
    pub limits: Limits,
    pub backoff: BackoffPolicy,
    /// Reconnect after the connection drops (daemon); the simulator's
    /// members simply stop.
    pub reconnect: bool,
    /// Bounds concurrent local work across all members sharing it.
    pub workers: Arc<Semaphore>,
    /// Simulator only: consulted with (round, message kind) before each
    /// outgoing round message, to inject dropouts and stragglers.
    pub fault: Option<FaultHook>,
}

/// What a fault-injection hook does to an outgoing message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Send it.
    Pass,
    /// Leave the round in-band: send `Decline` instead and nothing further
    /// of that round except evaluation reports. The aggregator drops the
    /// member at once, so the outcome does not depend on timing.
    Withdraw,
}

/// See [`ClientOptions::fault`].
pub type FaultHook = Arc<dyn Fn(u64, &'static str) -> Fault + Send + Sync>;

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            backoff: BackoffPolicy::default(),
            reconnect: true,
            workers: Arc::new(Semaphore::new(1)),
            fault: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("egress ledger: {0}")]
    Egress(#[from] EgressError),
    #[error("could not encode an outgoing message: {0}")]
    Encode(String),
}

/// How the member's run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientExit {
    /// The aggregator said the run is over.
    Shutdown { reason: String },
    /// The connection closed and reconnecting is off.
    Disconnected { reason: String },
}

enum Work {
    Trained(u64, Result<TrainedUpdate, String>),
    Evaluated(u64, Result<EvalMetrics, String>),
}

/// Run the member until the aggregator shuts the run down.
pub async fn run<R, M>(
    dialer: Dialer,
    participant: &mut Participant<R>,
    model: Arc<Mutex<M>>,
    egress: &mut EgressLedger,
    opts: ClientOptions,
) -> Result<ClientExit, ClientError>
where
    R: RngCore + CryptoRng,
    M: LocalModel,
{
    let (work_tx, mut work_rx) = mpsc::unbounded_channel::<Work>();
    let mut withdrawn = None;
    loop {
        let conn = connect_with_backoff(&dialer, &opts.backoff).await?;
        let (mut tx, mut rx) = conn.split();
        tracing::info!(member = participant.member(), "connected to the aggregator");
        participant.hello();
        let mut shutdown = None;
        let mut lost: Option<String> = None;
        if let Err(e) =
            flush(participant, &mut tx, egress, &model, &work_tx, &opts, &mut shutdown, &mut withdrawn).await
        {
            lost = Some(e);
        }
        while lost.is_none() && shutdown.is_none() {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Ok(Some(payload)) => match payload.decode::<AggregatorMsg>() {
                        Ok(msg) => { let _ = participant.handle(msg); }
                        Err(e) => lost = Some(format!("undecodable frame from the aggregator: {e}")),
                    },
                    Ok(None) => lost = Some("aggregator closed the connection".into()),
                    Err(e) => lost = Some(e.to_string()),
                },
                Some(done) = work_rx.recv() => match done {
                    Work::Trained(round, r) => participant.training_done(round, r),
                    Work::Evaluated(round, r) => participant.evaluation_done(round, r),
                },
            }
            if let Err(e) =
                flush(participant, &mut tx, egress, &model, &work_tx, &opts, &mut shutdown, &mut withdrawn).await
            {
                lost = Some(e);
            }
        }
        if let Some(reason) = shutdown {
            let _ = tx.finish().await;
            return Ok(ClientExit::Shutdown { reason });
        }
        let reason = lost.unwrap_or_default();
        tracing::warn!(member = participant.member(), %reason, "connection lost");
        if !opts.reconnect {
            return Ok(ClientExit::Disconnected { reason });
        }
    }
}

/// Carry out everything the participant asked for. Returns a transport
/// error as text (the caller reconnects); egress failures are fatal because
/// nothing may leave unrecorded.
#[allow(clippy::too_many_arguments)]
async fn flush<R, M>(
    participant: &mut Participant<R>,
    tx: &mut FrameSender,
    egress: &mut EgressLedger,
    model: &Arc<Mutex<M>>,
    work_tx: &mpsc::UnboundedSender<Work>,
    opts: &ClientOptions,
    shutdown: &mut Option<String>,
    withdrawn: &mut Option<u64>,
) -> Result<(), String>
where
    R: RngCore + CryptoRng,
    M: LocalModel,
{
    while let Some(out) = participant.poll_output() {
        match out {
            Output::Send(mut msg) => {
                if let (Some(hook), Some(round)) = (&opts.fault, msg.round()) {
                    let report = matches!(msg, ClientMsg::EvalReport { .. });
                    if *withdrawn == Some(round) && !report {
                        continue;
                    }
                    if hook(round, msg.kind()) == Fault::Withdraw {
                        *withdrawn = Some(round);
                        msg = ClientMsg::Decline { round, reason: "simulated dropout".into() };
                    }
                }
                let frame = codec::encode_frame(&msg, &opts.limits).map_err(|e| e.to_string())?;
                egress.record(msg.round(), msg.kind(), &frame).map_err(|e| format!("egress ledger: {e}"))?;
                tx.send(frame).await.map_err(|e| e.to_string())?;
            }
            Output::Train { round, model: params, mut settings, dp } => {
                settings.seed = member_seed(settings.seed, participant.member());
                let (m, w, workers) = (model.clone(), work_tx.clone(), opts.workers.clone());
                tokio::spawn(async move {
                    let _permit = workers.acquire_owned().await;
                    let r = tokio::task::spawn_blocking(move || {
                        let mut m = m.lock().map_err(|_| "local model poisoned by an earlier panic".to_string())?;
                        m.train(&params, &settings, dp.as_ref())
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("training task failed: {e}")));
                    let _ = w.send(Work::Trained(round, r));
                });
            }
            Output::Evaluate { round, model: params } => {
                let (m, w, workers) = (model.clone(), work_tx.clone(), opts.workers.clone());
                tokio::spawn(async move {
                    let _permit = workers.acquire_owned().await;
                    let r = tokio::task::spawn_blocking(move || {
                        let mut m = m.lock().map_err(|_| "local model poisoned by an earlier panic".to_string())?;
                        m.evaluate(&params)
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("evaluation task failed: {e}")));
                    let _ = w.send(Work::Evaluated(round, r));
                });
            }
            Output::Event(ev) => match ev {
                Event::Refused { round, reason } => {
                    tracing::warn!(member = participant.member(), ?round, %reason, "refused an aggregator request");
                    egress.record_refusal(round, &reason).map_err(|e| format!("egress ledger: {e}"))?;
                }
                Event::Shutdown { reason } => {
                    tracing::info!(member = participant.member(), %reason, "run finished");
                    *shutdown = Some(reason);
                }
                Event::RoundEnded { round, accepted, reason } => {
                    tracing::info!(member = participant.member(), round, accepted, %reason, "round ended")
                }
                other => tracing::debug!(member = participant.member(), event = ?other),
            },
        }
    }
    Ok(())
}

/// Each member shuffles and samples with its own stream, derived from the
/// round seed the aggregator chose and the member's name.
pub fn member_seed(round_seed: u64, member: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::new().chain_update(round_seed.to_le_bytes()).chain_update(member.as_bytes()).finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}
