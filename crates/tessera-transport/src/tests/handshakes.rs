//! Frames sent in pieces (a list every member is sent, encoded once), and
//! the listener's cap on handshakes under way (issue #20).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tessera_core::{AggregatorMsg, SharedList};

use super::*;

/// Two members are sent the same survivor set in pieces: each decodes the
/// message whole, and the byte counters count the frame's full length. A
/// frame whose pieces hold more than its header announces is refused
/// before anything is sent.
async fn frames_in_pieces(mut h: Harness) {
    let survivors: SharedList<u32> = (0..2000).collect();
    let msg = AggregatorMsg::SurvivorSet { round: 4, survivors };
    for member in ["alice", "bob"] {
        let (mut client, server) = connect_pair(&mut h, member).await;
        let (mut tx, _rx) = server.split();
        let frame = msg.encode_frame_parts(&SMALL).unwrap();
        assert!(frame.parts().len() > 1, "the list is a piece of its own");
        let len = frame.len() as u64;
        tx.send_parts(frame).await.unwrap();
        let got = client.recv().await.unwrap().unwrap();
        assert_eq!(got.decode::<AggregatorMsg>().unwrap(), msg);
        assert_eq!((tx.traffic().bytes_sent(), client.traffic().bytes_received()), (len, len));

        let mut parts = msg.encode_frame_parts(&SMALL).unwrap().into_parts();
        parts.push(bytes::Bytes::from_static(&[0]));
        let err = tx.send_parts(tessera_core::FrameParts::from_parts(parts)).await.unwrap_err();
        assert!(matches!(err, TransportError::InvalidOutgoing(CodecError::TrailingBytes(1))), "{err}");
        assert_eq!(tx.traffic().bytes_sent(), len, "nothing of the refused frame was sent");
    }
}

#[tokio::test]
async fn quic_frames_in_pieces() {
    frames_in_pieces(quic_harness()).await;
}

#[tokio::test]
async fn memory_frames_in_pieces() {
    frames_in_pieces(memory_harness()).await;
}

/// Admits everyone after `hold`, counting the admissions under way.
#[derive(Default)]
struct SlowAdmission {
    hold: Duration,
    now: AtomicUsize,
    peak: AtomicUsize,
    entered: AtomicBool,
}

impl Admission for SlowAdmission {
    fn admit(&self, _member: &str) -> Result<(), Refusal> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.entered.store(true, Ordering::SeqCst);
        std::thread::sleep(self.hold);
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Three members dial at once against a cap of one handshake: they are
/// admitted one after the other (never two admissions at once), and all
/// three get in, since each waits less than its turn allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_cap_wait_their_turn() {
    let dir = consortium();
    let admission = Arc::new(SlowAdmission { hold: Duration::from_millis(300), ..Default::default() });
    let mut cfg = listener_config(dir.path(), loopback());
    cfg.max_handshakes = 1;
    cfg.handshake_timeout = Duration::from_secs(20);
    let mut listener = cfg.listen(admission.clone()).unwrap();
    let addr = listener.local_addr().unwrap();
    let dials: Vec<_> = ["alice", "bob", "carol"]
        .into_iter()
        .map(|m| {
            let mut d = dial_config(dir.path(), m, addr);
            d.connect_timeout = Duration::from_secs(20);
            tokio::spawn(async move { connect(&d).await })
        })
        .collect();
    for d in dials {
        d.await.unwrap().unwrap();
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.unwrap().unwrap();
    }
    assert_eq!(admission.peak.load(Ordering::SeqCst), 1, "two handshakes ran at once under a cap of one");
}

/// A dial that cannot start its handshake within half of
/// `handshake_timeout` is refused, and the refusal is one a member retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_kept_waiting_too_long_is_refused_as_retryable() {
    let dir = consortium();
    let admission = Arc::new(SlowAdmission { hold: Duration::from_secs(7), ..Default::default() });
    let mut cfg = listener_config(dir.path(), loopback());
    cfg.max_handshakes = 1;
    cfg.handshake_timeout = Duration::from_secs(10);
    let listener = cfg.listen(admission.clone()).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut first = dial_config(dir.path(), "alice", addr);
    first.connect_timeout = Duration::from_secs(30);
    let first = tokio::spawn(async move { connect(&first).await });
    let t0 = Instant::now();
    while !admission.entered.load(Ordering::SeqCst) {
        assert!(t0.elapsed() < Duration::from_secs(20), "the first dial never reached admission");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Alice holds the only handshake for 7 s; bob may wait 5 s.
    let mut bob = dial_config(dir.path(), "bob", addr);
    bob.connect_timeout = Duration::from_secs(30);
    let err = connect(&bob).await.err().expect("bob is refused");
    assert!(err.is_retryable(), "a busy aggregator is worth retrying: {err}");
    assert!(!matches!(err, TransportError::Timeout { .. }), "refused, not left to time out: {err}");
    first.await.unwrap().unwrap();
}
