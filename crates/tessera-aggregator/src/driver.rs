//! The thin async driver that moves bytes between the transport and the
//! [`Coordinator`]. One task owns the coordinator; each connection has a
//! reader task (frames in → decoded messages) and a writer task (outputs →
//! frames out, models streamed lazily chunk by chunk). The same driver runs
//! over QUIC in the daemon and over the in-memory network in the simulator.
//!
//! Revocation reaches live connections here: when the daemon's list changes
//! ([`DriverOptions::revocations`]), every connection whose member name or
//! certificate it now refuses is closed at once with
//! [`close_code::REVOKED`], and the coordinator hears of it as a
//! disconnect. The coordinator itself never reads the list.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::{
    AggregatorMsg, ClientMsg, HEADER_LEN, Limits, RoundRecord, encode_frame, frame_len, model_messages,
};
use tessera_privacy::GaussianSpend;
use tessera_transport::pki::CertFingerprint;
use tessera_transport::{FrameReceiver, FrameSender, Listener, close_code};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use tessera_protocol::AdmissionRefusal;
use tessera_protocol::coordinator::{Coordinator, Dropout, Event, Handled, Output, RoundOutcome, StatisticsOutcome};

use crate::revocation::RevocationList;
use crate::store::StoreError;

/// Commands for one connection's writer task.
enum WriterCmd {
    Msg(AggregatorMsg),
    Model(u64, tessera_core::ModelPurpose, Arc<tessera_core::ModelParams>),
    Close(u32, String),
}

/// Closes a connection ahead of anything queued for its writer (a model
/// half-streamed included): the close code and reason.
type Kill = oneshot::Sender<(u32, String)>;

enum CoreEvent {
    Connected {
        member: String,
        conn: u64,
        certificate: Option<CertFingerprint>,
        writer: mpsc::UnboundedSender<WriterCmd>,
        kill: Kill,
    },
    /// The reader waits for `ack` to be dropped before it reads the next
    /// frame: a message the coordinator cannot take yet (all masked-stream
    /// slots busy) holds its connection back, and QUIC flow control pushes
    /// back on the member, instead of the aggregator buffering its stream.
    Message {
        member: String,
        conn: u64,
        msg: ClientMsg,
        /// Frame length, header included.
        bytes: u64,
        ack: oneshot::Sender<()>,
    },
    Disconnected {
        member: String,
        conn: u64,
        error: Option<String>,
    },
}

