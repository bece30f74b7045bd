//! A hostile member for integration tests: it runs the real [`Participant`]
//! (so it gets through key agreement and share exchange like anyone else)
//! but passes every message it would send through a `tamper` function that
//! may rewrite, drop or multiply it. Only the attacker uses this mini driver;
//! honest members in the same test run the real daemon code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use tessera_client::LocalModel;
use tessera_core::{AggregatorMsg, ClientMsg, Limits, encode_frame};
use tessera_protocol::member::{LocalFailure, Output};
use tessera_protocol::{Participant, Policy};
use tessera_transport::{QuicDialConfig, TransportError, connect};

/// What happened to the attacker's one connection.
#[derive(Debug)]
pub struct AttackOutcome {
    /// Kinds of the messages actually put on the wire, in order.
    pub sent: Vec<&'static str>,
    /// Messages the tamper function rewrote or injected.
    pub tampered: usize,
    /// How the connection ended: the aggregator's close (typed), or `None`
    /// if the run shut down normally.
    pub closed_by: Option<TransportError>,
}

/// Connect once as `member` and follow the protocol honestly, except that
/// each outgoing message goes through `tamper` first: it returns the
/// messages to send instead (empty = drop) and whether it changed anything.
/// Returns when the aggregator closes the connection or shuts the run down.
/// It signs its key advertisements with its consortium certificate, as the
/// daemon does (`pki_dir` holds its certificate, key and the CA).
pub async fn run_tampering_member<M, F>(
    dial: &QuicDialConfig,
    pki_dir: &std::path::Path,
    member: &str,
    model: M,
    mut tamper: F,
) -> AttackOutcome
where
    M: LocalModel,
    F: FnMut(ClientMsg) -> (Vec<ClientMsg>, bool),
{
    let limits = Limits::default();
    let model = Arc::new(Mutex::new(model));
    let files = tessera_transport::pki::member_files(pki_dir, member);
    let ca = pki_dir.join(tessera_transport::pki::CA_CERT);
    let identity = tessera_client::load_member_identity(&files.cert, &files.key, &ca).expect("member identity");
    // Admitted like any member of the consortium: the attacks come after.
    let mut p = Participant::new(member, Policy::default(), rand_chacha::ChaCha20Rng::from_entropy())
        .with_identity(identity)
        .with_settings(crate::consortium_settings());
    let mut outcome = AttackOutcome { sent: Vec::new(), tampered: 0, closed_by: None };
    let conn = match connect(dial).await {
        Ok(c) => c,
        Err(e) => {
            outcome.closed_by = Some(e);
            return outcome;
        }
    };
    let (mut tx, mut rx) = conn.split();
    p.hello();
    loop {
        // Carry out everything the participant asked for.
        while let Some(out) = p.poll_output() {
            match out {
                Output::Send(msg) => {
                    let (msgs, changed) = tamper(msg);
                    outcome.tampered += usize::from(changed);
                    for m in msgs {
                        let frame = encode_frame(&m, &limits).expect("encodable");
                        if let Err(e) = tx.send(frame).await {
                            outcome.closed_by = Some(e);
                            return outcome;
                        }
                        outcome.sent.push(m.kind().as_str());
                    }
                }
                Output::Train { round, model: params, settings, dp } => {
                    let m = model.clone();
                    let r =
                        tokio::task::spawn_blocking(move || m.lock().unwrap().train(&params, &settings, dp.as_ref()))
                            .await
                            .expect("training task");
                    p.training_done(round, r.map_err(|e| LocalFailure::from_error(&e)));
                }
                Output::Evaluate { round, model: params } => {
                    let m = model.clone();
                    let r = tokio::task::spawn_blocking(move || m.lock().unwrap().evaluate(&params))
                        .await
                        .expect("evaluation task");
                    p.evaluation_done(round, r.map_err(|e| LocalFailure::from_error(&e)));
                }
                Output::Statistics { round, release } => {
                    let r = model.lock().unwrap().statistics(&release);
                    p.statistics_done(round, r.map_err(|e| LocalFailure::from_error(&e)));
                }
                Output::Event(tessera_protocol::member::Event::Shutdown { .. }) => return outcome,
                Output::Event(_) => {}
            }
        }
        match rx.recv().await {
            Ok(Some(payload)) => match payload.decode::<AggregatorMsg>() {
                Ok(msg) => {
                    let _ = p.handle(msg);
                }
                Err(e) => panic!("the aggregator sent an undecodable frame: {e}"),
            },
            Ok(None) => return outcome,
            Err(e) => {
                outcome.closed_by = Some(e);
                return outcome;
            }
        }
    }
}

/// Wait until `cond` holds, polling; panics with `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
