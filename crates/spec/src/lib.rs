//! The cluster spec: one Rust model ([`Spec`]), read from TOML or JSON with the same
//! meaning, validated with every problem reported at once.
//!
//! **Architecture Invariant:** this crate knows nothing about locks, Raft, agents or
//! the CLI. It does no I/O: callers hand it text and get a spec and diagnostics back.

pub mod decode;
pub mod diagnostic;
pub mod model;
pub mod source;
pub mod units;
pub mod validate;

pub use diagnostic::{line_column, Diagnostic, Severity, Span};
pub use model::CEPH_MEMSTORE;
pub use model::{
    Alerts, CephSpec, Cluster, Health, HealthKind, Network, NodeSpec, NodeWireguard, Restart,
    ServiceKind, ServiceSpec, Spec, StorageKind, StorageSpec, Timings, Transport,
};
pub use source::Format;
pub use units::{ByteSize, SpecDuration};

/// What checking a spec text found.
#[derive(Debug)]
pub struct Checked {
    /// The spec, when there is no error (warnings allowed).
    pub spec: Option<Spec>,
    /// Every problem found, errors and warnings, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    /// Number of errors.
    #[must_use]
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// Number of warnings.
    #[must_use]
    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }
}

/// Parses, decodes and validates spec text. Never panics on any input.
#[must_use]
pub fn check(text: &str, format: Format) -> Checked {
    let root = match source::parse(text, format) {
        Ok(root) => root,
        Err(d) => {
            return Checked {
                spec: None,
                diagnostics: vec![*d],
            }
        }
    };
    let decoded = decode::decode(&root);
    let mut diagnostics = decoded.diagnostics;
    diagnostics.extend(validate::validate(
        &decoded.spec,
        &decoded.spans,
        &decoded.broken,
    ));
    diagnostics.sort_by_key(|d| (d.span.as_ref().map_or(usize::MAX, |s| s.start), d.severity));
    let ok = !diagnostics.iter().any(Diagnostic::is_error) && decoded.broken.is_empty();
    Checked {
        spec: ok.then_some(decoded.spec),
        diagnostics,
    }
}

/// Validates a spec that is already typed (from the Raft log, or built in code).
/// Diagnostics carry key paths but no spans.
#[must_use]
pub fn validate_spec(spec: &Spec) -> Vec<Diagnostic> {
    validate::validate(
        spec,
        &decode::SpanIndex::default(),
        &std::collections::BTreeSet::new(),
    )
}

/// The JSON Schema of the spec, for editors and the NixOS module.
#[must_use]
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Spec)).unwrap_or(serde_json::Value::Null)
}
