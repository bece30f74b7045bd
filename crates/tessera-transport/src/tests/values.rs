//! Messages handed over as values on the memory transport (issue #20): the
//! receiver gets the sender's own value, so a `SharedList` in it is the same
//! list, not a copy; counters and limits treat it as the frame it stands for.

use tessera_core::{AggregatorMsg, SharedList};

use super::*;

fn survivors(n: u32) -> AggregatorMsg {
    AggregatorMsg::SurvivorSet { round: 3, survivors: (0..n).collect() }
}

fn list(msg: &AggregatorMsg) -> &SharedList<u32> {
    match msg {
        AggregatorMsg::SurvivorSet { survivors, .. } => survivors,
        other => panic!("not a survivor set: {other:?}"),
    }
}

#[tokio::test]
async fn memory_values_arrive_as_the_same_list_and_count_as_their_frame() {
    let mut h = memory_harness();
    let (mut client, server) = connect_pair(&mut h, "alice").await;
    let (mut down, _up) = server.split();
    assert!(down.carries_values());
    let sent = survivors(500);
    let len = sent.frame_len().unwrap();
    down.send_value(Arc::new(sent.clone()), len).await.unwrap();
    // A frame after it keeps its place.
    let after = encode_frame(&survivors(2), &SMALL).unwrap();
    let after_len = after.len() as u64;
    down.send(after).await.unwrap();

    let got: AggregatorMsg = client.recv().await.unwrap().unwrap().decode().unwrap();
    assert!(SharedList::ptr_eq(list(&got), list(&sent)), "the receiver holds the sender's list, not a copy");
    let next: AggregatorMsg = client.recv().await.unwrap().unwrap().decode().unwrap();
    assert_eq!(next, survivors(2));
    assert_eq!(len, encode_frame(&sent, &SMALL).unwrap().len());
    assert_eq!(down.traffic().bytes_sent(), len as u64 + after_len);
    assert_eq!(client.traffic().bytes_received(), len as u64 + after_len);
}

#[tokio::test]
async fn a_value_over_the_frame_limit_is_refused_like_its_frame() {
    let mut h = memory_harness();
    let (_client, server) = connect_pair(&mut h, "alice").await;
    let (mut down, _up) = server.split();
    let big = survivors(20_000); // 80 kB: over SMALL's 64 KiB frames
    let len = big.frame_len().unwrap();
    assert!(matches!(encode_frame(&big, &SMALL), Err(CodecError::Oversize { .. })));
    let err = down.send_value(Arc::new(big), len).await.unwrap_err();
    assert!(matches!(err, TransportError::InvalidOutgoing(CodecError::Oversize { .. })), "{err:?}");
    assert_eq!(down.traffic().bytes_sent(), 0);
}

#[tokio::test]
async fn quic_carries_frames_not_values() {
    let mut h = quic_harness();
    let (_client, server) = connect_pair(&mut h, "alice").await;
    let (mut down, _up) = server.split();
    assert!(!down.carries_values());
    let msg = survivors(3);
    let len = msg.frame_len().unwrap();
    assert!(matches!(down.send_value(Arc::new(msg), len).await, Err(TransportError::Config(_))));
}
