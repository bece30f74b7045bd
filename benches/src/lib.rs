//! Helpers shared by Tessera's benchmarks.
