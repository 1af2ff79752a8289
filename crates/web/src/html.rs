//! HTML escaping of untrusted text, and the page frame around every body.

use std::fmt;

/// Text escaped for HTML element content and quoted attribute values, by its `Display`.
///
/// `& < > " '` become entities. Control characters other than TAB and LF, the line and
/// paragraph separators (U+2028, U+2029), the byte order mark (U+FEFF) and the bidi
/// embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069) become U+FFFD, so a
/// sender's name cannot reorder or hide the text around it.
#[derive(Debug, Clone, Copy)]
pub struct Html<'a>(pub &'a str);

impl fmt::Display for Html<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        // Copies runs of plain characters in one piece.
        let mut plain_from = 0;
        for (at, c) in s.char_indices() {
            let replacement = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                c if is_unsafe(c) => "\u{FFFD}",
                _ => continue,
            };
            f.write_str(&s[plain_from..at])?;
            f.write_str(replacement)?;
            plain_from = at + c.len_utf8();
        }
        f.write_str(&s[plain_from..])
    }
}

/// A character [`Html`] replaces with U+FFFD.
fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t' && c != '\n')
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{FEFF}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// A minimal HTML5 document: `title` escaped, `body_html` inserted as it is (it must be
/// built with [`Html`] around every untrusted part), and [`STYLE_CSS`] linked from
/// `/static/style.css`.
pub fn page(title: &str, body_html: &str) -> String {
    format!(
        "<!doctype html>\n\
         <html lang=\"en\">\n\
         <head>\n\
         <meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n\
         <link rel=\"stylesheet\" href=\"/static/style.css\">\n\
         </head>\n\
         <body>\n\
         {body_html}\n\
         </body>\n\
         </html>\n",
        Html(title)
    )
}

/// A two-column table of named values (a message's fields), both escaped.
pub fn field_table<'a, V: AsRef<str>>(rows: impl IntoIterator<Item = (&'a str, V)>) -> String {
    let mut table = String::from("<table>\n");
    for (name, value) in rows {
        table.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            Html(name),
            Html(value.as_ref())
        ));
    }
    table.push_str("</table>\n");
    table
}

/// The stylesheet every page links, to be served at `/static/style.css`: system fonts,
/// bordered tables, plain buttons.
pub const STYLE_CSS: &str = "\
:root { color-scheme: light dark; }
body {
  font-family: system-ui, -apple-system, \"Segoe UI\", Roboto, sans-serif;
  line-height: 1.45;
  max-width: 60rem;
  margin: 1.5rem auto;
  padding: 0 1rem;
}
h1 { font-size: 1.5rem; }
h2 { font-size: 1.2rem; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #888; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: rgba(128, 128, 128, 0.15); }
td { overflow-wrap: anywhere; }
form { display: inline; }
button, input[type=submit] {
  font: inherit;
  padding: 0.3rem 0.9rem;
  border: 1px solid #888;
  border-radius: 4px;
  background: rgba(128, 128, 128, 0.12);
  color: inherit;
  cursor: pointer;
}
button:hover, input[type=submit]:hover { background: rgba(128, 128, 128, 0.25); }
.error { color: #b00020; }
.ok { color: #1b7f3b; }
";

#[cfg(test)]
mod tests;
