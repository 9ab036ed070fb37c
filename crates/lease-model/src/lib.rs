//! The lease handover model lives in `tests/lease_model.rs`: it explores ~18 million
//! states in every test run, so it is a crate of its own, built optimized even in test
//! builds (`[profile.dev.package.quorate-lease-model]` in the workspace manifest),
//! without optimizing the agent that every other test runs.