/// Receives what the run produces, round by round. The daemon writes files
/// and its database; the simulator also collects in memory.
pub trait RunObserver: Send {
    /// Called when a round starts, before any message of it is sent.
    /// Persist the round number here; an `Err` stops the run before
    /// anything of the round leaves.
    fn round_started(&mut self, _round: u64, _cohort: &[String], _cohort_seed: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Called once per turn of the driver loop, after the coordinator's
    /// outputs are handled (status displays; rate-limit inside).
    fn state_changed(&mut self, _coordinator: &Coordinator) {}
    /// A round completed; `record` has traffic and timing filled in.
    fn round_finished(&mut self, outcome: &RoundOutcome, record: &RoundRecord, coordinator: &Coordinator);
    /// A round attempt was abandoned (`dropped`: the members that failed
    /// it); the coordinator retries under a new wire round number.
    /// `refunded`: the attempt's privacy reservation was taken back (nothing
    /// of it can be released), with the cumulative epsilon after it; record
    /// the refund durably.
    fn round_aborted(&mut self, round: u64, reason: &str, dropped: &[Dropout], refunded: Option<f64>);
    /// A round's privacy spend was charged; called before any message of
    /// the round is sent. Persist it durably before returning (write-ahead);
    /// an `Err` stops the run before anything is released.
    fn privacy_reserved(
        &mut self,
        round: u64,
        spend: &GaussianSpend,
        epsilon: f64,
        delta: f64,
    ) -> Result<(), StoreError> {
        tracing::info!(round, epsilon, delta, steps = spend.steps, "privacy spend charged");
        Ok(())
    }
    /// A member's message was refused (and the member told so); logged by
    /// default.
    fn rejected(&mut self, member: &str, error: &str) {
        tracing::warn!(member = %member, error, "rejected a message");
    }
    /// A member was refused at admission (its settings differ from the
    /// consortium's); logged by default, audited by the daemon.
    fn admission_refused(&mut self, refusal: &AdmissionRefusal) {
        tracing::error!(member = refusal.member(), reason = %refusal, "member refused at admission");
    }
    /// Share holders whose revealed share failed its check in `round`
    /// (the round completed without them); logged by default, audited by
    /// the daemon.
    fn bad_shares(&mut self, round: u64, members: &[String]) {
        tracing::warn!(round, ?members, "revealed shares failed their check and were left out");
    }
    /// A DP statistics release completed (issue #18): the noised counts.
    /// Logged by default; the daemon writes them to its state directory and
    /// the audit log, the simulator to its run directory.
    fn statistics_released(&mut self, outcome: &StatisticsOutcome) {
        tracing::info!(
            wire_round = outcome.round,
            contributors = outcome.contributors.len(),
            epsilon_opendp = outcome.opendp.epsilon,
            run_epsilon = outcome.run_epsilon,
            "DP statistics released"
        );
    }
    /// Called before each new round may start; returning `Some(reason)`
    /// stops the run (e.g. the privacy budget cannot afford another round).
    fn veto_next_round(&mut self, _coordinator: &Coordinator) -> Option<String> {
        None
    }
}

/// How the driver runs.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Frame size and chunk limits for encoding and decoding; both ends
    /// must agree on `chunk_values`.
    pub limits: Limits,
    /// Time allowed, at most, after the run finished for final messages to
    /// flush: the driver returns as soon as every connection's writer has
    /// sent its queue and seen it acknowledged, or when this runs out.
    pub linger: Duration,
    /// The operator's revocation list, as the daemon last read it. Each
    /// change closes the live connections it now refuses, within the time
    /// the driver takes to notice (immediately); a connection admitted just
    /// before a change is checked against it when the driver takes it on.
    /// `None` (the simulator): nothing is ever revoked.
    pub revocations: Option<watch::Receiver<Arc<RevocationList>>>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self { limits: Limits::default(), linger: Duration::from_millis(200), revocations: None }
    }
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunEnd {
    /// Why the run stopped (all rounds done, budget exhausted, retries
    /// exhausted, a state write failed), as logged and audited.
    pub reason: String,
    /// Rounds completed and counted toward the run.
    pub completed_rounds: u64,
    /// Set when the run ended because it could not make progress
    /// (consecutive aborted attempts, a round that cannot start, a state
    /// write that failed): the one-line reason. The daemon then exits
    /// non-zero, so a supervisor's `Restart=on-failure` sees it.
    pub failed: Option<String>,
}

/// Run the coordinator until the run finishes, accepting connections from
/// `listener`, and hand it back with how the run ended. Every round event
/// goes to `observer` first; an `Err` from its write-ahead hooks stops the
/// run before the round's messages leave.
pub async fn serve(
    mut listener: Listener,
    coordinator: Coordinator,
    observer: &mut dyn RunObserver,
    opts: DriverOptions,
) -> (Coordinator, RunEnd) {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<CoreEvent>();
    // Every writer holds a clone; `recv` answers `None` once all are gone.
    let (writers_tx, mut writers_done) = mpsc::channel::<()>(1);
    let mut revocations = opts.revocations.clone();
    let mut d = Driver {
        start: Instant::now(),
        coordinator,
        observer,
        connections: Connections::default(),
        traffic: Traffic::default(),
        deferred: VecDeque::new(),
        limits: opts.limits,
        revoked: revocations.as_mut().map(|r| r.borrow_and_update().clone()).unwrap_or_default(),
    };
    let mut next_conn = 0u64;
    let mut accepting = true;
    loop {
        match d.drain_outputs() {
            Ok(None) => {}
            Ok(Some(reason)) => {
                tracing::info!(%reason, "run finished");
                // Let writers flush the Shutdown messages, then close: a
                // fixed wait here was 200 ms of every simulated run.
                drop(d.connections);
                drop(writers_tx);
                let _ = tokio::time::timeout(opts.linger, writers_done.recv()).await;
                return finished(d.coordinator, reason);
            }
            // Nothing of the round has been sent: queued messages are dropped unsent.
            Err(reason) => {
                let (coordinator, mut end) = finished(d.coordinator, reason);
                end.failed = Some(end.reason.clone());
                return (coordinator, end);
            }
        }
        let deadline = d.coordinator.next_deadline().map(|ms| d.start + Duration::from_millis(ms));
        tokio::select! {
            accepted = listener.accept(), if accepting => match accepted {
                Some((peer, conn)) => {
                    next_conn += 1;
                    let (tx, rx) = conn.split();
                    spawn_connection(peer, next_conn, tx, rx, events_tx.clone(), writers_tx.clone(), opts.limits);
                }
                None => accepting = false,
            },
            Some(list) = revocation_changed(&mut revocations) => {
                d.revoked = list;
                d.enforce_revocations();
            }
            Some(ev) = events_rx.recv() => d.on_event(ev),
            _ = sleep_until(deadline) => d.coordinator.tick(d.now_ms()),
        }
        d.retry_deferred();
    }
}

