//! The TOML document, read so that one run finds every problem: all syntax errors at once, and
//! then each section deserialized on its own; a key serde refuses is reported and taken out,
//! and the section read again without it, so the next problem in the same section is found too.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

use crate::error::{plain, Ctx};

/// The document's top-level table, or `None` after its syntax errors are reported.
pub(crate) fn open<'t>(ctx: &mut Ctx<'_>, text: &'t str) -> Option<Spanned<DeTable<'t>>> {
    let (table, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(table);
    }
    // The line of each message the parser gives no place for, searched once per message.
    let mut placed: Vec<(String, Option<Range<usize>>)> = Vec::new();
    for e in errors {
        let span = match e.span() {
            Some(span) => span,
            None => {
                let known = placed.iter().find(|(m, _)| m == e.message());
                let line = match known {
                    Some((_, line)) => line.clone(),
                    None => {
                        let line = line_of(text, e.message());
                        placed.push((e.message().to_owned(), line.clone()));
                        line
                    }
                };
                line.unwrap_or(0..0)
            }
        };
        ctx.syntax_error(span, plain(e.message()));
    }
    None
}

/// The line of a syntax error the parser gives no place for (a dotted key nested past its
/// limit: "recursion limit"): the first line such that the text up to it has the error too.
/// Only for such errors, so the few extra parses cost nothing in the common case.
fn line_of(text: &str, message: &str) -> Option<Range<usize>> {
    let ends: Vec<usize> = text
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain([text.len()])
        .collect();
    let has_error = |end: usize| {
        DeTable::parse_recoverable(&text[..end])
            .1
            .iter()
            .any(|e| e.span().is_none() && e.message() == message)
    };
    // The error stays in every longer text once it is in one: the first such end is its line.
    let (mut low, mut high) = (0, ends.len() - 1);
    if !has_error(ends[high]) {
        return None;
    }
    while low < high {
        let middle = (low + high) / 2;
        if has_error(ends[middle]) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    let start = if low == 0 { 0 } else { ends[low - 1] };
    Some(start..ends[low])
}

/// Reads `value` as a `T`, reporting each key serde refuses and reading again without it.
pub(crate) fn read<T: DeserializeOwned>(
    ctx: &mut Ctx<'_>,
    mut value: Spanned<DeValue<'_>>,
) -> Option<T> {
    // Keys taken out because their value was wrong: their absence is not a second problem.
    let mut removed: Vec<String> = Vec::new();
    // Each round removes one key or element, so this many rounds is far more than a config has.
    for _ in 0..256 {
        let error = match T::deserialize(toml::de::ValueDeserializer::from(value.clone())) {
            Ok(read) => return Some(read),
            Err(e) => e,
        };
        let span = error.span().unwrap_or_else(|| value.span());
        let message = error.message().to_owned();
        let missing_removed = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
            .is_some_and(|field| removed.iter().any(|r| r == field));
        if !missing_removed {
            ctx.error(span.clone(), "", plain(&message));
        }
        match remove(&mut value, &span) {
            Some(key) => removed.push(key),
            None => return None,
        }
    }
    None
}

/// Removes the innermost key or array element of `value` that holds `span`; its name (or the
/// empty string for an element), or `None` when `span` is `value` itself.
fn remove(value: &mut Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<String> {
    match value.get_mut() {
        DeValue::Table(table) => {
            let key = table
                .iter()
                .find(|(k, v)| holds(&k.span(), span) || contains(v, span))
                .map(|(k, _)| k.get_ref().to_string())?;
            let inner = table.get_mut(key.as_str())?;
            if inner.span() != *span {
                if let Some(deeper) = remove(inner, span) {
                    return Some(deeper);
                }
            }
            table.remove(key.as_str());
            Some(key)
        }
        DeValue::Array(array) => {
            let index = array.iter().position(|item| contains(item, span))?;
            let items: &mut [Spanned<DeValue<'_>>] = array.as_mut();
            if items[index].span() != *span {
                if let Some(deeper) = remove(&mut items[index], span) {
                    return Some(deeper);
                }
            }
            let mut kept = DeArray::new();
            for (n, item) in array.iter().enumerate() {
                if n != index {
                    kept.push(item.clone());
                }
            }
            *array = kept;
            Some(String::new())
        }
        _ => None,
    }
}

fn holds(outer: &Range<usize>, span: &Range<usize>) -> bool {
    outer.start <= span.start && span.end <= outer.end
}

/// Whether `span` is in `value`: in its own span, or in one of its keys or values (a table
/// written as `[section]` may span only its header).
fn contains(value: &Spanned<DeValue<'_>>, span: &Range<usize>) -> bool {
    if holds(&value.span(), span) {
        return true;
    }
    match value.get_ref() {
        DeValue::Table(table) => table
            .iter()
            .any(|(k, v)| holds(&k.span(), span) || contains(v, span)),
        DeValue::Array(array) => array.iter().any(|item| contains(item, span)),
        _ => false,
    }
}
