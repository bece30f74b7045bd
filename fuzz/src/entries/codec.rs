//! The wire format: frames and both message enums, decoded and re-encoded.

use super::*;

/// The frame decoder fed the input in pieces whose size the first byte picks;
/// every complete frame is decoded as both message families.
pub fn frame_decoder(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else { return };
    let limits = Limits { max_frame_bytes: 1 << 12, chunk_values: 64 };
    let mut d = FrameDecoder::new(limits);
    let step = 1 + usize::from(head % 23);
    for piece in rest.chunks(step) {
        d.push(piece);
        assert!(d.wanted() >= 1);
        loop {
            match d.next_payload() {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= limits.max_frame_bytes);
                    check_client_msg(&payload);
                    check_aggregator_msg(&payload);
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(d.next_payload().is_err(), "a failed decoder stays failed");
                    return;
                }
            }
        }
    }
    let _ = d.finish();
}

pub fn client_msg(data: &[u8]) {
    check_client_msg(data);
}

pub fn aggregator_msg(data: &[u8]) {
    check_aggregator_msg(data);
}

/// A payload that decodes must re-encode to the very same bytes: the wire
/// encoding is canonical, so the egress ledger's digests name one message.
pub(super) fn check_client_msg(payload: &[u8]) {
    if let Ok(m) = decode_payload::<ClientMsg>(payload) {
        let _ = (m.kind(), m.round());
        assert_canonical(&m, payload);
    }
}

pub(super) fn check_aggregator_msg(payload: &[u8]) {
    if let Ok(m) = decode_payload::<AggregatorMsg>(payload) {
        let _ = m.kind();
        assert_canonical(&m, payload);
    }
}

pub(super) fn assert_canonical<T: serde::Serialize>(m: &T, payload: &[u8]) {
    let limits = Limits { max_frame_bytes: payload.len().max(1), chunk_values: 1 };
    let frame = encode_frame(m, &limits).expect("a decoded message re-encodes within its own size");
    assert_eq!(&frame[HEADER_LEN..], payload, "non-canonical encoding accepted");
}
