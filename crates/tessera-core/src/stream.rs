//! Streaming large vectors as bounded chunks.
//!
//! A model is sent as `ModelStart`, a run of `ModelChunk`s and `ModelEnd`.
//! [`model_messages`] produces the chunks lazily from a shared parameter set
//! (one chunk alive at a time per receiver), and [`ModelAssembler`] writes
//! them straight into a preallocated parameter set on the other side, so a
//! model is never held twice in memory by either party.

use crate::message::{AggregatorMsg, ModelPurpose};
use crate::params::{ModelParams, ParamLayout};

/// Errors while reassembling a streamed vector. Each names what was wrong,
/// never the values.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum StreamError {
    /// A chunk or end marker names another round than the header did.
    #[error("chunk for round {got} while assembling round {expected}")]
    WrongRound {
        /// The round being assembled.
        expected: u64,
        /// The round the message named.
        got: u64,
    },
    /// A chunk does not start where the previous one ended (a gap, a
    /// repeat or a reordering).
    #[error("chunk at offset {got}, expected offset {expected}")]
    OutOfOrder {
        /// Offset, in values, the next chunk must start at.
        expected: u64,
        /// Offset the chunk started at.
        got: u64,
    },
    /// A chunk runs past the end of the announced layout.
    #[error("chunk of {len} values at offset {offset} overruns the {total}-value vector")]
    Overrun {
        /// Offset of the chunk, in values.
        offset: u64,
        /// Values in the chunk.
        len: u64,
        /// Values the layout holds.
        total: u64,
    },
    /// The end marker came before every value did.
    #[error("stream ended after {got} of {total} values")]
    Incomplete {
        /// Values received.
        got: u64,
        /// Values the layout holds.
        total: u64,
    },
    /// The assembled model's SHA-256 differs from the one in `ModelEnd`.
    #[error("assembled model does not match the announced digest")]
    DigestMismatch,
    /// The model holds a NaN or an infinity in the named tensor.
    #[error("model holds a non-finite value in `{0}`")]
    NonFinite(String),
    /// The layout holds more values (given) than the receiver accepts, or
    /// its size overflows (reported as `u64::MAX`).
    #[error("layout too large: {0} values")]
    TooLarge(u64),
}

/// Lazily yield the messages that stream `model` for `round`.
pub fn model_messages(
    round: u64,
    purpose: ModelPurpose,
    model: &ModelParams,
    chunk_values: usize,
) -> impl Iterator<Item = AggregatorMsg> + '_ {
    let total = model.numel();
    let start = std::iter::once(AggregatorMsg::ModelStart { round, purpose, layout: model.layout() });
    let chunks = crate::codec::chunk_ranges(total, chunk_values).map(move |(off, len)| {
        let mut values = vec![0.0f32; len];
        // In range by construction of chunk_ranges.
        let _ = model.read_flat(off, &mut values);
        AggregatorMsg::ModelChunk { round, offset: off as u64, values }
    });
    let end = std::iter::once_with(move || AggregatorMsg::ModelEnd { round, digest: model.digest() });
    start.chain(chunks).chain(end)
}

/// Rebuilds a streamed model in place, checking order, bounds and digest.
#[derive(Debug)]
pub struct ModelAssembler {
    round: u64,
    purpose: ModelPurpose,
    params: ModelParams,
    next_offset: u64,
    total: u64,
}

impl ModelAssembler {
    /// Start assembling; `max_values` bounds the allocation a peer can cause.
    pub fn start(
        round: u64,
        purpose: ModelPurpose,
        layout: &ParamLayout,
        max_values: u64,
    ) -> Result<Self, StreamError> {
        // A shape whose size overflows is as unacceptable as a huge one.
        let total = layout.checked_numel().map_or(u64::MAX, |n| n as u64);
        if total > max_values {
            return Err(StreamError::TooLarge(total));
        }
        Ok(Self { round, purpose, params: ModelParams::zeros(layout), next_offset: 0, total })
    }

    /// The round the model belongs to.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Why the model is being sent.
    pub fn purpose(&self) -> ModelPurpose {
        self.purpose
    }

    /// Write one `ModelChunk` in place; chunks must arrive in order, with
    /// no gap or overlap.
    pub fn chunk(&mut self, round: u64, offset: u64, values: &[f32]) -> Result<(), StreamError> {
        if round != self.round {
            return Err(StreamError::WrongRound { expected: self.round, got: round });
        }
        if offset != self.next_offset {
            return Err(StreamError::OutOfOrder { expected: self.next_offset, got: offset });
        }
        let len = values.len() as u64;
        if offset + len > self.total {
            return Err(StreamError::Overrun { offset, len, total: self.total });
        }
        self.params.write_flat(offset as usize, values).map_err(|_| StreamError::Overrun {
            offset,
            len,
            total: self.total,
        })?;
        self.next_offset += len;
        Ok(())
    }

