//! The aggregator daemon: rounds, cohorts, aggregation, durable state and audit.
