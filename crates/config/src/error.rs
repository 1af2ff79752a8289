//! Where a problem is (file, line, key) and what it is, in plain words; and the context that
//! collects every problem of one file, so that one run reports them all.

use std::fmt;
use std::ops::Range;

/// A place in a config file: its line and the key written there (with its table), when the
/// problem is at one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based; `None` when the problem is about the file as a whole.
    pub line: Option<usize>,
    pub key: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        Ok(())
    }
}

/// A value from the config with the place it was written: what a later step (reading the
/// files the config names) needs to report its own problems at the right line. Two are equal
/// when their values are, wherever they were written.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub value: T,
    pub at: Location,
}

impl<T: PartialEq> PartialEq for Located<T> {
    fn eq(&self, other: &Located<T>) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Located<T> {}

impl<T> Located<T> {
    /// A problem with this value, reported where it was written.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            at: self.at.clone(),
            message: message.into(),
        }
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub at: Location,
    pub message: String,
}

impl ConfigError {
    /// A problem with the file as a whole (it cannot be read, say).
    pub fn file(file: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            at: Location {
                file: file.to_owned(),
                line: None,
                key: None,
            },
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one run, in the order of the file; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<ConfigError>);

impl Errors {
    /// The problems sorted by line (problems about the whole file first), each once.
    pub fn new(mut errors: Vec<ConfigError>) -> Errors {
        errors.sort_by_key(|e| e.at.line.unwrap_or(0));
        errors.dedup();
        Errors(errors)
    }
}

impl fmt::Display for Errors {
    /// One problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, e) in self.0.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

/// The text being checked, and what was found wrong with it so far.
pub(crate) struct Ctx<'a> {
    lines: Lines<'a>,
    file: &'a str,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

impl<'a> Ctx<'a> {
    pub fn new(text: &'a str, file: &'a str) -> Ctx<'a> {
        Ctx {
            lines: Lines::new(text),
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The place of `span` in the text; a value the file does not have (a default, at `0..0`)
    /// is placed at `key` without a line.
    pub fn at(&self, span: Range<usize>, key: &str) -> Location {
        if span.is_empty() && span.start == 0 {
            return Location {
                file: self.file.to_owned(),
                line: None,
                key: (!key.is_empty()).then(|| key.to_owned()),
            };
        }
        self.lines.locate(self.file, span)
    }

    /// A problem at `span` (or at `key` when the value is not in the file).
    pub fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let at = self.at(span, key);
        self.errors.push(ConfigError {
            at,
            message: message.into(),
        });
    }

    /// The first of `spans` that the file has (a default stands at `0..0`): where a problem
    /// between two values is reported when one of them is a default.
    pub fn first_written(spans: &[Range<usize>]) -> Range<usize> {
        spans
            .iter()
            .find(|s| !(s.is_empty() && s.start == 0))
            .cloned()
            .unwrap_or(0..0)
    }

    /// A problem at `span` of the text itself (a syntax error): always at its line, even at
    /// the very start, where [`Ctx::error`] reads `0..0` as a value the file does not have.
    pub fn syntax_error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let at = self.lines.locate(self.file, span);
        self.errors.push(ConfigError {
            at,
            message: message.into(),
        });
    }

    /// Something that works but is likely not what was meant.
    pub fn warn(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let at = self.at(span, key);
        self.warnings.push(ConfigError {
            at,
            message: message.into(),
        });
    }

    /// `value` with its place.
    pub fn located<T>(&self, value: T, span: Range<usize>, key: &str) -> Located<T> {
        Located {
            value,
            at: self.at(span, key),
        }
    }
}

/// The text's lines, indexed once, so that placing each of many problems costs a binary search
/// and not a walk through the text (a broken file may have a problem on every line).
struct Lines<'a> {
    text: &'a str,
    /// Where each line starts (the first at 0, then after each `\n`).
    starts: Vec<usize>,
    /// For each line, the last table header (`[x]`, `[[x]]`) on a line before it.
    header_before: Vec<Option<usize>>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        let starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let mut header_before = Vec::with_capacity(starts.len());
        let mut last = None;
        for n in 0..starts.len() {
            header_before.push(last);
            if Lines::line_in(text, &starts, n).trim().starts_with('[') {
                last = Some(n);
            }
        }
        Lines {
            text,
            starts,
            header_before,
        }
    }

    /// Line `n` (from 0) without its line break.
    fn line_in<'t>(text: &'t str, starts: &[usize], n: usize) -> &'t str {
        let end = starts.get(n + 1).map_or(text.len(), |next| next - 1);
        let line = &text[starts[n]..end];
        line.strip_suffix('\r').unwrap_or(line)
    }

    /// The line of `span` and the key written there, with its table.
    fn locate(&self, file: &str, span: Range<usize>) -> Location {
        let text = self.text;
        let start = floor_char_boundary(text, span.start.min(text.len()));
        // The lines that start at or before `start`: the number of `span`'s line.
        let line = self.starts.partition_point(|&s| s <= start);
        let line_text = Lines::line_in(text, &self.starts, line - 1);
        let table = self.header_before[line - 1]
            .map(|h| table_name(Lines::line_in(text, &self.starts, h).trim()).to_owned());
        let header = line_text.trim();
        let key = match line_text.split_once('=') {
            _ if header.starts_with('[') => Some(table_name(header).to_owned()),
            // A line too broken to name a key (a syntax error's: `= 1`) names only its table.
            Some((k, _)) if k.trim().is_empty() || k.contains(char::is_control) => table,
            Some((k, _)) => {
                let k = k.trim().trim_matches('"');
                Some(match &table {
                    Some(t) => format!("{t}.{k}"),
                    None => k.to_owned(),
                })
            }
            _ => table,
        };
        Location {
            file: file.to_owned(),
            line: Some(line),
            key,
        }
    }
}

