use super::*;

fn escaped(s: &str) -> String {
    Html(s).to_string()
}

#[test]
fn markup_and_quotes_are_escaped() {
    assert_eq!(
        escaped("<script>alert(1)</script>"),
        "&lt;script&gt;alert(1)&lt;/script&gt;"
    );
    assert_eq!(
        escaped(r#"" onmouseover='x' a=b&c"#),
        "&quot; onmouseover=&#39;x&#39; a=b&amp;c"
    );
    assert_eq!(escaped("&amp;"), "&amp;amp;");
    assert_eq!(escaped(""), "");
    assert_eq!(
        escaped("plain text, é ü 漢字 🦀"),
        "plain text, é ü 漢字 🦀"
    );
}

#[test]
fn control_characters_and_bidi_overrides_are_replaced() {
    assert_eq!(escaped("a\tb\nc"), "a\tb\nc");
    assert_eq!(
        escaped("a\0b\rc\x1b[31m\x7f"),
        "a\u{FFFD}b\u{FFFD}c\u{FFFD}[31m\u{FFFD}"
    );
    assert_eq!(escaped("\u{85}\u{9f}"), "\u{FFFD}\u{FFFD}");
    // "invoice_\u{202E}fdp.exe" would show as "invoice_exe.pdf".
    assert_eq!(
        escaped("invoice_\u{202E}fdp.exe"),
        "invoice_\u{FFFD}fdp.exe"
    );
    for c in ('\u{202A}'..='\u{202E}')
        .chain('\u{2066}'..='\u{2069}')
        .chain(['\u{2028}', '\u{2029}', '\u{FEFF}'])
    {
        assert_eq!(
            escaped(&format!("x{c}y")),
            "x\u{FFFD}y",
            "U+{:04X}",
            u32::from(c)
        );
    }
    // Neighbours of the ranges are left alone.
    assert_eq!(
        escaped("\u{2029}\u{202F}\u{2065}\u{206A}"),
        "\u{FFFD}\u{202F}\u{2065}\u{206A}"
    );
}

#[test]
fn a_page_is_a_minimal_document_with_an_escaped_title() {
    let page = page("Quarantine for <bob>", "<p>body</p>");
    assert!(page.starts_with("<!doctype html>\n"), "{page}");
    assert!(page.contains("<meta charset=\"utf-8\">"), "{page}");
    assert!(page.contains("<meta name=\"viewport\""), "{page}");
    assert!(
        page.contains("<link rel=\"stylesheet\" href=\"/static/style.css\">"),
        "{page}"
    );
    assert!(
        page.contains("<title>Quarantine for &lt;bob&gt;</title>"),
        "{page}"
    );
    assert!(page.contains("<body>\n<p>body</p>\n</body>"), "{page}");
    assert!(!page.contains("<script"), "{page}");
}

#[test]
fn the_stylesheet_is_plain() {
    assert!(STYLE_CSS.contains("system-ui"));
    assert!(STYLE_CSS.contains("table"));
    assert!(STYLE_CSS.contains("button"));
    // Nothing the CSP would block or that fetches elsewhere.
    assert!(!STYLE_CSS.contains("url(") && !STYLE_CSS.contains("@import"));
}

#[test]
fn a_field_table_escapes_names_and_values() {
    let table = field_table([("Subject", "<script>x</script>"), ("From", "a & b")]);
    assert_eq!(
        table,
        "<table>\n<tr><th>Subject</th><td>&lt;script&gt;x&lt;/script&gt;</td></tr>\n\
         <tr><th>From</th><td>a &amp; b</td></tr>\n</table>\n"
    );
}