/// The coordinator's task: the coordinator, what it reports to, and the
/// connections it talks through.
struct Driver<'a> {
    start: Instant,
    coordinator: Coordinator,
    observer: &'a mut dyn RunObserver,
    connections: Connections,
    traffic: Traffic,
    /// Messages the coordinator could not take yet, in arrival order.
    deferred: VecDeque<(String, u64, ClientMsg, oneshot::Sender<()>)>,
    limits: Limits,
    /// The revocation list in force.
    revoked: Arc<RevocationList>,
}

impl Driver<'_> {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Carry out everything the coordinator asked for. `Ok(Some(reason))`:
    /// the run finished; `Err(reason)`: a write-ahead record failed and the
    /// run must stop before anything more is sent.
    fn drain_outputs(&mut self) -> Result<Option<String>, String> {
        // Let the observer stop the run before a new round starts.
        if self.coordinator.progress().is_none()
            && !self.coordinator.is_finished()
            && let Some(reason) = self.observer.veto_next_round(&self.coordinator)
        {
            self.coordinator.stop_before_next_round(reason);
            self.coordinator.tick(self.now_ms());
        }
        let mut end = None;
        while let Some(out) = self.coordinator.poll_output() {
            match out {
                Output::Send { to, msg } => {
                    if self.connections.has(&to)
                        && let Some(round) = msg.round()
                    {
                        self.traffic.down(round, msg.frame_len().unwrap_or(0) as u64);
                    }
                    self.connections.send(&to, WriterCmd::Msg(msg))
                }
                Output::SendModel { to, round, purpose, model } => {
                    if self.connections.has(&to) {
                        let len: usize = model_messages(round, purpose, &model, self.limits.chunk_values)
                            .map(|m| frame_len(&m).unwrap_or(0))
                            .sum();
                        self.traffic.down(round, len as u64);
                    }
                    self.connections.send(&to, WriterCmd::Model(round, purpose, model))
                }
                // The entry stays until the reader reports the close, so the
                // coordinator hears of the disconnect exactly once.
                Output::Disconnect { member, reason } => {
                    self.connections.send(&member, WriterCmd::Close(close_code::PROTOCOL, reason))
                }
                // Closed as a refusal: the member stops instead of dialling
                // again into the same refusal.
                Output::RefuseAdmission { member, refusal } => {
                    self.observer.admission_refused(&refusal);
                    self.connections.send(&member, WriterCmd::Close(close_code::REFUSED, refusal.to_string()))
                }
                Output::Event(Event::RunFinished { reason }) => end = Some(reason),
                Output::Event(ev) => self.on_coordinator_event(ev)?,
            }
        }
        self.observer.state_changed(&self.coordinator);
        Ok(end)
    }

    fn on_coordinator_event(&mut self, ev: Event) -> Result<(), String> {
        match ev {
            Event::RoundStarted { round, cohort, cohort_seed } => {
                if let Err(e) = self.observer.round_started(round, &cohort, cohort_seed) {
                    tracing::error!(wire_round = round, error = %tessera_cli::ErrorChain(&e), "cannot record the round start; stopping before it is sent");
                    return Err(format!("run state write failed: {}", tessera_cli::ErrorChain(&e)));
                }
            }
            Event::RoundFinished(outcome) => {
                let record = round_record(&outcome, self.traffic.take(outcome.round));
                self.observer.round_finished(&outcome, &record, &self.coordinator);
            }
            Event::PrivacyReserved { round, spend, epsilon, delta } => {
                if let Err(e) = self.observer.privacy_reserved(round, &spend, epsilon, delta) {
                    // Nothing of this round has been sent yet: stop here.
                    tracing::error!(wire_round = round, error = %tessera_cli::ErrorChain(&e), "cannot record the privacy spend; stopping before the release");
                    return Err(format!("privacy ledger write failed: {}", tessera_cli::ErrorChain(&e)));
                }
            }
            Event::RoundAborted { round, reason, dropped, refunded, retry_in_ms } => {
                self.traffic.take(round);
                self.observer.round_aborted(round, &reason, &dropped, refunded);
                if retry_in_ms > 0 && !self.coordinator.is_finished() {
                    tracing::info!(wire_round = round, retry_in_ms, "backing off before the next attempt");
                }
            }
            Event::Rejected { member, error } => self.observer.rejected(&member, &error),
            Event::BadShares { round, members } => self.observer.bad_shares(round, &members),
            Event::MemberUnhealthy { member, failed_rounds } => {
                tracing::warn!(member = %member, failed_rounds, "member marked unhealthy")
            }
            Event::StatisticsReleased(outcome) => {
                self.traffic.take(outcome.round);
                self.observer.statistics_released(&outcome);
            }
            Event::RunFinished { .. } => unreachable!("handled by drain_outputs"),
        }
        Ok(())
    }

    fn on_event(&mut self, ev: CoreEvent) {
        match ev {
            CoreEvent::Connected { member, conn, certificate, writer, kill } => {
                // Admitted before the latest change of the list reached us?
                if let Some(by) = self.revoked.refuses(&member, certificate.as_ref()) {
                    tracing::warn!(member = %member, reason = %by, "closing a connection admitted just before its revocation");
                    let _ = kill.send((close_code::REVOKED, by.to_string()));
                    return;
                }
                self.connections.open(member.clone(), Live { conn, certificate, writer, kill: Some(kill) });
                tracing::info!(member = %member, "member connected");
                self.coordinator.member_connected(self.now_ms(), &member);
            }
            CoreEvent::Message { member, conn, msg, bytes, ack } => {
                if let Some(round) = msg.round() {
                    self.traffic.up(round, bytes);
                }
                if self.connections.is_current(&member, conn)
                    && let Ok(Handled::Busy(msg)) = self.coordinator.handle(self.now_ms(), &member, msg)
                {
                    self.deferred.push_back((member, conn, msg, ack));
                }
            }
            CoreEvent::Disconnected { member, conn, error } => {
                if self.connections.remove_if_current(&member, conn) {
                    match error {
                        Some(e) => tracing::warn!(member = %member, error = %e, "member disconnected"),
                        None => tracing::info!(member = %member, "member disconnected"),
                    }
                    self.coordinator.member_disconnected(self.now_ms(), &member);
                }
            }
        }
    }

    /// Close every live connection the revocation list now refuses. The
    /// coordinator hears of each as a disconnect here and now, not when the
    /// reader notices the close: the reader may be held back on a deferred
    /// message, and the member must stop counting at once. Its messages
    /// still queued are dropped (the connection is no longer current).
    fn enforce_revocations(&mut self) {
        let now = self.now_ms();
        for (member, by) in self.connections.refused_by(&self.revoked) {
            tracing::warn!(member = %member, reason = %by, "revoked: closing the member's live connection");
            self.connections.kill(&member, close_code::REVOKED, by.to_string());
            self.coordinator.member_disconnected(now, &member);
        }
    }

    /// Retry held-back messages in arrival order; a slot may have freed.
    /// Stops at the first one still answered `Busy`: only a stream start
    /// is ever held back, `Busy` means every stream slot is taken and the
    /// coordinator changed nothing, so every later one would be answered
    /// `Busy` too. Retrying them all after every event made the upload
    /// phase quadratic in the cohort (10,000 deferred starts retried after
    /// each of tens of thousands of events; docs/benchmarks.md, "Protocol
    /// scale").
    fn retry_deferred(&mut self) {
        while let Some((member, conn, msg, ack)) = self.deferred.pop_front() {
            if !self.connections.is_current(&member, conn) {
                continue;
            }
            if let Ok(Handled::Busy(msg)) = self.coordinator.handle(self.now_ms(), &member, msg) {
                self.deferred.push_front((member, conn, msg, ack));
                return;
            }
        }
    }
}

