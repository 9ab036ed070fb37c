//! Rendering spec diagnostics for people (miette: file, line, column, caret, help)
//! and for machines (`--json`).

use std::fmt;
use std::io::IsTerminal;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use quorate_spec::{line_column, Diagnostic, Severity};
use serde_json::json;

/// One diagnostic tied to its source text, in the shape miette renders.
#[derive(Debug)]
struct Report<'a> {
    diagnostic: &'a Diagnostic,
    source: &'a NamedSource<String>,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic.message)?;
        if self.diagnostic.span.is_none() && !self.diagnostic.path.is_empty() {
            write!(f, " (at `{}`)", self.diagnostic.path)?;
        }
        Ok(())
    }
}

impl std::error::Error for Report<'_> {}

fn span(s: &std::ops::Range<usize>) -> SourceSpan {
    SourceSpan::from((s.start, s.end.saturating_sub(s.start)))
}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diagnostic.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.diagnostic
            .span
            .as_ref()
            .map(|_| self.source as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let primary = self.diagnostic.span.as_ref()?;
        let label = (!self.diagnostic.label.is_empty()).then(|| self.diagnostic.label.clone());
        let mut labels = vec![LabeledSpan::new_primary_with_span(label, span(primary))];
        for r in &self.diagnostic.related {
            if let Some(s) = &r.span {
                labels.push(LabeledSpan::new_with_span(Some(r.label.clone()), span(s)));
            }
        }
        Some(Box::new(labels.into_iter()))
    }
}

/// Whether to colour output on stderr.
fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// Renders diagnostics as people read them.
#[must_use]
pub fn human(file: &str, text: &str, diagnostics: &[Diagnostic]) -> String {
    let theme = if colour() {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
    let source = NamedSource::new(file, text.to_string());
    let mut out = String::new();
    for d in diagnostics {
        let report = Report {
            diagnostic: d,
            source: &source,
        };
        if handler.render_report(&mut out, &report).is_err() {
            out.push_str(&format!("{}: {}\n", d.code, d.message));
        }
    }
    out
}

/// One diagnostic as JSON, with 1-based line and column.
#[must_use]
pub fn json_diagnostic(file: &str, text: &str, d: &Diagnostic) -> serde_json::Value {
    let position =
        |s: &Option<std::ops::Range<usize>>| s.as_ref().map(|s| line_column(text, s.start));
    let (line, column) = position(&d.span).map_or((None, None), |(l, c)| (Some(l), Some(c)));
    let related: Vec<_> = d
        .related
        .iter()
        .map(|r| {
            let (line, column) =
                position(&r.span).map_or((None, None), |(l, c)| (Some(l), Some(c)));
            json!({"path": r.path, "line": line, "column": column, "label": r.label})
        })
        .collect();
    json!({
        "file": file,
        "severity": d.severity,
        "code": d.code,
        "message": d.message,
        "path": d.path,
        "line": line,
        "column": column,
        "label": d.label,
        "help": d.help,
        "related": related,
    })
}
