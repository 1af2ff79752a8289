//! `[content]` and `[[filter]]`: the checks of a message before the reply to DATA.

use std::time::Duration;

use backstop_filter::net::Endpoint;
use backstop_filter::pipeline::{Check, OnError, Scanner};
use backstop_filter::rules::{Action, Matcher, Rule};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::Ctx;
use crate::units::{ByteSize, Seconds};

pub use backstop_filter::content::ContentAction;

/// [`ContentAction`] as the config spells it.
#[derive(Serialize, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawAction {
    #[default]
    Off,
    Reject,
    Quarantine,
}

impl From<RawAction> for ContentAction {
    fn from(raw: RawAction) -> ContentAction {
        match raw {
            RawAction::Off => ContentAction::Off,
            RawAction::Reject => ContentAction::Reject,
            RawAction::Quarantine => ContentAction::Quarantine,
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawContent {
    #[serde(default)]
    rfc5322: RawAction,
    deadline: Option<Seconds>,
    max_scan_size: Option<ByteSize>,
}

/// The `[content]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentSettings {
    pub rfc5322: ContentAction,
    /// The deadline of a whole content run: far below the 10 minutes a client waits for the
    /// reply to DATA (RFC 5321 4.5.3.2.6).
    pub deadline: Duration,
    /// The largest message the checks that need it whole (DKIM, DMARC, the `[[filter]]`
    /// pipeline) read into memory; a larger one is accepted unchecked by them, with a log
    /// line and a note in `Authentication-Results:`. `None`: every message, up to
    /// `smtp.max_message_size`.
    pub max_scan_size: Option<u64>,
}

pub(crate) fn content(raw: RawContent) -> ContentSettings {
    let deadline = raw.deadline.map_or(Duration::from_secs(60), |d| {
        d.0.clamp(Duration::from_secs(1), Duration::from_secs(300))
    });
    ContentSettings {
        rfc5322: raw.rfc5322.into(),
        deadline,
        max_scan_size: raw.max_scan_size.map(|b| b.0),
    }
}

/// One `[[filter]]`: a rule on the message, or a scanner reached over the network; its
/// `type` says which, and which of the other keys apply.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFilter {
    #[serde(rename = "type")]
    kind: Spanned<FilterKind>,
    /// `header`: the field to match (any field when absent).
    header: Option<Spanned<String>>,
    pattern: Option<Spanned<String>>,
    extensions: Option<Spanned<Vec<String>>>,
    mime_types: Option<Spanned<Vec<String>>>,
    max: Option<Spanned<usize>>,
    action: Option<Spanned<RuleAction>>,
    /// The text of a reject or tempfail.
    message: Option<Spanned<String>>,
    /// Required for `action = "discard"`.
    certain: Option<Spanned<bool>>,
    /// A scanner's address: `host:port` or `unix:/path`.
    address: Option<Spanned<String>>,
    on_error: Option<Spanned<OnErrorSetting>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum FilterKind {
    Header,
    Body,
    Attachment,
    MimeDepth,
    Milter,
    Rspamd,
    Clamd,
}

impl FilterKind {
    fn name(self) -> &'static str {
        match self {
            FilterKind::Header => "header",
            FilterKind::Body => "body",
            FilterKind::Attachment => "attachment",
            FilterKind::MimeDepth => "mime_depth",
            FilterKind::Milter => "milter",
            FilterKind::Rspamd => "rspamd",
            FilterKind::Clamd => "clamd",
        }
    }

    /// The keys besides `type` this kind takes.
    fn keys(self) -> &'static [&'static str] {
        match self {
            FilterKind::Header => &["header", "pattern", "action", "message", "certain"],
            FilterKind::Body => &["pattern", "action", "message", "certain"],
            FilterKind::Attachment => &["extensions", "mime_types", "action", "message", "certain"],
            FilterKind::MimeDepth => &["max", "action", "message", "certain"],
            FilterKind::Milter | FilterKind::Rspamd | FilterKind::Clamd => &["address", "on_error"],
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RuleAction {
    Reject,
    Tempfail,
    Quarantine,
    Discard,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnErrorSetting {
    #[default]
    Tempfail,
    Accept,
}

pub(crate) fn filters(ctx: &mut Ctx<'_>, raw: Vec<RawFilter>, hostname: &str) -> Vec<Check> {
    raw.into_iter()
        .filter_map(|f| filter(ctx, f, hostname))
        .collect()
}

fn filter(ctx: &mut Ctx<'_>, raw: RawFilter, hostname: &str) -> Option<Check> {
    let kind = *raw.kind.get_ref();
    let kind_span = raw.kind.span();
    // Keys that belong to another kind are a mistake, never silently ignored.
    let given = [
        ("header", raw.header.as_ref().map(Spanned::span)),
        ("pattern", raw.pattern.as_ref().map(Spanned::span)),
        ("extensions", raw.extensions.as_ref().map(Spanned::span)),
        ("mime_types", raw.mime_types.as_ref().map(Spanned::span)),
        ("max", raw.max.as_ref().map(Spanned::span)),
        ("action", raw.action.as_ref().map(Spanned::span)),
        ("message", raw.message.as_ref().map(Spanned::span)),
        ("certain", raw.certain.as_ref().map(Spanned::span)),
        ("address", raw.address.as_ref().map(Spanned::span)),
        ("on_error", raw.on_error.as_ref().map(Spanned::span)),
    ];
    let mut wrong = false;
    for (key, span) in given {
        if let Some(span) = span {
            if !kind.keys().contains(&key) {
                ctx.error(
                    span,
                    "",
                    format!("{key} does not apply to a {} filter", kind.name()),
                );
                wrong = true;
            }
        }
    }
    let needs = |ctx: &mut Ctx<'_>, what: &str| {
        ctx.error(
            kind_span.clone(),
            "filter.type",
            format!("a {} filter needs {what}", kind.name()),
        );
    };
    let matcher = match kind {
        FilterKind::Milter | FilterKind::Rspamd | FilterKind::Clamd => {
            let Some(address) = &raw.address else {
                needs(ctx, "an address");
                return None;
            };
            if wrong {
                return None;
            }
            let on_error = raw
                .on_error
                .map_or(OnErrorSetting::Tempfail, Spanned::into_inner);
            return scanner(ctx, kind, address, on_error, hostname);
        }
        FilterKind::Header | FilterKind::Body => {
            let Some(pattern) = &raw.pattern else {
                needs(ctx, "a pattern");
                return None;
            };
            let pattern = regex(ctx, pattern)?;
            match kind {
                FilterKind::Header => Matcher::Header {
                    name: raw.header.map(Spanned::into_inner),
                    pattern,
                },
                _ => Matcher::Body { pattern },
            }
        }
        FilterKind::Attachment => {
            let list =
                |l: Option<Spanned<Vec<String>>>| l.map(Spanned::into_inner).unwrap_or_default();
            let (extensions, mime_types) = (list(raw.extensions), list(raw.mime_types));
            if extensions.is_empty() && mime_types.is_empty() {
                needs(ctx, "extensions or mime_types");
                return None;
            }
            Matcher::Attachment {
                extensions: extensions
                    .iter()
                    .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                    .collect(),
                mime_types: mime_types.iter().map(|m| m.to_ascii_lowercase()).collect(),
            }
        }
        FilterKind::MimeDepth => {
            let Some(max) = raw.max else {
                needs(ctx, "max");
                return None;
            };
            Matcher::MimeDepth {
                max: max.into_inner(),
            }
        }
    };
    let Some(action) = raw.action else {
        needs(ctx, "an action");
        return None;
    };
    if wrong {
        return None;
    }
    let text = raw.message.map(Spanned::into_inner);
    let certain = raw.certain.is_some_and(|c| *c.get_ref());
    let action = match *action.get_ref() {
        RuleAction::Reject => {
            Action::Reject(text.unwrap_or_else(|| "Message content rejected".into()))
        }
        RuleAction::Tempfail => Action::Tempfail(text.unwrap_or_else(|| "Try again later".into())),
        RuleAction::Quarantine => Action::Quarantine,
        RuleAction::Discard if certain => Action::Discard,
        RuleAction::Discard => {
            ctx.error(
                action.span(),
                "",
                "discard drops mail without telling anyone: say certain = true if this rule \
                 never catches wanted mail",
            );
            return None;
        }
    };
    Some(Check {
        name: format!("{} rule", kind.name()),
        scanner: Scanner::Rule(Rule { matcher, action }),
        // A rule needs nothing that can fail.
        on_error: OnError::Tempfail,
    })
}

fn regex(ctx: &mut Ctx<'_>, pattern: &Spanned<String>) -> Option<regex::Regex> {
    match regex::Regex::new(pattern.get_ref()) {
        Ok(regex) => Some(regex),
        Err(e) => {
            ctx.error(pattern.span(), "", format!("not a regular expression: {e}"));
            None
        }
    }
}

fn scanner(
    ctx: &mut Ctx<'_>,
    kind: FilterKind,
    address: &Spanned<String>,
    on_error: OnErrorSetting,
    hostname: &str,
) -> Option<Check> {
    let endpoint = match Endpoint::parse(address.get_ref()) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            ctx.error(address.span(), "", e);
            return None;
        }
    };
    let name = format!("{} {endpoint}", kind.name());
    let scanner = match kind {
        FilterKind::Milter => Scanner::Milter(backstop_filter::milter::Milter {
            endpoint,
            hostname: hostname.to_owned(),
        }),
        FilterKind::Rspamd => Scanner::Rspamd(backstop_filter::rspamd::Rspamd { endpoint }),
        _ => Scanner::Clamd(backstop_filter::clamd::Clamd { endpoint }),
    };
    Some(Check {
        name,
        scanner,
        on_error: match on_error {
            OnErrorSetting::Tempfail => OnError::Tempfail,
            OnErrorSetting::Accept => OnError::Accept,
        },
    })
}