/// One member's live connection.
struct Live {
    conn: u64,
    /// The certificate it was admitted with (QUIC only).
    certificate: Option<CertFingerprint>,
    writer: mpsc::UnboundedSender<WriterCmd>,
    kill: Option<Kill>,
}

/// Each member's live connection (its id, certificate and writer). A newer
/// connection of the same member replaces the older one, whose late
/// messages and close are then ignored.
#[derive(Default)]
struct Connections(BTreeMap<String, Live>);

impl Connections {
    fn open(&mut self, member: String, live: Live) {
        if let Some(old) = self.0.insert(member, live) {
            let _ = old.writer.send(WriterCmd::Close(close_code::PROTOCOL, "replaced by a newer connection".into()));
        }
    }

    /// The members whose live connection `list` refuses, and why.
    fn refused_by(&self, list: &RevocationList) -> Vec<(String, crate::revocation::RevokedBy)> {
        self.0
            .iter()
            .filter_map(|(m, live)| list.refuses(m, live.certificate.as_ref()).map(|by| (m.clone(), by)))
            .collect()
    }

    /// Close `member`'s connection now, ahead of its queued output, and forget it.
    fn kill(&mut self, member: &str, code: u32, reason: String) {
        if let Some(mut live) = self.0.remove(member)
            && let Some(kill) = live.kill.take()
        {
            let _ = kill.send((code, reason));
        }
    }

