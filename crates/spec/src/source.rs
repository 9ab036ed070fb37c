//! A format-neutral document tree with byte spans, built from TOML or JSON text.
//!
//! Decoding works on this tree, so both formats share one decoder and produce the
//! same diagnostics at the right line and column.

use crate::diagnostic::{Diagnostic, Span};

/// Which syntax the spec text is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `quorate.toml`
    Toml,
    /// `cluster.json` (what the NixOS module writes). Strict JSON: no comments.
    Json,
}

impl Format {
    /// Picks the format from a file name: `.json` is JSON, anything else TOML.
    #[must_use]
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Self::Json,
            _ => Self::Toml,
        }
    }
}

/// A value with the span it was written at.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Where the value is in the text.
    pub span: Span,
    /// The value.
    pub value: Value,
}

/// A table entry: the key (with its own span) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The key as written (unescaped).
    pub key: String,
    /// Where the key is.
    pub key_span: Span,
    /// The value.
    pub node: Node,
}

/// A document value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Table / object, in source order.
    Table(Vec<Entry>),
    /// Array.
    Array(Vec<Node>),
    /// String.
    String(String),
    /// Integer that fits i64.
    Integer(i64),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// JSON `null`.
    Null,
    /// A TOML date/time (never valid in a spec, kept to report it).
    Datetime,
}

impl Value {
    /// The name of the value's type, for error messages.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Table(_) => "a table",
            Self::Array(_) => "an array",
            Self::String(_) => "a string",
            Self::Integer(_) => "an integer",
            Self::Float(_) => "a float",
            Self::Bool(_) => "a boolean",
            Self::Null => "null",
            Self::Datetime => "a date-time",
        }
    }
}

/// Parses `text` into a tree; a syntax error is one diagnostic.
///
/// # Errors
/// The syntax error, with its span.
pub fn parse(text: &str, format: Format) -> Result<Node, Box<Diagnostic>> {
    match format {
        Format::Toml => parse_toml(text),
        Format::Json => parse_json(text),
    }
}

fn syntax_error(message: &str, span: Span, format: Format) -> Box<Diagnostic> {
    let what = match format {
        Format::Toml => "TOML",
        Format::Json => "JSON",
    };
    Box::new(
        Diagnostic::error("spec::syntax", "", format!("invalid {what}: {message}"))
            .at(Some(span))
            .label("here")
            .help(format!(
                "fix the {what} syntax at this place; nothing else was checked"
            )),
    )
}

fn parse_toml(text: &str) -> Result<Node, Box<Diagnostic>> {
    use toml::de::{DeTable, DeValue};
    use toml::Spanned;

    fn node(v: &Spanned<DeValue<'_>>) -> Node {
        let span = v.span();
        let value = match v.get_ref() {
            DeValue::String(s) => Value::String(s.to_string()),
            DeValue::Integer(i) => {
                let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
                let (negative, digits) = match digits.strip_prefix('-') {
                    Some(rest) => (true, rest.to_string()),
                    None => (false, digits.trim_start_matches('+').to_string()),
                };
                let digits = digits
                    .trim_start_matches("0x")
                    .trim_start_matches("0o")
                    .trim_start_matches("0b");
                match i64::from_str_radix(digits, i.radix()) {
                    Ok(n) if negative => Value::Integer(-n),
                    Ok(n) => Value::Integer(n),
                    // Out of i64 range: keep as a float so the decoder reports "out of range".
                    Err(_) => Value::Float(f64::INFINITY),
                }
            }
            DeValue::Float(f) => {
                Value::Float(f.as_str().replace('_', "").parse().unwrap_or(f64::NAN))
            }
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(_) => Value::Datetime,
            DeValue::Array(items) => Value::Array(items.iter().map(node).collect()),
            DeValue::Table(t) => Value::Table(table(t)),
        };
        Node { span, value }
    }

    fn table(t: &DeTable<'_>) -> Vec<Entry> {
        t.iter()
            .map(|(k, v)| Entry {
                key: k.get_ref().to_string(),
                key_span: k.span(),
                node: node(v),
            })
            .collect()
    }

    match DeTable::parse(text) {
        Ok(doc) => Ok(Node {
            span: 0..text.len(),
            value: Value::Table(table(doc.get_ref())),
        }),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            Err(syntax_error(e.message().trim(), span, Format::Toml))
        }
    }
}

