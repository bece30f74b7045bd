//! What a member's local training hands back to the protocol.

use crate::ModelParams;

/// The result of local training the driver hands back.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug)]
pub struct TrainedUpdate {
    /// Trainable parameters after local training.
    pub params: ModelParams,
    /// Training examples on the member (weights the update outside DP).
    pub num_examples: u64,
    /// Mean training loss, for the member's own log (0 under DP).
    pub mean_loss: f64,
}