    fn has(&self, member: &str) -> bool {
        self.0.contains_key(member)
    }

    fn is_current(&self, member: &str, conn: u64) -> bool {
        self.0.get(member).is_some_and(|l| l.conn == conn)
    }

    /// Forget `member`'s connection if `conn` is its current one.
    fn remove_if_current(&mut self, member: &str, conn: u64) -> bool {
        let current = self.is_current(member, conn);
        if current {
            self.0.remove(member);
        }
        current
    }

    fn send(&self, to: &str, cmd: WriterCmd) {
        if let Some(l) = self.0.get(to) {
            let _ = l.writer.send(cmd);
        }
    }
}

/// Application bytes (frames, headers included) per round, up and down,
/// counted from the messages themselves so that figures do not depend on
/// timing.
#[derive(Default)]
struct Traffic(BTreeMap<u64, (u64, u64)>);

impl Traffic {
    fn up(&mut self, round: u64, bytes: u64) {
        self.0.entry(round).or_default().0 += bytes;
    }

    fn down(&mut self, round: u64, bytes: u64) {
        self.0.entry(round).or_default().1 += bytes;
    }

    fn take(&mut self, round: u64) -> (u64, u64) {
        self.0.remove(&round).unwrap_or_default()
    }
}

/// The `metrics.jsonl` line of a finished round.
fn round_record(outcome: &RoundOutcome, (up, down): (u64, u64)) -> RoundRecord {
    RoundRecord {
        round: outcome.round,
        participants: outcome.contributors.len() as u32,
        dropped: outcome.dropped.len() as u32,
        accepted: true,
        loss: outcome.metrics.loss,
        accuracy: outcome.metrics.accuracy,
        balanced_accuracy: outcome.metrics.balanced_accuracy,
        auc: outcome.metrics.auc,
        f1: outcome.metrics.f1,
        bytes_up: up,
        bytes_down: down,
        seconds: (outcome.finished_ms - outcome.started_ms) as f64 / 1000.0,
        epsilon: outcome.epsilon,
        delta: outcome.delta,
        clip_norm: outcome.clip_norm,
        unclipped_fraction: outcome.unclipped_fraction,
        next_clip_norm: outcome.next_clip_norm,
    }
}

fn finished(coordinator: Coordinator, reason: String) -> (Coordinator, RunEnd) {
    let completed_rounds = coordinator.completed();
    let failed = coordinator.failure().map(str::to_string);
    (coordinator, RunEnd { reason, completed_rounds, failed })
}

/// The next version of the revocation list; never ready without a list
/// (or once the daemon's watcher is gone).
async fn revocation_changed(rx: &mut Option<watch::Receiver<Arc<RevocationList>>>) -> Option<Arc<RevocationList>> {
    if let Some(r) = rx
        && r.changed().await.is_ok()
    {
        return Some(r.borrow_and_update().clone());
    }
    std::future::pending().await
}

