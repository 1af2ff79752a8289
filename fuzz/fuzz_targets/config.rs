//! The config parser (`crates/config`, [`backstop_config::parse_all`]): whatever text an
//! admin (or an editor's accident) leaves in the file, read section by section so that one
//! run reports every problem.
//!
//! Input: the file's text (UTF-8; the binary refuses a file that is not before parsing). The
//! seeds in `corpus/config/` are `etc/*.toml` and the config tests' texts.
//!
//! Checked, besides "no panic" and "no endless loop":
//! - every problem is at a line of the text (1 to the number of lines), in the file as named;
//!   the only exception is a config without any listener, which has no line to point at;
//! - the problems print as `check-config` prints them.

#![no_main]

use backstop_config::{parse_all, Errors};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (config, errors) = parse_all(text, FILE);
    // A text ending in a line break has an empty last line an error may point at.
    let lines = text.split('\n').count();
    let no_listener = config.as_ref().is_some_and(|c| c.listeners.is_empty());
    for error in &errors {
        assert_eq!(error.at.file, FILE, "{error}");
        match error.at.line {
            Some(line) => assert!((1..=lines).contains(&line), "{error} (of {lines} lines)"),
            None => assert!(
                no_listener && error.at.key.as_deref() == Some("listener"),
                "a problem without a line: {error}"
            ),
        }
    }
    if !errors.is_empty() {
        let shown = Errors::new(errors).to_string();
        assert!(shown.starts_with(FILE), "{shown}");
    }
});