    /// Take the `ModelEnd`: the model, once every value arrived, all are
    /// finite and the digest matches.
    pub fn finish(self, round: u64, digest: &[u8; 32]) -> Result<ModelParams, StreamError> {
        if round != self.round {
            return Err(StreamError::WrongRound { expected: self.round, got: round });
        }
        if self.next_offset != self.total {
            return Err(StreamError::Incomplete { got: self.next_offset, total: self.total });
        }
        if let Err(crate::params::ParamsError::NonFinite { name }) = self.params.check_finite() {
            return Err(StreamError::NonFinite(name));
        }
        if &self.params.digest() != digest {
            return Err(StreamError::DigestMismatch);
        }
        Ok(self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamTensor;

    fn model() -> ModelParams {
        ModelParams::new(vec![
            ParamTensor::new("w", vec![3, 3], (0..9).map(|i| i as f32).collect()).unwrap(),
            ParamTensor::new("b", vec![3], vec![0.5, -0.5, 1.0]).unwrap(),
        ])
    }

    fn assemble(msgs: Vec<AggregatorMsg>) -> Result<ModelParams, StreamError> {
        let mut asm = None;
        for m in msgs {
            match m {
                AggregatorMsg::ModelStart { round, purpose, layout } => {
                    asm = Some(ModelAssembler::start(round, purpose, &layout, 1 << 20)?)
                }
                AggregatorMsg::ModelChunk { round, offset, values } => {
                    asm.as_mut().unwrap().chunk(round, offset, &values)?
                }
                AggregatorMsg::ModelEnd { round, digest } => return asm.take().unwrap().finish(round, &digest),
                _ => unreachable!(),
            }
        }
        panic!("no end")
    }

    #[test]
    fn roundtrip_through_chunks() {
        let m = model();
        let msgs: Vec<_> = model_messages(4, ModelPurpose::Train, &m, 5).collect();
        assert_eq!(msgs.len(), 1 + 3 + 1);
        assert_eq!(assemble(msgs).unwrap(), m);
    }

    #[test]
    fn tampering_is_detected() {
        let m = model();
        let mut msgs: Vec<_> = model_messages(4, ModelPurpose::Train, &m, 5).collect();
        if let AggregatorMsg::ModelChunk { values, .. } = &mut msgs[1] {
            values[0] = 42.0;
        }
        assert_eq!(assemble(msgs), Err(StreamError::DigestMismatch));

        let mut msgs: Vec<_> = model_messages(4, ModelPurpose::Train, &m, 5).collect();
        msgs.swap(1, 2);
        assert!(matches!(assemble(msgs), Err(StreamError::OutOfOrder { .. })));

        let mut msgs: Vec<_> = model_messages(4, ModelPurpose::Train, &m, 5).collect();
        msgs.remove(2);
        assert!(matches!(assemble(msgs), Err(StreamError::OutOfOrder { .. })));

        let mut nan = m.clone();
        nan.tensors[1].data[2] = f32::NAN;
        let msgs: Vec<_> = model_messages(4, ModelPurpose::Train, &nan, 5).collect();
        assert_eq!(assemble(msgs), Err(StreamError::NonFinite("b".into())));
        assert!(ModelAssembler::start(0, ModelPurpose::Train, &m.layout(), 3).is_err());
    }

    /// Regression (issue #8, found with the `participant` fuzz target's
    /// huge-layout input): a hostile aggregator's layout whose size overflows
    /// `usize` panicked the member (debug) or wrapped to a small size
    /// (release) instead of being refused.
    #[test]
    fn overflowing_layouts_are_too_large() {
        for shapes in [vec![vec![1usize << 32, 1 << 32]], vec![vec![usize::MAX, 2]], vec![vec![usize::MAX], vec![1]]] {
            let layout = ParamLayout { entries: shapes.into_iter().map(|s| ("w".to_string(), s)).collect() };
            assert_eq!(layout.checked_numel(), None);
            let r = ModelAssembler::start(1, ModelPurpose::Evaluate, &layout, u64::MAX - 1);
            assert_eq!(r.err(), Some(StreamError::TooLarge(u64::MAX)));
        }
        let fine = ParamLayout { entries: vec![("w".into(), vec![3, 4]), ("b".into(), vec![4])] };
        assert_eq!(fine.checked_numel(), Some(16));
    }
}
