//! Frame header checks shared by both transports. The header layout is
//! `tessera_core::codec`'s: `[version: u8][length: u32 LE]`.

use tessera_core::{CodecError, FrameParts, HEADER_LEN, Limits, PROTOCOL_VERSION};

/// Check the version byte before anything else, as the codec's decoder does.
pub(crate) fn check_version(byte: u8) -> Result<(), CodecError> {
    if byte == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(CodecError::UnknownVersion { found: byte, expected: PROTOCOL_VERSION })
    }
}

/// Payload length announced by a header, rejected if over the limit.
pub(crate) fn payload_len(header: &[u8; HEADER_LEN], limits: &Limits) -> Result<usize, CodecError> {
    check_version(header[0])?;
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > limits.max_frame_bytes {
        return Err(CodecError::Oversize { len, limit: limits.max_frame_bytes });
    }
    Ok(len)
}

/// Validate a complete frame (header plus exactly the announced payload).
pub(crate) fn check_frame(frame: &[u8], limits: &Limits) -> Result<(), CodecError> {
    check_header_and_length(frame, frame.len(), limits)
}

/// Validate a complete frame given in pieces ([`FrameParts`]), as
/// [`check_frame`] validates it in one buffer: the header may span pieces.
pub(crate) fn check_frame_parts(frame: &FrameParts, limits: &Limits) -> Result<(), CodecError> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    for part in frame.parts() {
        let n = part.len().min(HEADER_LEN - header.len());
        header.extend_from_slice(&part[..n]);
        if header.len() == HEADER_LEN {
            break;
        }
    }
    check_header_and_length(&header, frame.len(), limits)
}

/// `start`: the frame's first bytes (its header, if it has one); `total`:
/// the frame's length.
fn check_header_and_length(start: &[u8], total: usize, limits: &Limits) -> Result<(), CodecError> {
    let Some(header) = start.first_chunk::<HEADER_LEN>() else {
        if let Some(&b) = start.first() {
            check_version(b)?;
        }
        return Err(CodecError::Truncated { buffered: total });
    };
    let len = payload_len(header, limits)?;
    let body = total - HEADER_LEN;
    if body < len {
        return Err(CodecError::Truncated { buffered: total });
    }
    if body > len {
        return Err(CodecError::TrailingBytes(body - len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::encode_frame;

    #[test]
    fn frame_checks() {
        let l = Limits { max_frame_bytes: 16, chunk_values: 4 };
        let f = encode_frame(&7u32, &l).unwrap();
        assert_eq!(check_frame(&f, &l), Ok(()));
        assert_eq!(check_frame(&f[..3], &l), Err(CodecError::Truncated { buffered: 3 }));
        assert_eq!(check_frame(&f[..f.len() - 1], &l), Err(CodecError::Truncated { buffered: f.len() - 1 }));
        let mut long = f.clone();
        long.push(0);
        assert_eq!(check_frame(&long, &l), Err(CodecError::TrailingBytes(1)));
        let mut bad = f.clone();
        bad[0] = 99;
        assert!(matches!(check_frame(&bad, &l), Err(CodecError::UnknownVersion { found: 99, .. })));
        assert!(matches!(check_frame(&[99], &l), Err(CodecError::UnknownVersion { .. })));
        let big = [PROTOCOL_VERSION, 17, 0, 0, 0];
        assert_eq!(payload_len(&big, &l), Err(CodecError::Oversize { len: 17, limit: 16 }));
        assert_eq!(check_frame(&[], &l), Err(CodecError::Truncated { buffered: 0 }));
    }

    /// Pieces are judged as the frame they make up, the header split
    /// between pieces included.
    #[test]
    fn frame_parts_checks() {
        let l = Limits { max_frame_bytes: 16, chunk_values: 4 };
        let f = encode_frame(&7u32, &l).unwrap();
        let parts = |cuts: &[usize], bytes: &[u8]| {
            let mut v = Vec::new();
            let mut at = 0;
            for &c in cuts.iter().chain([bytes.len()].iter()) {
                v.push(bytes::Bytes::copy_from_slice(&bytes[at..c]));
                at = c;
            }
            FrameParts::from_parts(v)
        };
        for cuts in [&[][..], &[2], &[5], &[2, 3, 7]] {
            assert_eq!(check_frame_parts(&parts(cuts, &f), &l), Ok(()), "{cuts:?}");
            assert_eq!(
                check_frame_parts(&parts(cuts, &f[..f.len() - 1]), &l),
                Err(CodecError::Truncated { buffered: f.len() - 1 })
            );
        }
        let mut long = f.clone();
        long.push(0);
        assert_eq!(check_frame_parts(&parts(&[3], &long), &l), Err(CodecError::TrailingBytes(1)));
        assert_eq!(check_frame_parts(&parts(&[1], &f[..3]), &l), Err(CodecError::Truncated { buffered: 3 }));
        let mut bad = f.clone();
        bad[0] = 99;
        assert!(matches!(check_frame_parts(&parts(&[1], &bad), &l), Err(CodecError::UnknownVersion { .. })));
    }
}