fn parse_json(text: &str) -> Result<Node, Box<Diagnostic>> {
    use jsonc_parser::ast::Value as J;
    use jsonc_parser::{CollectOptions, ParseOptions};

    fn node(v: &J<'_>) -> Node {
        let r = match v {
            J::StringLit(s) => s.range,
            J::NumberLit(n) => n.range,
            J::BooleanLit(b) => b.range,
            J::Object(o) => o.range,
            J::Array(a) => a.range,
            J::NullKeyword(n) => n.range,
        };
        let value = match v {
            J::StringLit(s) => Value::String(s.value.to_string()),
            J::NumberLit(n) => match n.value.parse::<i64>() {
                Ok(i) => Value::Integer(i),
                Err(_) => Value::Float(n.value.parse().unwrap_or(f64::NAN)),
            },
            J::BooleanLit(b) => Value::Bool(b.value),
            J::NullKeyword(_) => Value::Null,
            J::Array(a) => Value::Array(a.elements.iter().map(node).collect()),
            J::Object(o) => Value::Table(
                o.properties
                    .iter()
                    .map(|p| {
                        let (key, key_span) = match &p.name {
                            jsonc_parser::ast::ObjectPropName::String(s) => {
                                (s.value.to_string(), s.range.start..s.range.end)
                            }
                            jsonc_parser::ast::ObjectPropName::Word(w) => {
                                (w.value.to_string(), w.range.start..w.range.end)
                            }
                        };
                        Entry {
                            key,
                            key_span,
                            node: node(&p.value),
                        }
                    })
                    .collect(),
            ),
        };
        Node {
            span: r.start..r.end,
            value,
        }
    }

    let strict = ParseOptions {
        allow_comments: false,
        allow_loose_object_property_names: false,
        allow_trailing_commas: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    match jsonc_parser::parse_to_ast(text, &CollectOptions::default(), &strict) {
        Ok(result) => match result.value {
            Some(v) => Ok(node(&v)),
            None => Err(syntax_error("the document is empty", 0..0, Format::Json)),
        },
        Err(e) => {
            let r = e.range();
            Err(syntax_error(
                &e.kind().to_string(),
                r.start..r.end,
                Format::Json,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_give_the_same_tree_shape() {
        let t = parse("[a]\nb = [1, \"x\", true]\n", Format::Toml).unwrap();
        let j = parse(r#"{"a": {"b": [1, "x", true]}}"#, Format::Json).unwrap();
        fn strip(n: &Node) -> Value {
            match &n.value {
                Value::Table(es) => Value::Table(
                    es.iter()
                        .map(|e| Entry {
                            key: e.key.clone(),
                            key_span: 0..0,
                            node: Node {
                                span: 0..0,
                                value: strip(&e.node),
                            },
                        })
                        .collect(),
                ),
                Value::Array(xs) => Value::Array(
                    xs.iter()
                        .map(|x| Node {
                            span: 0..0,
                            value: strip(x),
                        })
                        .collect(),
                ),
                v => v.clone(),
            }
        }
        assert_eq!(strip(&t), strip(&j));
    }

    #[test]
    fn spans_point_at_the_value() {
        let text = "[cluster]\nname = \"lab\"\n";
        let doc = parse(text, Format::Toml).unwrap();
        let Value::Table(top) = doc.value else {
            panic!()
        };
        let Value::Table(cluster) = &top[0].node.value else {
            panic!()
        };
        assert_eq!(&text[cluster[0].key_span.clone()], "name");
        assert_eq!(&text[cluster[0].node.span.clone()], "\"lab\"");
    }

    #[test]
    fn syntax_errors_have_a_span() {
        let e = parse("a = [1,\n", Format::Toml).unwrap_err();
        assert_eq!(e.code, "spec::syntax");
        assert!(e.span.is_some());
        let e = parse("{\"a\": 1,}", Format::Json).unwrap_err();
        assert!(e.message.contains("JSON"), "{}", e.message);
        let e = parse("// c\n{}", Format::Json).unwrap_err();
        assert_eq!(e.code, "spec::syntax");
    }

    #[test]
    fn big_and_odd_integers_do_not_panic() {
        for text in [
            "a = 99999999999999999999",
            "a = -0x1",
            "a = 0b101",
            "a = +5",
            "a = 1_000",
        ] {
            let _ = parse(text, Format::Toml);
        }
    }
}