/// The close a kill handle asks for; never ready once the driver has
/// dropped the handle without using it (the connection then just ends).
async fn kill_signal(kill: &mut Option<oneshot::Receiver<(u32, String)>>) -> (u32, String) {
    if let Some(rx) = kill {
        if let Ok(close) = rx.await {
            return close;
        }
        *kill = None;
    }
    std::future::pending().await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn spawn_connection(
    peer: tessera_transport::Peer,
    conn: u64,
    mut tx: FrameSender,
    mut rx: FrameReceiver,
    events: mpsc::UnboundedSender<CoreEvent>,
    // Held by the writer until its queue is flushed (see `serve`).
    writer_alive: mpsc::Sender<()>,
    limits: Limits,
) {
    let member = peer.member;
    let (wtx, mut wrx) = mpsc::unbounded_channel::<WriterCmd>();
    let (kill, killed) = oneshot::channel::<(u32, String)>();
    let _ = events.send(CoreEvent::Connected {
        member: member.clone(),
        conn,
        certificate: peer.certificate,
        writer: wtx,
        kill,
    });
    // Writer: encodes lazily so a model is never materialised per member.
    // A kill wins over whatever it is doing: a send abandoned mid-frame is
    // fine, since the connection closes with it.
    tokio::spawn(async move {
        let mut killed = Some(killed);
        loop {
            let cmd = tokio::select! {
                biased;
                k = kill_signal(&mut killed) => Err(k),
                cmd = wrx.recv() => Ok(cmd),
            };
            let cmd = match cmd {
                Ok(Some(cmd)) => cmd,
                Ok(None) => break,
                Err((code, reason)) => {
                    tx.close(code, &reason);
                    break;
                }
            };
            let work = async {
                match cmd {
                    WriterCmd::Msg(msg) => write(&mut tx, &msg, &limits).await.map(|()| None),
                    WriterCmd::Model(round, purpose, model) => {
                        for msg in model_messages(round, purpose, &model, limits.chunk_values) {
                            write(&mut tx, &msg, &limits).await?;
                        }
                        Ok(None)
                    }
                    WriterCmd::Close(code, reason) => Ok(Some((code, reason))),
                }
            };
            let next = tokio::select! {
                biased;
                k = kill_signal(&mut killed) => Some(k),
                r = work => match r {
                    Ok(None) => continue,
                    Ok(Some(close)) => Some(close),
                    Err(_) => None,
                },
            };
            if let Some((code, reason)) = next {
                tx.close(code, &reason);
            }
            break;
        }
        let _ = tx.finish().await;
        drop(writer_alive);
    });
    // Reader: decode and forward; any decoding error closes the connection.
    tokio::spawn(async move {
        let error = loop {
            match rx.recv().await {
                Ok(Some(payload)) => match payload.decode::<ClientMsg>() {
                    Ok(msg) => {
                        let (ack, acked) = oneshot::channel();
                        let bytes = (payload.len() + HEADER_LEN) as u64;
                        if events.send(CoreEvent::Message { member: member.clone(), conn, msg, bytes, ack }).is_err() {
                            break None;
                        }
                        // Dropped (not sent) when handled; either way we go on.
                        let _ = acked.await;
                    }
                    Err(e) => {
                        rx.close(close_code::MALFORMED_FRAME, "undecodable frame");
                        break Some(e.to_string());
                    }
                },
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        let _ = events.send(CoreEvent::Disconnected { member, conn, error });
    });
}

async fn write(tx: &mut FrameSender, msg: &AggregatorMsg, limits: &Limits) -> Result<(), String> {
    if tx.carries_values() && msg.carries_shared_list() {
        // In process: every member gets the same shared list, not a copy
        // to decode (the frame is only measured, from the lists' memos).
        let len = msg.frame_len().map_err(|e| e.to_string())?;
        return tx.send_value(Arc::new(msg.clone()), len).await.map_err(|e| e.to_string());
    }
    if msg.carries_shared_list() {
        // Over the network: the list's bytes are encoded once and every
        // member's frame refers to them; per connection only the few bytes
        // around the list are its own (tessera_core's `codec::parts`).
        let frame = msg.encode_frame_parts(limits).map_err(|e| e.to_string())?;
        return tx.send_parts(frame).await.map_err(|e| e.to_string());
    }
    let frame = encode_frame(msg, limits).map_err(|e| e.to_string())?;
    tx.send(frame).await.map_err(|e| e.to_string())
}
