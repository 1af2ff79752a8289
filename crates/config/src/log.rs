//! `[log]`: how much is logged, and in which form.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::Ctx;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// A tracing filter: a level (`info`), or levels by target (`backstop_delivery=debug,info`);
    /// every part names a level, so a typo can never silence the log.
    pub level: String,
    /// One JSON object per line (with the session's and the delivery's span fields) instead
    /// of text.
    pub json: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLog {
    level: Spanned<String>,
    format: Format,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Text,
    Json,
}

impl Default for RawLog {
    fn default() -> RawLog {
        RawLog {
            level: Spanned::new(0..0, "info".into()),
            format: Format::Text,
        }
    }
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

pub(crate) fn check(ctx: &mut Ctx<'_>, raw: RawLog) -> Log {
    let level = raw.level.get_ref();
    let level = match check_level(level) {
        Ok(()) => level.clone(),
        Err(message) => {
            ctx.error(raw.level.span(), "log.level", message);
            "info".to_owned()
        }
    };
    Log {
        level,
        json: raw.format == Format::Json,
    }
}

/// A level, or comma-separated `level` and `target=level` parts. A bare word that is not a
/// level would be read by tracing as a target at every level, and everything else silenced.
pub fn check_level(filter: &str) -> Result<(), String> {
    let known = || LEVELS.join(", ");
    if filter.trim().is_empty() {
        return Err(format!("empty: give a level ({})", known()));
    }
    for part in filter.split(',').map(str::trim) {
        let (target, level) = match part.rsplit_once('=') {
            Some((target, level)) => (Some(target.trim()), level.trim()),
            None => (None, part),
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{level:?} is not a level ({}); per target: \"backstop_delivery=debug,info\"",
                known()
            ));
        }
        if target.is_some_and(|t| t.is_empty() || t.contains(char::is_whitespace)) {
            return Err(format!("{part:?} is not target=level"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_level;

    #[test]
    fn levels_are_checked() {
        for good in [
            "info",
            "WARN",
            "backstop_delivery=debug,info",
            "off",
            "a::b=trace",
        ] {
            assert_eq!(check_level(good), Ok(()), "{good}");
        }
        for bad in [
            "verbose",
            "",
            "info,",
            "=debug",
            "backstop=loud",
            "info debug",
        ] {
            assert!(check_level(bad).is_err(), "{bad}");
        }
    }
}
