//! Differential privacy: clipping, exact noise samplers, accounting and budgets.
