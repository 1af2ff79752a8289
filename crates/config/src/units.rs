//! Sizes and durations as admins write them: `"10M"`, `"5m"`, or plain numbers.

use std::time::Duration;

use serde::Deserialize;

/// A size: a number of octets, or a string with a unit (`"10M"`, `"512k"`, `"1G"`; powers of
/// 1024, as Postfix and most admins mean them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        number_or_text(d, parse_size).map(ByteSize)
    }
}

/// A duration: seconds as a number, or a string with a unit (`"30s"`, `"5m"`, `"1h"`, `"2d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Seconds, D::Error> {
        number_or_text(d, parse_duration).map(Seconds)
    }
}

/// As an admin would write it: the largest unit that divides it (`"50M"`, `"512k"`, `1000`).
impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        let with_unit = [(1u64 << 30, "G"), (1 << 20, "M"), (1 << 10, "k")]
            .into_iter()
            .find(|(factor, _)| n != 0 && n.is_multiple_of(*factor))
            .map(|(factor, unit)| format!("{}{unit}", n / factor));
        match with_unit {
            Some(text) => s.serialize_str(&text),
            None => s.serialize_u64(n),
        }
    }
}

/// As an admin would write it: the largest unit that divides it (`"2d"`, `"5m"`, `"30s"`).
impl serde::Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&duration_text(self.0))
    }
}

/// A duration in the largest unit that divides it, as [`parse_duration`] reads it back.
pub fn duration_text(d: Duration) -> String {
    let n = d.as_secs();
    let (factor, unit) = [(86_400, "d"), (3600, "h"), (60, "m")]
        .into_iter()
        .find(|(factor, _)| n != 0 && n.is_multiple_of(*factor))
        .unwrap_or((1, "s"));
    format!("{}{unit}", n / factor)
}

pub(crate) fn secs(n: u64) -> Seconds {
    Seconds(Duration::from_secs(n))
}

/// A plain number, or text with a unit read by `parse` (which also reads plain digits).
fn number_or_text<'de, D: serde::Deserializer<'de>, T>(
    d: D,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    let text = match Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a number, or text with a unit like \"30s\" or \"10M\"")
    })? {
        Raw::Number(n) => n.to_string(),
        Raw::Text(s) => s,
    };
    parse(&text).map_err(serde::de::Error::custom)
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 1048576, \"512k\", \"10M\" or \"1G\""))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use k, M or G)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("{s:?} is not a duration like 30, \"30s\", \"5m\", \"1h\" or \"2d\"")
    })?;
    let factor = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(factor)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1 G"), Ok(1 << 30));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert!(parse_size("99999999999999999999G").is_err());
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("1w").is_err());
    }
}
