//! Simulator: many parties on one machine through the same protocol code.
