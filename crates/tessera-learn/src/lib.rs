//! Local training with burn: models, data loading, transfer learning and evaluation.
