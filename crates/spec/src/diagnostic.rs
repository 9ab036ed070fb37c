//! One problem found in a spec: what, where (a key path and, when the spec came from
//! text, a byte span), and how to fix it. Rendering (carets, colours) is the CLI's job.

use serde::Serialize;

/// Byte range into the spec text.
pub type Span = std::ops::Range<usize>;

/// How bad a problem is. Errors make `check` exit 1; warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The spec is usable, but something deserves attention.
    Warning,
    /// The spec cannot be used.
    Error,
}

/// A second place a diagnostic points at (the other duplicate, the first definition).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Related {
    /// Key path of that place.
    pub path: String,
    /// Byte span of that place, when known.
    #[serde(skip)]
    pub span: Option<Span>,
    /// What that place is.
    pub label: String,
}

/// A problem found while reading or validating a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable machine-readable code, e.g. `spec::unknown-key`.
    pub code: &'static str,
    /// One sentence: what is wrong.
    pub message: String,
    /// Key path, e.g. `services.web.after[0]` (empty for the whole document).
    pub path: String,
    /// Byte span in the source text, when the spec came from text.
    #[serde(skip)]
    pub span: Option<Span>,
    /// Short text shown under the caret.
    pub label: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Other places involved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<Related>,
}

impl Diagnostic {
    /// A new error at `path`.
    pub fn error(code: &'static str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, path, message)
    }

    /// A new warning at `path`.
    pub fn warning(
        code: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Warning, code, path, message)
    }

    fn new(
        severity: Severity,
        code: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            code,
            message: message.into(),
            path: path.into(),
            span: None,
            label: String::new(),
            help: None,
            related: Vec::new(),
        }
    }

    /// Sets the span.
    #[must_use]
    pub fn at(mut self, span: Option<Span>) -> Self {
        self.span = span;
        self
    }

    /// Sets the label shown under the caret.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Sets the fix hint.
    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds another place involved in the problem.
    #[must_use]
    pub fn related(
        mut self,
        path: impl Into<String>,
        span: Option<Span>,
        label: impl Into<String>,
    ) -> Self {
        self.related.push(Related {
            path: path.into(),
            span,
            label: label.into(),
        });
        self
    }

    /// True for errors.
    #[must_use]
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
#[must_use]
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn line_column_counts_from_one_in_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 3));
        assert_eq!(line_column(text, 1000), (3, 1));
    }
}
