//! Secure aggregation (SecAgg with dropout recovery, SecAgg+) as sans-IO state machines.
