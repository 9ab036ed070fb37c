//! The safety checker lives in the fault lab (`quorate_lab::checker`), independent of
//! the agent code; the loopback tests use the same one.

// Each test binary uses a different part of it.
#[allow(unused_imports)]
pub use quorate_lab::checker::{double_runs, mono_ns, runs, violations, Run};

/// Appends a record to a witness journal (the harness's `poweroff` records).
pub fn append(journal: &std::path::Path, line: &str) {
    quorate_lab::checker::append(journal, line).expect("the witness journal is writable");
}
