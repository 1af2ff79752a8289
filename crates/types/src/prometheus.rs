//! Prometheus' text exposition format, written in one place for every crate that has
//! metrics: a family's `# HELP` and `# TYPE` lines, then its samples, label values escaped
//! (backslash, double quote, line feed) so that no value can break the format.

use std::fmt::{Display, Write as _};

/// What a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Metrics text being written.
#[derive(Debug, Default)]
pub struct Text(String);

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Starts the family `name`: its help text and kind. Its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Text {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.name()
        );
        self
    }

    /// One sample of `name` (the family's name, or with `_bucket`, `_sum`, `_count`).
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Text {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"");
                for c in value.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) -> &mut Text {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// Appends text written elsewhere.
    pub fn append(&mut self, other: Text) -> &mut Text {
        self.0.push_str(&other.0);
        self
    }

    pub fn finish(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaped_labels() {
        let mut text = Text::new();
        text.single("up", Kind::Gauge, "Whether it is up.", 1)
            .family("refusals_total", Kind::Counter, "Refusals, by reason.")
            .sample(
                "refusals_total",
                &[("stage", "rcpt"), ("reason", "a \"b\"\\\nc")],
                2,
            );
        assert_eq!(
            text.finish(),
            "# HELP up Whether it is up.\n# TYPE up gauge\nup 1\n\
             # HELP refusals_total Refusals, by reason.\n# TYPE refusals_total counter\n\
             refusals_total{stage=\"rcpt\",reason=\"a \\\"b\\\"\\\\\\nc\"} 2\n"
        );
    }
}