/// `smtp` of `[smtp]`, `route` of `[[route]]` (a comment after it ignored).
fn table_name(header: &str) -> &str {
    let header = header.split('#').next().unwrap_or("");
    header.trim().trim_matches(|c| c == '[' || c == ']').trim()
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// serde's and toml's messages in plain words: what was expected, what was found, which keys
/// exist; never a Rust type name.
pub(crate) fn plain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "expected {}, not {}",
                expected_words(expected),
                found_words(found)
            );
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "{} is out of range: expected {}",
                found_words(found),
                expected_words(expected)
            );
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, known) = rest.split_once(", ").unwrap_or((rest, ""));
        let known = names(known);
        return match known.is_empty() {
            true => format!("unknown key {}: this table takes no keys", unquote(field)),
            false => format!("unknown key {}; the keys here are {known}", unquote(field)),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (variant, known) = rest.split_once(", ").unwrap_or((rest, ""));
        return format!("\"{}\" is not one of {}", unquote(variant), names(known));
    }
    if let Some(field) = message.strip_prefix("missing field ") {
        return format!("{} is missing", unquote(field));
    }
    if let Some(field) = message.strip_prefix("duplicate field ") {
        return format!("{} is given twice", unquote(field));
    }
    message.trim_end().to_owned()
}

/// `expected one of `a`, `b`` (or `expected `a` or `b``, `expected `a``) as "a, b".
fn names(known: &str) -> String {
    let list = known
        .trim()
        .trim_start_matches("expected one of ")
        .trim_start_matches("expected ");
    list.split(['`'])
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "," && *s != "or")
        .collect::<Vec<_>>()
        .join(", ")
}

fn unquote(s: &str) -> &str {
    s.trim().trim_matches('`')
}

fn expected_words(expected: &str) -> String {
    let e = expected.trim();
    let words = match e {
        "usize" | "u64" | "u32" | "u16" | "u8" | "i64" | "i32" | "i16" | "i8" | "isize" => {
            let max = match e {
                "u8" => Some("255"),
                "u16" => Some("65535"),
                "u32" => Some("4294967295"),
                _ => None,
            };
            return match max {
                Some(max) => format!("a whole number from 0 to {max}"),
                None if e.starts_with('u') => "a whole number, 0 or more".to_owned(),
                None => "a whole number".to_owned(),
            };
        }
        "a boolean" | "bool" => "true or false",
        "a sequence" => "a list, like [\"a\", \"b\"]",
        "a string" | "string" => "text in quotes",
        "a map" => "a table",
        "f64" | "f32" => "a number",
        _ if e.starts_with("struct ") => "a table",
        _ if e.starts_with("enum ") => "one of the named values",
        _ => return e.to_owned(),
    };
    words.to_owned()
}

fn found_words(found: &str) -> String {
    let f = found.trim();
    for (kind, shown) in [
        ("string ", "the text "),
        ("integer ", "the number "),
        ("floating point ", "the number "),
        ("boolean ", ""),
    ] {
        if let Some(value) = f.strip_prefix(kind) {
            return format!("{shown}{}", value.trim_matches('`'));
        }
    }
    match f {
        "sequence" => "a list".to_owned(),
        "map" => "a table".to_owned(),
        _ => f.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn messages_in_plain_words() {
        let cases = [
            (
                "invalid type: string \"many\", expected usize",
                "expected a whole number, 0 or more, not the text \"many\"",
            ),
            (
                "invalid type: string \"x\", expected a sequence",
                "expected a list, like [\"a\", \"b\"], not the text \"x\"",
            ),
            (
                "invalid type: integer `5`, expected a string",
                "expected text in quotes, not the number 5",
            ),
            (
                "invalid value: integer `70000`, expected u16",
                "the number 70000 is out of range: expected a whole number from 0 to 65535",
            ),
            (
                "unknown field `max_recipient`, expected one of `local_domains`, `max_recipients`",
                "unknown key max_recipient; the keys here are local_domains, max_recipients",
            ),
            (
                "unknown variant `pop3`, expected one of `mx`, `submission`, `submissions`",
                "\"pop3\" is not one of mx, submission, submissions",
            ),
            (
                "unknown variant `x`, expected `text` or `json`",
                "\"x\" is not one of text, json",
            ),
            ("missing field `kind`", "kind is missing"),
            ("something of our own\n", "something of our own"),
        ];
        for (message, expected) in cases {
            assert_eq!(plain(message), expected, "{message}");
        }
    }
}
