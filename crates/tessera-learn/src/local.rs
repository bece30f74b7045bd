//! The one interface between a member's driver and its local model.

use tessera_core::{DpSettings, EvalMetrics, LocalStatistics, ModelParams, StatsRelease, TrainSettings, TrainedUpdate};
use tessera_privacy::PrivacyError;

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
    ) -> Result<TrainedUpdate, LocalError>;

    /// Evaluate `model` on the member's held-out split.
    fn evaluate(&mut self, model: &ModelParams) -> Result<EvalMetrics, LocalError>;

    /// Count the member's records exactly as a DP statistics release asks
    /// (issue #18). The counts leave only through the noised secure sum; a
    /// model without tabular records to count refuses.
    fn statistics(&mut self, release: &StatsRelease) -> Result<LocalStatistics, LocalError> {
        let _ = release;
        Err(LocalError::Unsupported("this model counts no statistics".to_string()))
    }
}

/// Why local work failed. Messages name settings, tensors and files, never
/// a record or a per-example value: the member logs them and declines the
/// round with them.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The round's training or DP-SGD settings are unusable.
    #[error("invalid training settings: {0}")]
    Settings(&'static str),
    /// The round asks for something this model does not do.
    #[error("{0}")]
    Unsupported(String),
    /// DP-SGD's noise could not be drawn: nothing trained may be released.
    #[error("DP-SGD noise")]
    Noise(#[from] PrivacyError),
    /// A non-finite value appeared: the update is not released.
    #[error("local training diverged: a non-finite {0} appeared")]
    Diverged(&'static str),
    /// The model's own error: its data, configuration or tensors.
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
}

impl LocalError {
    /// Wrap a model crate's typed error.
    pub fn model(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        LocalError::Model(Box::new(e))
    }
}
