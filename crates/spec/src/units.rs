//! Durations ("1.5s", "500ms") and sizes ("10GiB", "512M") as written in a spec.
//!
//! Both are stored exactly (milliseconds, bytes) and written back in one canonical
//! form, so a spec that goes TOML → model → JSON → model is unchanged.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration from the spec, with millisecond resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpecDuration(Duration);

impl SpecDuration {
    /// A duration of `ms` milliseconds.
    #[must_use]
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// The duration as a standard library value.
    #[must_use]
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Whole milliseconds.
    #[must_use]
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Why a duration or size string was rejected; the text is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

const DURATION_UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// Splits "1.5s" into ("1.5", "s"), trimming spaces between number and unit.
fn split_number(text: &str) -> (&str, &str) {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    (&text[..end], text[end..].trim())
}

/// Multiplies a decimal number written as text by an integer scale, exactly.
/// Returns `None` when the result is not a whole number or overflows.
fn scale_decimal(number: &str, scale: u64) -> Option<u64> {
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut total = whole.checked_mul(scale)?;
    if !frac.is_empty() {
        let digits = u32::try_from(frac.len()).ok()?;
        let denom = 10u64.checked_pow(digits)?;
        let frac_value: u64 = frac.parse().ok()?;
        let scaled = u128::from(frac_value) * u128::from(scale);
        if scaled % u128::from(denom) != 0 {
            return None;
        }
        total = total.checked_add(u64::try_from(scaled / u128::from(denom)).ok()?)?;
    }
    Some(total)
}

impl std::str::FromStr for SpecDuration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let hint = "write a number with a unit: \"500ms\", \"1.5s\", \"2m\" or \"1h\"";
        let (number, unit) = split_number(text);
        if number.is_empty() {
            return Err(UnitError(format!("`{text}` is not a duration; {hint}")));
        }
        if unit.is_empty() {
            return Err(UnitError(format!("`{text}` has no unit; {hint}")));
        }
        let Some(&(_, scale)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(UnitError(format!(
                "`{unit}` is not a duration unit; use ms, s, m or h ({hint})"
            )));
        };
        match scale_decimal(number, scale) {
            Some(ms) => Ok(Self::from_millis(ms)),
            None => Err(UnitError(format!(
                "`{text}` is finer than a millisecond or too large; {hint}"
            ))),
        }
    }
}

impl fmt::Display for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        for &(unit, scale) in DURATION_UNITS.iter().rev() {
            if ms.is_multiple_of(scale) {
                return write!(f, "{}{unit}", ms / scale);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for SpecDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpecDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for SpecDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": r"^\s*([0-9]+(\.[0-9]+)?|\.[0-9]+)\s*(ms|s|m|h)\s*$",
            "description": "A duration with a unit: \"500ms\", \"1.5s\", \"2m\", \"1h\".",
            "examples": ["100ms", "1.5s"]
        })
    }
}

/// A size in bytes from the spec. K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024
/// (as DRBD and LVM count), KB/MB/GB/TB powers of 1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("K", 1 << 10),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("G", 1 << 30),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("T", 1 << 40),
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
];

impl std::str::FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let hint = "write a number with a unit: \"512MiB\", \"10GiB\", \"1.5T\"";
        let (number, unit) = split_number(text);
        if number.is_empty() {
            return Err(UnitError(format!("`{text}` is not a size; {hint}")));
        }
        let unit = if unit.is_empty() { "B" } else { unit };
        let Some(&(_, scale)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(UnitError(format!(
                "`{unit}` is not a size unit; use B, KiB, MiB, GiB, TiB (or K, M, G, T) ({hint})"
            )));
        };
        match scale_decimal(number, scale) {
            Some(bytes) => Ok(Self(bytes)),
            None => Err(UnitError(format!(
                "`{text}` is not a whole number of bytes or too large; {hint}"
            ))),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, scale) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": r"^\s*([0-9]+(\.[0-9]+)?|\.[0-9]+)\s*(B|K|KiB|KB|M|MiB|MB|G|GiB|GB|T|TiB|TB)?\s*$",
            "description": "A size: \"512MiB\", \"10GiB\" (K/M/G/T are binary, KB/MB/GB/TB decimal).",
            "examples": ["10GiB"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_canonically() {
        let cases = [
            ("100ms", 100, "100ms"),
            ("1.5s", 1500, "1500ms"),
            ("2s", 2000, "2s"),
            (" 0.5 s ", 500, "500ms"),
            ("5m", 300_000, "5m"),
            ("1h", 3_600_000, "1h"),
            ("0s", 0, "0s"),
            ("90s", 90_000, "90s"),
        ];
        for (text, ms, canonical) in cases {
            let d: SpecDuration = text.parse().unwrap();
            assert_eq!(d.as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), canonical, "{text}");
            assert_eq!(canonical.parse::<SpecDuration>().unwrap(), d);
        }
    }

    #[test]
    fn bad_durations_are_rejected_with_a_reason() {
        for text in [
            "",
            "5",
            "s",
            "1.5",
            "0.5ms",
            "1x",
            "1..5s",
            "-1s",
            "99999999999999999999h",
        ] {
            let err = text.parse::<SpecDuration>().unwrap_err();
            assert!(err.0.contains('`'), "{text}: {err}");
        }
    }

    #[test]
    fn sizes_parse_and_print_canonically() {
        let cases = [
            ("10GiB", 10 << 30, "10GiB"),
            ("10G", 10 << 30, "10GiB"),
            ("1.5T", 3 << 39, "1536GiB"),
            ("1GB", 1_000_000_000, "1000000000B"),
            ("512", 512, "512B"),
            ("2048K", 2 << 20, "2MiB"),
        ];
        for (text, bytes, canonical) in cases {
            let s: ByteSize = text.parse().unwrap();
            assert_eq!(s.0, bytes, "{text}");
            assert_eq!(s.to_string(), canonical, "{text}");
            assert_eq!(canonical.parse::<ByteSize>().unwrap(), s);
        }
        for text in ["", "G", "1.3B", "10 parsecs", "-1G"] {
            assert!(text.parse::<ByteSize>().is_err(), "{text}");
        }
    }
}
